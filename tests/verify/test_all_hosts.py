"""Every host: what the base tasks promise, as a real host must show it."""

from __future__ import annotations

import pytest

from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "all"


def test_system_is_running(host_in: InventoryHost) -> None:
    state = host_in.testinfra.run("systemctl is-system-running").stdout.strip()
    failed = host_in.testinfra.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert state == "running", f"{host_in.name}: {state}; failed units: {failed or 'none'}"


def test_hostname_and_hosts_file(host_in: InventoryHost, inventory_hosts) -> None:
    assert host_in.testinfra.run("hostname").stdout.strip() == host_in.name
    hosts_file = host_in.testinfra.file("/etc/hosts").content_string
    domain = host_in.data.get("domain", "home.arpa")
    for other in inventory_hosts:
        line = f"{other.data['lan_address']}\t{other.name}.{domain}\t{other.name}"
        assert line in hosts_file, f"{host_in.name}: /etc/hosts lacks {line!r}"
    resolved = host_in.testinfra.run(f"getent hosts {host_in.name}").stdout.split()
    assert resolved and resolved[0] == host_in.data["lan_address"]


def test_timezone(host_in: InventoryHost) -> None:
    zone = host_in.testinfra.run("timedatectl show -p Timezone --value").stdout.strip()
    assert zone == host_in.data.get("timezone", "Etc/UTC")


def test_chrony_keeps_time_where_the_host_may_set_the_clock(host_in: InventoryHost) -> None:
    chrony = host_in.testinfra.service("chrony")
    assert host_in.testinfra.package("chrony").is_installed
    assert chrony.is_enabled
    container = host_in.testinfra.run("systemd-detect-virt --container").stdout.strip()
    if container in ("", "none"):
        assert chrony.is_running
        tracking = host_in.testinfra.run("chronyc -n tracking")
        assert tracking.rc == 0, tracking.stderr
    else:
        # In a container chronyd's start condition (CAP_SYS_TIME) fails by design; the unit
        # must then be inactive by that condition, not failed.
        result = host_in.testinfra.run("systemctl show chrony -p ConditionResult --value")
        assert result.stdout.strip() == "no"


def test_base_packages(host_in: InventoryHost) -> None:
    from tasks.base.base_packages import DATA

    wanted = host_in.data.get("base_packages", DATA.keys["base_packages"].default)
    missing = [p for p in wanted if not host_in.testinfra.package(p).is_installed]
    assert not missing, f"{host_in.name}: missing {missing}"


def test_admin_user_with_key_and_sudo(host_in: InventoryHost) -> None:
    user_name = host_in.data.get("admin_user", "ops")
    group = host_in.data.get("admin_group", "homelab-admins")
    user = host_in.testinfra.user(user_name)
    assert user.exists and group in user.groups
    keys = host_in.testinfra.file(f"/home/{user_name}/.ssh/authorized_keys")
    assert keys.exists and keys.mode == 0o600 and keys.user == user_name
    assert keys.content_string.strip(), "authorized_keys is empty"
    sudoers = host_in.testinfra.file("/etc/sudoers.d/homelab-admin")
    assert sudoers.mode == 0o440 and f"%{group} " in sudoers.content_string
    check = host_in.testinfra.run("visudo -c")
    assert check.rc == 0, check.stdout + check.stderr


def test_ssh_is_key_only(host_in: InventoryHost) -> None:
    effective = host_in.testinfra.run("sshd -T").stdout.lower().splitlines()
    settings = dict(line.split(" ", 1) for line in effective if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["pubkeyauthentication"] == "yes"
    assert settings["permitrootlogin"] in ("no", "prohibit-password", "without-password")


def test_journal_is_persistent_and_capped(host_in: InventoryHost) -> None:
    assert host_in.testinfra.file("/var/log/journal").is_directory
    machine_id = host_in.testinfra.file("/etc/machine-id").content_string.strip()
    assert host_in.testinfra.file(f"/var/log/journal/{machine_id}").is_directory
    config = host_in.testinfra.run("systemd-analyze cat-config systemd/journald.conf").stdout
    assert "Storage=persistent" in config and "SystemMaxUse=" in config


def test_the_ups_answers_and_its_followers_watch_it(
    host_in: InventoryHost, inventory_hosts
) -> None:
    """A host with ``ups``: NUT reads the UPS and upsmon runs as its primary; a host with
    ``ups_primary``: upsmon follows that host's UPS over the LAN. Others: no NUT server."""
    if host_in.data.get("ups"):
        upsc = host_in.testinfra.run("upsc ups@localhost ups.status")
        assert upsc.rc == 0, f"{host_in.name}: upsc gets no answer: {upsc.stderr}"
        assert upsc.stdout.split(), f"{host_in.name}: the UPS reports no status"
        for unit in ("nut-server", "nut-monitor"):
            assert host_in.testinfra.service(unit).is_running, f"{host_in.name}: {unit} is down"
    elif host_in.data.get("ups_primary"):
        primary = next(h for h in inventory_hosts if h.name == host_in.data["ups_primary"])
        upsc = host_in.testinfra.run(f"upsc ups@{primary.data['lan_address']} ups.status")
        assert upsc.rc == 0, f"{host_in.name}: cannot read {primary.name}'s UPS: {upsc.stderr}"
        assert host_in.testinfra.service("nut-monitor").is_running
    else:
        assert not host_in.testinfra.package("nut-server").is_installed


def test_the_bmc_is_read_where_the_data_declares_one(host_in: InventoryHost) -> None:
    """A host with ``bmc``: the IPMI exporter runs and reads the BMC (every collector up).
    Others: no exporter."""
    if not host_in.data.get("bmc"):
        assert not host_in.testinfra.package("prometheus-ipmi-exporter").is_installed
        return
    assert host_in.testinfra.service("prometheus-ipmi-exporter").is_running
    address = host_in.data["lan_address"]
    metrics = host_in.testinfra.run(f"curl -fsS http://{address}:9290/metrics").stdout
    up = [line for line in metrics.splitlines() if line.startswith("ipmi_up{")]
    assert up and all(line.endswith(" 1") for line in up), f"{host_in.name}: {up}"
