"""Monitoring in the lab for real: targets from the inventory, alerts that fire and resolve.

Runs against the rolled-out lab (``make lab``). The lab's data shortens the windows (5 s
scrapes and evaluations, ``alert_down_for`` 20 s, fill prediction over 2 min for 15 s), so an
alert's whole life fits in a test. Each test puts back what it changed: the stopped service
is started again, the stand-in disk (a 64 MiB tmpfs inside a lab container: memory, never
this machine's disk) is unmounted. The status report runs against the lab last.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.lab import hosts, labctl
from tests.lab.consumer_http import json_from
from tests.lab.hosts import LabHost

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
MONITORING = hosts.by_name("monitoring")
PROMETHEUS = f"http://{MONITORING.address}:9090"
ALERTMANAGER = f"http://{MONITORING.address}:9093"
FILL_HOST = hosts.by_name("dns")
FILL_MOUNT = "/mnt/homelab-fill-standin"
# Measured figures, printed at the end of the module (make test runs pytest -s).
MEASURED: dict[str, str] = {}


def on(host: LabHost, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        labctl.ssh_argv(host, command), capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{host.name}: {command}: {result.stderr or result.stdout}")
    return result


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, every: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def query(expr: str) -> list[dict[str, Any]]:
    body = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def firing(alertname: str, **labels: str) -> list[dict[str, Any]]:
    # Alertmanager is open to the tailnet only; the lab has none, so ask from its own host.
    alerts = json_from(MONITORING, "GET", f"{ALERTMANAGER}/api/v2/alerts", timeout=10)
    return [
        a
        for a in alerts
        if a["labels"].get("alertname") == alertname
        and a["status"]["state"] == "active"
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def api_double_answers() -> bool:
    """Whether the hypervisor's Proxmox API (the lab's API double) listens on 8006."""
    pve = hosts.by_name("pve")
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((pve.address, 8006)) == 0


def expected_targets() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(job, instance) of every scrape and (instance, service) of every probe, from the lab
    inventory and the tasks' declared ports: what Prometheus must have, computed independently
    of its config."""
    from deploys.roles import declared_ports
    from tasks.common.ports import present
    from tests.lab import inventory as lab_inventory

    data = {
        name: host_data
        for group in ("hypervisor", "ageis_node", "embedder", "service_guests")
        for name, host_data in getattr(lab_inventory, group)
    }
    scrapes, probes = set(), set()
    for lab_host in hosts.HOSTS:
        for port in present(declared_ports(lab_host.groups), data[lab_host.name]):
            if port.metrics_path:
                scrapes.add((port.service, lab_host.name))
            if port.probe:
                probes.add((lab_host.name, port.service))
        if "hypervisor" in lab_host.groups:
            scrapes.add(("pve", lab_host.name))
    return scrapes, probes


def test_every_inventory_host_and_service_is_an_up_target() -> None:
    scrapes, probes = expected_targets()
    skip_pve = not api_double_answers()

    def all_up() -> dict | None:
        body = requests.get(f"{PROMETHEUS}/api/v1/targets", timeout=10).json()
        active = body["data"]["activeTargets"]
        found = {(t["labels"]["job"], t["labels"]["instance"]): t for t in active}
        missing = {s for s in scrapes if s not in found and s[0] != "blackbox"}
        assert not missing, f"Prometheus lacks scrape targets {sorted(missing)}"
        down = {
            key: t["lastError"]
            for key, t in found.items()
            if t["health"] != "up" and not (skip_pve and key[0] == "pve")
        }
        last_problem.clear()
        if down:
            last_problem["targets down"] = down
            return None
        # A blackbox target is "up" while its probe fails: the probes must succeed too (a
        # service that a drill before this test restarted may still be coming back).
        # Loopback-only services (Ollama) are probed on their host, by the local-probe collector.
        results = {
            (r["metric"]["instance"], r["metric"]["service"]): float(r["value"][1])
            for r in query("probe_success") + query("homelab_local_probe_success")
        }
        failing = sorted(p for p in probes if results.get(p) != 1)
        if failing:
            last_problem["probes not succeeding"] = {p: results.get(p) for p in failing}
            return None
        return found

    last_problem: dict[str, Any] = {}
    start = time.monotonic()
    try:
        wait_for("every target up and every probe succeeding", all_up, timeout=180)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: {last_problem}") from None
    nodes = {r["metric"]["instance"] for r in query('up{job="node-exporter"} == 1')}
    assert nodes == {h.name for h in hosts.HOSTS}
    MEASURED["targets"] = (
        f"{len(scrapes)} scrape targets and {len(probes)} probes up"
        f" (checked in {time.monotonic() - start:.0f} s)"
        + ("; pve job not checked: no Proxmox API (double) on pve:8006" if skip_pve else "")
    )


@pytest.fixture
def unbound_stopped() -> Iterator[float]:
    on(FILL_HOST, "systemctl stop unbound")
    try:
        yield time.monotonic()
    finally:
        on(FILL_HOST, "systemctl start unbound")


