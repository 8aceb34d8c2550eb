"""SSH on every host: key-only, modern algorithms, logins for the admin group, root login off."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from tasks.common.host_keys import DEFAULT_KNOWN_HOSTS as DEFAULT_KNOWN
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "all"
WEAK = ("nistp", "sha1", "-cbc", "umac-64", "ssh-rsa,", "ssh-dss", "diffie-hellman-group14")


def effective(host_in: InventoryHost) -> dict[str, str]:
    """sshd's effective settings; keywords it prints once per value (allowgroups) are joined."""
    settings: dict[str, str] = {}
    for line in host_in.testinfra.run("sshd -T").stdout.lower().splitlines():
        if " " in line:
            keyword, value = line.split(" ", 1)
            settings[keyword] = f"{settings[keyword]} {value}" if keyword in settings else value
    return settings


def test_only_modern_algorithms(host_in: InventoryHost) -> None:
    settings = effective(host_in)
    for keyword in (
        "kexalgorithms",
        "ciphers",
        "macs",
        "hostkeyalgorithms",
        "pubkeyacceptedalgorithms",
    ):
        value = settings[keyword] + ","
        weak = [w for w in WEAK if w in value]
        assert not weak, f"{host_in.name}: {keyword} offers {weak}: {value}"
    assert "curve25519-sha256" in settings["kexalgorithms"]


def test_host_keys_are_ed25519_and_rsa_only(host_in: InventoryHost) -> None:
    settings = host_in.testinfra.run("sshd -T").stdout.splitlines()
    keys = sorted(line.split()[1] for line in settings if line.startswith("hostkey "))
    assert keys == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]


def test_logins_limited_to_the_admin_group(host_in: InventoryHost) -> None:
    settings = effective(host_in)
    group = host_in.data.get("admin_group", "homelab-admins")
    allowed = settings["allowgroups"].split()
    assert group in allowed
    root_login = settings["permitrootlogin"]
    assert set(allowed) <= {group, "root"}
    assert ("root" in allowed) == (root_login != "no")
    assert settings["maxauthtries"] == "3"
    assert settings["x11forwarding"] == "no"
    assert settings["allowagentforwarding"] == "no"


def test_password_login_is_refused_by_the_server(host_in: InventoryHost) -> None:
    # Asked from the host itself: the server offers publickey and nothing else. (ssh's own
    # exit status 255 would read as a lost connection to testinfra: print it instead.)
    result = host_in.testinfra.run(
        "ssh -o BatchMode=yes -o PreferredAuthentications=password,keyboard-interactive "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null nobody@127.0.0.1 true "
        "2>&1; echo exit=$?"
    )
    assert "exit=255" in result.stdout
    assert "Permission denied (publickey)." in result.stdout


def test_reached_as_the_admin_with_sudo(host_in: InventoryHost) -> None:
    """After bring-up every host is reached as the admin user (recorded login), root by sudo."""
    admin = host_in.data.get("admin_user", "ops")
    assert host_in.data.get("ssh_user") == admin, f"{host_in.name}: no proven admin login"
    assert host_in.testinfra.check_output("id -u") == "0"


def test_root_ssh_login_is_refused(host_in: InventoryHost) -> None:
    """Root logs in with the admin's key nowhere (unless the data keeps root login by key)."""
    if host_in.data.get("sshd_permit_root_login", "no") != "no":
        pytest.skip(f"{host_in.name}: sshd_permit_root_login keeps root login by key")
    data = host_in.data
    client = paramiko.SSHClient()
    client.load_host_keys(str(Path(data.get("ssh_known_hosts_file", DEFAULT_KNOWN)).expanduser()))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = data.get("ssh_key")
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            data.get("ssh_hostname") or host_in.name,
            port=int(data.get("ssh_port") or 22),
            username="root",
            key_filename=str(Path(key).expanduser()) if key else None,
            look_for_keys=key is None,
            allow_agent=key is None,
            timeout=15,
        )
    client.close()
