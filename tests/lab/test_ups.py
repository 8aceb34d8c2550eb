"""UPS drill: the mains go, then the battery runs low; the machines shut down in order.

The lab's hypervisor drives a UPS through NUT's ``dummy-ups`` driver, which reads its state
from a file the lab writes (``tests/lab/lab_ups.py``); the embedder follows it over the LAN as
a NUT secondary, as on the real machines. What runs for real: the driver, upsd, both upsmon,
the firewall between them, forced shutdown, the embedder's and pve's power-off and
``homelab-ups-shutdown``. What is a test double: Proxmox's ``stopall``, answered by the API
double through the ``pvesh`` double (it stops the guests it holds in reverse start order and
records each stop); the lab's guests are containers of their own and keep running.

Order checked: the embedder begins its shutdown before pve runs its shutdown command (upsmon's
host sync), the guests stop in the reverse of their ``startup`` order, then pve powers off.
Afterwards the UPS is back on mains, both hosts start again, and the guests are started as
``pve-guests.service`` starts them at a node's boot (``startall``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab import hosts, lab_ups, labctl
from tests.lab.embedder_helpers import ssh
from tests.lab.lab_cli import labctl_run

pytestmark = pytest.mark.lab

PVE = hosts.by_name("pve")
EMBEDDER = hosts.by_name("embedder")
STATE = PVE.root_dir / "var/lib/homelab-pve-api-double/state.json"


def upsc(host: hosts.LabHost, target: str) -> dict[str, str]:
    found = {}
    for line in ssh(host, f"upsc {target} 2>/dev/null").splitlines():
        name, _, value = line.partition(":")
        found[name.strip()] = value.strip()
    return found


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, explain: Callable[[], str] = str
) -> Any:
    """``predicate``'s first true value; past ``timeout``, fail with ``explain()`` appended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}\n{explain()}")
        time.sleep(1)


def start_order(guests: dict[str, dict[str, Any]]) -> list[int]:
    """Proxmox's start order: ``startup`` order= (none: last), then the ID."""

    def key(vmid: str) -> tuple[float, int]:
        found = re.search(r"(?:^|,)order=(\d+)", str(guests[vmid]["config"].get("startup", "")))
        return (int(found[1]) if found else float("inf"), int(vmid))

    return [int(v) for v in sorted(guests, key=key)]


def journal_time(host: hosts.LabHost, selector: str, pattern: str) -> float:
    """When the previous boot's journal first logged ``pattern`` (for ``selector``)."""
    out = ssh(host, f"journalctl -b -1 -o short-unix --no-pager {selector}")
    for line in out.splitlines():
        if re.search(pattern, line):
            return float(line.split()[0])
    raise AssertionError(f"{host.name}: no {pattern!r} in the previous boot's {selector}:\n{out}")


def still_up_report(hosts_: tuple[hosts.LabHost, ...]) -> str:
    """For each host still running: what its systemd is waiting on and its last log lines, read
    from inside the container (its SSH may be gone mid-shutdown)."""
    parts = []
    for host in hosts_:
        try:
            out = labctl.nsenter(
                host, "sh", "-c",
                "systemctl is-system-running; systemctl list-jobs --no-pager | head -20;"
                " for m in -unut-monitor -thomelab-ups-shutdown _PID=1; do"
                " journalctl -b -n 30 -o short-monotonic --no-pager $m; done",
            )  # fmt: skip
        except labctl.LabError:  # went down meanwhile
            continue
        parts.append(f"--- {host.name} still up:\n{out.stdout}{out.stderr}")
    return "\n".join(parts)


@pytest.fixture
def mains_back() -> Iterator[None]:
    """Whatever the drill left: mains power, both hosts up, the guests started."""
    yield
    lab_ups.write(PVE, lab_ups.ONLINE)
    for host in (PVE, EMBEDDER):
        if labctl.nspawn_pid(host) is None:
            labctl_run("start", host.name)
    ssh(PVE, "pvesh create /nodes/pve/startall")
    wait_for(lambda: upsc(PVE, "ups@localhost").get("ups.status") == "OL", 60, "UPS on mains")


def test_low_battery_shuts_the_embedder_then_the_guests_then_pve(mains_back: None) -> None:
    assert upsc(PVE, "ups@localhost").get("ups.status") == "OL"
    # The secondary reads pve's upsd across the LAN: port 3493 is open to it.
    assert upsc(EMBEDDER, f"ups@{PVE.address}").get("ups.status") == "OL"
    before = json.loads(STATE.read_text())
    running = {v: g for v, g in before["guests"].items() if g["status"] == "running"}
    assert running, "the double holds running guests to stop"
    mark = before["counter"]

    lab_ups.write(PVE, lab_ups.ON_BATTERY)
    wait_for(
        lambda: "OB" in upsc(PVE, "ups@localhost").get("ups.status", "").split(), 60, "on battery"
    )
    wait_for(
        lambda: "on battery" in ssh(EMBEDDER, "journalctl -u nut-monitor -n 20 -o cat --no-pager"),
        60,
        "the secondary's upsmon sees the UPS on battery",
    )
    assert labctl.nspawn_pid(PVE) and labctl.nspawn_pid(EMBEDDER), "on battery: nobody goes down"

    lab_ups.write(PVE, lab_ups.LOW_BATTERY)
    started = time.monotonic()
    # Low battery to power-off takes about 20 s here: HOSTSYNC, stopall, two clean shutdowns.
    # The limit leaves room for a slow machine's unit stops, not for a missed shutdown.
    wait_for(
        lambda: labctl.nspawn_pid(PVE) is None and labctl.nspawn_pid(EMBEDDER) is None,
        300,
        "pve and the embedder powered off after low battery",
        explain=lambda: still_up_report((PVE, EMBEDDER)),
    )
    print(f"\nlow battery to both hosts off: {time.monotonic() - started:.0f}s")

    after = json.loads(STATE.read_text())
    tasks = sorted((t for t in after["tasks"].values() if t["pid"] > 0x1000 + mark),
                   key=lambda t: t["pid"])  # fmt: skip
    assert [t["type"] for t in tasks if t["type"] == "stopall"] == ["stopall"], tasks
    stops = [int(t["id"]) for t in tasks if t["type"] in ("qmshutdown", "vzshutdown")]
    assert stops == [v for v in reversed(start_order(after["guests"])) if str(v) in running]
    assert all(g["status"] == "stopped" for g in after["guests"].values())

    lab_ups.write(PVE, lab_ups.ONLINE)
    labctl_run("start", PVE.name)
    labctl_run("start", EMBEDDER.name)
    secondary = journal_time(EMBEDDER, "-u nut-monitor", r"power-fail shutdown")
    primary = journal_time(PVE, "-t homelab-ups-shutdown", r"stopping the guests")
    powering_off = journal_time(PVE, "-t homelab-ups-shutdown", r"powering off")
    assert secondary <= primary <= powering_off, (secondary, primary, powering_off)
