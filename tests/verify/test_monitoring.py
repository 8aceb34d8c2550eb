"""Monitoring: node-exporter on every host; Prometheus, Alertmanager, the blackbox and Proxmox
exporters on the monitoring guest, with configs that their own checkers accept and every target
answering. SMART and GPU collectors run where the data says (real hardware only)."""

from __future__ import annotations

import json

import pytest

from tests.verify.conftest import InventoryHost, load_inventory

pytestmark = pytest.mark.verify
ROLE = "all"
MONITORING_SERVICES = (
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-blackbox-exporter",
    "prometheus-pve-exporter",
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "monitor" not in metafunc.fixturenames:
        return
    hosts = load_inventory(metafunc.config.getoption("--inventory"))
    chosen = [h for h in hosts if "monitoring" in h.groups]
    if not chosen:
        pytest.fail("the inventory has no host in group 'monitoring'", pytrace=False)
    metafunc.parametrize("monitor", chosen, ids=[h.name for h in chosen])


def is_physical(host: InventoryHost) -> bool:
    virt = host.testinfra.run("systemd-detect-virt || true").stdout.strip()
    return not host.data.get("guest") and virt in ("none", "")


def test_node_exporter_runs_and_answers(host_in: InventoryHost) -> None:
    service = host_in.testinfra.service("prometheus-node-exporter")
    assert service.is_running and service.is_enabled
    metrics = host_in.testinfra.check_output("curl -fsS http://127.0.0.1:9100/metrics")
    assert "node_filesystem_avail_bytes" in metrics and "node_textfile_scrape_error" in metrics


@pytest.mark.hardware
def test_smart_collectors_report_on_hosts_with_physical_disks(host_in: InventoryHost) -> None:
    if not is_physical(host_in):
        pytest.skip(f"{host_in.name} owns no physical disks (guest or container)")
    timer = host_in.testinfra.service("prometheus-node-exporter-smartmon.timer")
    assert timer.is_enabled
    prom = host_in.testinfra.file("/var/lib/prometheus/node-exporter/smartmon.prom")
    assert prom.exists and "smartmon_device_smart_healthy" in prom.content_string


@pytest.mark.hardware
def test_gpu_collector_reports_declared_gpus(host_in: InventoryHost) -> None:
    own = [g for g in host_in.data.get("gpus") or [] if not g.get("passthrough_to")]
    if not own:
        pytest.skip(f"{host_in.name} drives no GPU of its own in the data")
    if host_in.testinfra.run("systemd-detect-virt --container").rc == 0:
        pytest.skip(f"{host_in.name} is a container (the lab): no GPU of its own to read")
    prom = host_in.testinfra.file("/var/lib/prometheus/node-exporter/homelab-gpu.prom")
    assert prom.exists
    assert "homelab_gpu_collector_up" in prom.content_string
    assert "homelab_gpu_temperature_celsius" in prom.content_string


def test_monitoring_services_run(monitor: InventoryHost) -> None:
    for name in MONITORING_SERVICES:
        service = monitor.testinfra.service(name)
        assert service.is_running and service.is_enabled, name


def test_configs_pass_their_checkers(monitor: InventoryHost) -> None:
    run = monitor.testinfra.run
    assert run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0
    check = "prometheus-blackbox-exporter --config.check --config.file /etc/prometheus/blackbox.yml"
    assert run(check).rc == 0
    token = monitor.testinfra.file("/etc/prometheus/pve.yml")
    assert token.mode == 0o640 and token.user == "root" and token.group == "prometheus"


def test_every_inventory_host_is_an_up_target(
    monitor: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    answer = monitor.testinfra.check_output(
        "curl -fsS 'http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22node-exporter%22%7D'"
    )
    up = {r["metric"]["instance"]: r["value"][1] for r in json.loads(answer)["data"]["result"]}
    assert up == {h.name: "1" for h in inventory_hosts}
    probes = monitor.testinfra.check_output(
        "curl -fsS 'http://127.0.0.1:9090/api/v1/query?query=probe_success%3D%3D0'"
    )
    assert json.loads(probes)["data"]["result"] == []
