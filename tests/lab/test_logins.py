"""Logins after the lab's first rollout, for real: root refused, the admin in with sudo.

The lab's hosts start as their installers would leave them (root by key; the VM with the admin
user cloud-init would make). The first rollout proves the admin login on each, records it in
the lab's login records and turns root login off; every later run of the lab (the no-change
rollout, these tests) logs in as the admin with sudo.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tasks.common import logins
from tests.lab import hosts, labctl

pytestmark = pytest.mark.lab


def _ssh_as(host: hosts.LabHost, user: str, command: str) -> subprocess.CompletedProcess[str]:
    argv = labctl.ssh_command(host)
    argv[-1] = f"{user}@{host.address}"
    return subprocess.run([*argv, command], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("host", hosts.HOSTS, ids=lambda h: h.name)
def test_every_host_records_the_admin_login(host: hosts.LabHost) -> None:
    record = json.loads(logins.record_file(hosts.LOGIN_RECORDS, host.name).read_text())
    assert (record["user"], record["address"]) == (hosts.ADMIN_USER, host.address)
    assert labctl.login_user(host) == hosts.ADMIN_USER


@pytest.mark.parametrize("host", hosts.HOSTS, ids=lambda h: h.name)
def test_root_is_refused_and_the_admin_has_sudo(host: hosts.LabHost) -> None:
    # The lab's key is still in root's authorized_keys (the lab writes it at every boot):
    # only sshd's settings refuse it.
    root = _ssh_as(host, "root", "true")
    assert root.returncode == 255 and "Permission denied" in root.stderr, root.stderr
    admin = _ssh_as(host, hosts.ADMIN_USER, "sudo -n id -u")
    assert (admin.returncode, admin.stdout.strip()) == (0, "0"), admin.stderr
    effective = _ssh_as(host, hosts.ADMIN_USER, "sudo -n sshd -T").stdout.splitlines()
    assert "permitrootlogin no" in effective
    assert [line for line in effective if line.startswith("allowgroups ")] == [
        "allowgroups homelab-admins"
    ]
