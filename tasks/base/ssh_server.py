"""SSH server: key-only, modern algorithms only.

Reads ``sshd_allow_tcp_forwarding``. Who may log in (root, the admin group) is the last step of
a run, :mod:`tasks.base.ssh_login`, once the admin login is proven.

The drop-in is checked with ``sshd -t`` (staged in front of the live configuration, so it is
tested exactly as sshd will read it) before it goes live, and sshd is reloaded, not restarted,
so the running session survives.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import Bool
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.facts import OpenSSHVersion
from tasks.common.ports import ADMIN, Port

DATA = Schema(
    "ssh_server",
    Key(
        "sshd_allow_tcp_forwarding",
        Bool(),
        False,
        "Allow SSH port forwarding (Proxmox's secure migration tunnels need it).",
    ),
)

PORTS = (Port(22, "tcp", "ssh", probe="ssh", consumers=(ADMIN,)),)

DROP_IN = "/etc/ssh/sshd_config.d/10-homelab.conf"
# sshd uses the first value it reads for a keyword: a throw-away main config that includes the
# staged file before the live one tests the result sshd will actually run with.
CHECK = (
    't=$(mktemp) && printf "Include %s\\nInclude /etc/ssh/sshd_config\\n" {} > "$t"'
    ' && sshd -t -f "$t"; rc=$?; rm -f "$t"; exit $rc'
)

# Post-quantum hybrids first where the server knows them; no NIST curves, no SHA-1.
KEX_BY_VERSION = (
    ((9, 9), ("mlkem768x25519-sha256",)),
    ((9, 0), ("sntrup761x25519-sha512@openssh.com",)),
    (
        (0, 0),
        (
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512",
        ),
    ),
)
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MACS = (
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "umac-128-etm@openssh.com",
)
HOST_KEY_ALGORITHMS = (
    "ssh-ed25519",
    "ssh-ed25519-cert-v01@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256",
    "rsa-sha2-256-cert-v01@openssh.com",
)
USER_KEY_ALGORITHMS = (
    *HOST_KEY_ALGORITHMS,
    "sk-ssh-ed25519@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
)


def kex_algorithms(version: tuple[int, int]) -> list[str]:
    """The key exchanges this OpenSSH version knows, strongest first."""
    return [name for since, names in KEX_BY_VERSION if version >= since for name in names]


@deploy("SSH server", data_defaults=DATA.defaults())
def ssh_server() -> None:
    settings = DATA.read(host)
    installed = checked_template(
        name="Key-only SSH login, modern algorithms",
        template="sshd-homelab.conf.j2",
        dest=DROP_IN,
        mode="644",
        check=f"'{CHECK}'",
        allow_tcp_forwarding="yes" if settings.sshd_allow_tcp_forwarding else "no",
        kex=",".join(kex_algorithms(host.get_fact(OpenSSHVersion))),
        ciphers=",".join(CIPHERS),
        macs=",".join(MACS),
        host_key_algorithms=",".join(HOST_KEY_ALGORITHMS),
        user_key_algorithms=",".join(USER_KEY_ALGORITHMS),
    )
    systemd.service(
        name="Reload sshd for its new settings",
        service="ssh",
        running=None,
        reloaded=True,
        _if=installed.did_change,
    )