def test_a_stopped_service_fires_its_alert_and_resolves_after_restart(
    unbound_stopped: float,
) -> None:
    """ServiceProbeDown (for: alert_down_for = 20 s in the lab) reaches Alertmanager within
    its window plus a scrape, an evaluation and group_wait, the status report marks the
    resolver down (exit 1), and the alert resolves once the service is back."""
    budget = 20 + 5 + 5 + 5 + 30
    wait_for(
        "ServiceProbeDown for unbound on dns in Alertmanager",
        lambda: firing("ServiceProbeDown", instance="dns", service="unbound"),
        timeout=budget,
    )
    fired = time.monotonic() - unbound_stopped
    # While it is down, the status report marks it and exits non-zero.
    status = run_status()
    assert status.returncode == 1, status.stdout + status.stderr
    assert "!! dns: local resolver DOWN" in status.stdout
    MEASURED["status (unbound stopped)"] = f"exit {status.returncode}\n{status.stdout}"
    on(FILL_HOST, "systemctl start unbound")
    restarted = time.monotonic()
    wait_for(
        "ServiceProbeDown to resolve",
        lambda: not firing("ServiceProbeDown", instance="dns", service="unbound"),
        timeout=60,
    )
    MEASURED["service alert"] = (
        f"unbound stopped: ServiceProbeDown active in Alertmanager after {fired:.0f} s"
        f" (for: 20 s); resolved {time.monotonic() - restarted:.0f} s after the restart"
    )


@pytest.fixture
def standin_disk() -> Iterator[str]:
    on(FILL_HOST, f"mkdir -p {FILL_MOUNT} && mount -t tmpfs -o size=64M homelab-fill {FILL_MOUNT}")
    try:
        yield FILL_MOUNT
    finally:
        on(FILL_HOST, f"umount {FILL_MOUNT}; rmdir {FILL_MOUNT}", check=False)


def test_filling_a_standin_disk_fires_the_fill_prediction(standin_disk: str) -> None:
    """A 64 MiB tmpfs written at 2 MiB/s: predicted full within 24 h and under 40 % free."""
    start = time.monotonic()
    writer = subprocess.Popen(
        [
            *labctl.ssh_argv(
                FILL_HOST,
                f"for i in $(seq 1 28); do dd if=/dev/zero of={standin_disk}/f$i bs=2M count=1"
                " status=none; sleep 1; done",
            )
        ]
    )
    try:
        alert = wait_for(
            "FilesystemFillsWithin24h for the stand-in disk",
            lambda: firing("FilesystemFillsWithin24h", instance="dns", mountpoint=standin_disk),
            timeout=150,
        )
    finally:
        writer.kill()
        writer.wait()
    assert alert[0]["annotations"]["runbook"]
    MEASURED["fill alert"] = (
        f"64 MiB tmpfs filled at 2 MiB/s: FilesystemFillsWithin24h active after"
        f" {time.monotonic() - start:.0f} s"
    )


LINK_DOWN_SECONDS = 20


def test_a_short_link_outage_is_recorded_and_shown() -> None:
    """dns's cable pulled for 20 s (the host side of its veth down): Prometheus records one
    carrier loss on its link and the failed probe samples, NetworkLinkFlapping fires, and the
    status report lists both, though the outage is too short for a HostDown."""
    veth = labctl.veth_name(FILL_HOST)
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        time.sleep(LINK_DOWN_SECONDS)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    back = time.monotonic()
    losses = wait_for(
        "the carrier loss of dns's link in Prometheus",
        lambda: query('homelab:link_carrier_losses:window{instance="dns"} >= 1'),
        timeout=90,
    )
    assert {r["metric"]["device"] for r in losses} == {"host0"}, losses
    wait_for(
        "NetworkLinkFlapping for dns in Alertmanager",
        lambda: firing("NetworkLinkFlapping", instance="dns"),
        timeout=60,
    )
    failures = query('homelab:probe_failures:window{instance="dns"} > 0')
    assert failures, "no failed probe sample of dns recorded during the outage"
    wait_for(
        "every probe of dns succeeding again",
        lambda: all(float(r["value"][1]) == 1 for r in query('probe_success{instance="dns"}')),
        timeout=90,
    )
    status = run_status()
    assert "   link flaps: dns:host0 x" in status.stdout, status.stdout
    assert "probe failures: " in status.stdout and "dns:" in status.stdout, status.stdout
    MEASURED["link outage"] = (
        f"dns's link down {LINK_DOWN_SECONDS} s: the carrier loss recorded"
        f" {time.monotonic() - back:.0f} s after it came back; failed probe samples:"
        f" {', '.join(r['metric']['service'] + ' ' + r['value'][1] for r in failures)}"
    )


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.infrastructure_status", "--inventory",
         "tests/lab/inventory.py", *args],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip


def test_status_report_prints_every_section_with_lab_numbers() -> None:
    result = run_status()
    text = result.stdout
    for title in ("[hypervisor: pve]", "[ageis-node - AI VM]", "[embedder-node]",
                  "[storage health]", "[network]"):  # fmt: skip
        assert title in text, text
    assert "   thermals: cpu unknown / gpu unknown" in text
    assert "   os: Debian GNU/Linux 13 (trixie)" in text
    assert "   dns: local resolver active" in text
    assert "   status: ONLINE (latency: " in text
    assert "ram: " in text and "GiB" in text
    as_json = json.loads(run_status("--json").stdout)
    assert [s["title"] for s in as_json["sections"]][-2:] == ["storage health", "network"]
    MEASURED["status (healthy)"] = f"exit {result.returncode}\n{text}"


def test_zz_print_measurements() -> None:
    assert MEASURED
    for name, figure in MEASURED.items():
        print(f"\n--> monitoring lab: {name}: {figure}")
