"""SSH server: key-only login.

Reads ``sshd_permit_root_login``. The drop-in is checked with ``sshd -t`` (staged in front of the
live configuration, so it is tested exactly as sshd will read it) before it goes live, and sshd
is reloaded, not restarted, so the running session survives.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from tasks.checked_config import checked_template
from tasks.datamodel.forms import Str
from tasks.datamodel.keys import Key, Schema
from tasks.ports import Port

DATA = Schema(
    "ssh_server",
    Key(
        "sshd_permit_root_login",
        Str(choices=("no", "prohibit-password")),
        "prohibit-password",
        "Root login by key only, or not at all (Proxmox clusters need root by key).",
    ),
)

PORTS = (Port(22, "tcp", "ssh"),)

DROP_IN = "/etc/ssh/sshd_config.d/10-homelab.conf"
# sshd uses the first value it reads for a keyword: a throw-away main config that includes the
# staged file before the live one tests the result sshd will actually run with.
CHECK = (
    't=$(mktemp) && printf "Include %s\\nInclude /etc/ssh/sshd_config\\n" {} > "$t"'
    ' && sshd -t -f "$t"; rc=$?; rm -f "$t"; exit $rc'
)


@deploy("SSH server", data_defaults=DATA.defaults())
def ssh_server() -> None:
    settings = DATA.read(host)
    installed = checked_template(
        name="Key-only SSH login",
        template="sshd-homelab.conf.j2",
        dest=DROP_IN,
        mode="644",
        check=f"'{CHECK}'",
        permit_root_login=settings.sshd_permit_root_login,
    )
    systemd.service(
        name="Reload sshd for its new settings",
        service="ssh",
        running=None,
        reloaded=True,
        _if=installed.did_change,
    )
