"""files/homelab-ups-metrics on upsc's output: the status flags and values a UPS reports."""

from __future__ import annotations

from tests.unit.test_collectors import load

# The shape `upsc ups@localhost` prints for a USB UPS under usbhid-ups (NUT 2.8).
UPSC_ONLINE = """\
battery.charge: 100
battery.charge.low: 10
battery.runtime: 2280
battery.runtime.low: 120
battery.type: PbAc
device.mfr: American Power Conversion
device.model: Back-UPS XS 1500G
driver.name: usbhid-ups
driver.parameter.port: auto
driver.version: 2.8.1
input.voltage: 231.0
ups.load: 18
ups.status: OL
"""


def metrics(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name.split("{")[0].removeprefix("homelab_ups_")] = float(value)
    return found


def test_online_with_a_full_battery() -> None:
    module = load("homelab-ups-metrics")
    text = module.render("ups", module.parse(UPSC_ONLINE))
    assert 'homelab_ups_up{ups="ups"} 1' in text
    assert metrics(text) == {
        "up": 1,
        "on_battery": 0,
        "low_battery": 0,
        "forced_shutdown": 0,
        "replace_battery": 0,
        "battery_charge_ratio": 1.0,
        "battery_runtime_seconds": 2280,
        "load_ratio": 0.18,
    }


def test_on_battery_then_low_battery_and_forced_shutdown() -> None:
    module = load("homelab-ups-metrics")
    draining = UPSC_ONLINE.replace("ups.status: OL", "ups.status: OB DISCHRG")
    got = metrics(module.render("ups", module.parse(draining)))
    assert (got["on_battery"], got["low_battery"]) == (1, 0)
    low = UPSC_ONLINE.replace("ups.status: OL", "ups.status: FSD OB LB").replace(
        "battery.charge: 100", "battery.charge: 9"
    )
    got = metrics(module.render("ups", module.parse(low)))
    assert (got["on_battery"], got["low_battery"], got["forced_shutdown"]) == (1, 1, 1)
    assert got["battery_charge_ratio"] == 0.09


def test_no_answer_reports_down_and_nothing_that_could_be_stale() -> None:
    module = load("homelab-ups-metrics")
    assert metrics(module.render("ups", None)) == {"up": 0}


def test_a_value_the_ups_does_not_report_is_left_out() -> None:
    module = load("homelab-ups-metrics")
    text = UPSC_ONLINE.replace("battery.runtime: 2280\n", "")
    text = text.replace("ups.load: 18", "ups.load: n/a")
    got = metrics(module.render("ups", module.parse(text)))
    assert "battery_runtime_seconds" not in got and "load_ratio" not in got
