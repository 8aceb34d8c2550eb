"""Plans of the UPS (NUT): the hypervisor drives the UPS on its cable, the embedder follows it
over the LAN, the others have nothing of NUT; bad data stops the plan naming host and key."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.base.ups import nut_quoted
from tests.doubles.fixtures import TEST_SECRET
from tests.plan.harness import Plan

UPSMON = "/etc/nut/upsmon.conf"


def test_the_hypervisor_drives_the_ups_and_listens_for_the_embedder_only(full: Plan) -> None:
    ups_conf = full.upload("pve", "/etc/nut/ups.conf")
    assert "[ups]\n\tdriver = usbhid-ups\n\tport = auto\n" in ups_conf
    assert "ignorelb" not in ups_conf, "the UPS's own low-battery mark, unless the data says"
    listen = full.upload("pve", "/etc/nut/upsd.conf").splitlines()
    assert [line for line in listen if line.startswith("LISTEN")] == [
        "LISTEN 127.0.0.1 3493",
        "LISTEN 192.168.1.10 3493",
    ]
    assert "MODE=netserver" in full.upload("pve", "/etc/nut/nut.conf")
    upsmon = full.upload("pve", UPSMON)
    assert f'MONITOR ups@localhost 1 primary "{TEST_SECRET}" primary\n' in upsmon
    assert 'SHUTDOWNCMD "/usr/local/sbin/homelab-ups-shutdown"\n' in upsmon
    assert "HOSTSYNC 15\n" in upsmon and "POWERDOWNFLAG /etc/killpower\n" in upsmon
    users = full.upload("pve", "/etc/nut/upsd.users")
    assert "[primary]" in users and "upsmon primary" in users and "upsmon secondary" in users
    commands = "\n".join(full.commands("pve"))
    for path in ("/etc/nut/upsd.users", UPSMON):
        assert f"chown root:nut {path}" in commands and f"chmod 640 {path}" in commands
    assert "stopall" in full.upload("pve", "/usr/local/sbin/homelab-ups-shutdown")
    metrics = full.upload("pve", "/etc/systemd/system/homelab-ups-metrics.service")
    assert "homelab-ups-metrics --ups ups@localhost" in metrics


def test_the_embedder_follows_the_hypervisors_ups_as_a_secondary(full: Plan) -> None:
    upsmon = full.upload("embedder", UPSMON)
    assert f'MONITOR ups@192.168.1.10:3493 1 secondary "{TEST_SECRET}" secondary\n' in upsmon
    assert 'SHUTDOWNCMD "/sbin/shutdown -h +0"\n' in upsmon
    assert "MODE=netclient" in full.upload("embedder", "/etc/nut/nut.conf")
    assert full.upload_or_none("embedder", "/etc/nut/ups.conf") is None
    assert full.upload_or_none("embedder", "/etc/nut/upsd.users") is None
    commands = "\n".join(full.commands("embedder"))
    assert "nut-client" in commands and "nut-server" not in commands


def test_hosts_off_the_ups_get_nothing_of_nut(full: Plan) -> None:
    for name in ("ageis-node", "monitoring", "dns"):
        assert not any("nut" in op.name.lower() for op in full.for_host(name)), name


def test_a_runtime_mark_overrides_the_ups_low_battery(plan_of: Any) -> None:
    ups = {"driver": "usbhid-ups", "port": "auto", "runtime_low_seconds": 600}
    result = plan_of("deploys/hypervisor.py", limit=["pve"], override_data={"ups": ups})
    assert "\tignorelb\n\toverride.battery.runtime.low = 600\n" in result.upload(
        "pve", "/etc/nut/ups.conf"
    )


@pytest.mark.parametrize(
    ("data", "host", "expected"),
    [
        (
            {"ups_primary": "monitoring"},
            "embedder",
            "key 'ups_primary' is 'monitoring'; expected an inventory host whose data declares"
            " its ups",
        ),
        (
            {"ups": {"driver": "usbhid-ups; rm -rf /"}},
            "pve",
            "a NUT driver name",
        ),
    ],
)
def test_bad_ups_data_stops_the_plan_naming_host_and_key(
    plan_of: Any, data: dict[str, Any], host: str, expected: str
) -> None:
    # pyinfra wraps what a deploy raises; the data check exits (InvalidData is a SystemExit)
    with pytest.raises(BaseException) as caught:
        plan_of("deploys/full.py", limit=[host], override_data=data)
    error = getattr(caught.value, "exception", caught.value)
    message = str(getattr(error, "message", error))
    assert f"host '{host}'" in message and expected in message


def test_nut_values_are_quoted_and_escaped() -> None:
    assert nut_quoted('pa"ss\\word') == '"pa\\"ss\\\\word"'
