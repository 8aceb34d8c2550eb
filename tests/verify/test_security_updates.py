"""Security updates: unattended-upgrades from the security archive only, never a reboot."""

from __future__ import annotations

import pytest

from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "all"


def test_unattended_upgrades_security_only_no_reboot(host_in: InventoryHost) -> None:
    assert host_in.testinfra.package("unattended-upgrades").is_installed
    config = host_in.testinfra.run("apt-config dump").stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in config
    patterns = [
        line
        for line in config.splitlines()
        if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")
    ]
    assert patterns, "no Origins-Pattern"
    assert all("security" in line.lower() for line in patterns), patterns
    allowed = [
        line
        for line in config.splitlines()
        if line.startswith("Unattended-Upgrade::Allowed-Origins")
    ]
    assert allowed in ([], ['Unattended-Upgrade::Allowed-Origins "";']), allowed


def test_unattended_upgrades_picks_the_security_archive(host_in: InventoryHost) -> None:
    result = host_in.testinfra.run("unattended-upgrade --dry-run --debug 2>&1 | head -40")
    origins = next(
        (line for line in result.stdout.splitlines() if "Allowed origins are:" in line), ""
    )
    assert "security" in origins.lower(), result.stdout
    assert "updates" not in origins.replace("security", ""), origins
