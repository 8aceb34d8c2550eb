"""Host hardening: network sysctls, login defaults, banners, disabled modules, audit tools."""

from __future__ import annotations

import pytest

from tasks.base.file_integrity import aide_pattern
from tasks.base.hardening import DATA as HARDENING
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "all"

NETWORK_SYSCTLS = {
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.tcp_syncookies": "1",
}
KERNEL_SYSCTLS = {"kernel.kptr_restrict": "2", "fs.protected_regular": "2"}


def test_sysctls_in_effect(host_in: InventoryHost) -> None:
    wanted = dict(NETWORK_SYSCTLS)
    container = host_in.testinfra.run("systemd-detect-virt --container").stdout.strip()
    if container in ("", "none"):
        # Kernel-wide sysctls belong to the host kernel: checked on real hosts and VMs only.
        wanted.update(KERNEL_SYSCTLS)
    for key, value in wanted.items():
        actual = host_in.testinfra.run(f"sysctl -n {key}").stdout.strip()
        assert actual == value, f"{host_in.name}: {key} = {actual}, expected {value}"


def test_login_defaults_and_banner(host_in: InventoryHost) -> None:
    login_defs = host_in.testinfra.file("/etc/login.defs").content_string
    settings = dict(
        line.split(None, 1)
        for line in login_defs.splitlines()
        if line.strip() and not line.startswith("#") and len(line.split()) > 1
    )
    umask = host_in.data.get("login_umask", HARDENING.keys["login_umask"].default)
    assert settings["UMASK"].strip() == umask
    assert int(settings["SHA_CRYPT_MIN_ROUNDS"]) >= 500000
    banner = host_in.data.get("legal_banner", HARDENING.keys["legal_banner"].default)
    for path in ("/etc/issue", "/etc/issue.net"):
        assert host_in.testinfra.file(path).content_string.strip() == banner


def test_unused_protocol_modules_cannot_load(host_in: InventoryHost) -> None:
    config = host_in.testinfra.file("/etc/modprobe.d/homelab-disabled.conf").content_string
    for module in ("dccp", "sctp", "rds", "tipc"):
        assert f"install {module} /bin/false" in config


def test_accounting_and_ssh_ban_run(host_in: InventoryHost) -> None:
    for service in ("sysstat", "fail2ban"):
        assert host_in.testinfra.service(service).is_running, f"{host_in.name}: {service}"
    jails = host_in.testinfra.run("fail2ban-client status").stdout
    assert "sshd" in jails


def test_process_accounting_on_machines(host_in: InventoryHost) -> None:
    container = host_in.testinfra.run("systemd-detect-virt --container").stdout.strip()
    if container in ("", "none"):
        assert host_in.testinfra.service("acct").is_running
    else:
        # A container may not switch on the kernel's accounting: acct is left out there.
        assert not host_in.testinfra.package("acct").is_installed


def test_needrestart_never_restarts_by_itself(host_in: InventoryHost) -> None:
    assert host_in.testinfra.package("needrestart").is_installed
    config = host_in.testinfra.file("/etc/needrestart/conf.d/homelab.conf").content_string
    assert "$nrconf{restart} = 'l';" in config


def test_file_integrity_and_rootkit_scans_are_scheduled(host_in: InventoryHost) -> None:
    """AIDE's configuration parses, leaves the host's pools out, has a database (or its
    nightly build is scheduled), and its daily check and chkrootkit's are on."""
    check = host_in.testinfra.run("aide --config-check -c /etc/aide/aide.conf")
    assert check.rc == 0, f"{host_in.name}: {check.stdout}{check.stderr}"
    rules = host_in.testinfra.file("/etc/aide/aide.conf.d/99_homelab_data").content_string
    for pool in (host_in.data.get("pools") or {}).values():
        assert aide_pattern(pool["path"].rstrip("/")) in rules.splitlines(), pool
    # The baseline is built at night while there is none: a database, or that timer waiting.
    built = host_in.testinfra.file("/var/lib/aide/aide.db").exists
    assert built or host_in.testinfra.service("homelab-aide-init.timer").is_running, host_in.name
    for timer in ("homelab-aide-init.timer", "dailyaidecheck.timer", "chkrootkit.timer"):
        assert host_in.testinfra.service(timer).is_enabled, timer
        assert host_in.testinfra.service(timer).is_running, timer
