"""The embedder: its services healthy, its endpoints answering from another LAN host, and
(real hardware only) the NVIDIA driver loaded with the declared card listed by nvidia-smi."""

from __future__ import annotations

import json

import pytest

from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "embedder"
UNITS = ("embedding-server", "vector-indexer", "piper-tts")


def _lan_client(host: InventoryHost, everyone: list[InventoryHost]) -> InventoryHost:
    """Another inventory host on the LAN, to ask the embedder's endpoints from outside it."""
    others = [h for h in everyone if h.name != host.name and "embedder" not in h.groups]
    assert others, "no other host in the inventory to test from"
    return others[0]


@pytest.mark.parametrize("unit", UNITS)
def test_services_run_and_start_at_boot(host_in: InventoryHost, unit: str) -> None:
    service = host_in.testinfra.service(unit)
    assert service.is_running, f"{host_in.name}: {unit} is not running"
    assert service.is_enabled, f"{host_in.name}: {unit} does not start at boot"


def test_endpoints_answer_from_the_lan(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    client = _lan_client(host_in, inventory_hosts)
    address = host_in.data["lan_address"]
    for url in (f"http://{address}:8300/health", f"http://{address}:9310/health"):
        result = client.testinfra.run("curl -fsS --max-time 10 %s", url)
        assert result.rc == 0, f"{client.name} -> {url}: {result.stderr}"
        assert json.loads(result.stdout)["status"] == "ok", result.stdout
    result = client.testinfra.run(
        "curl -fsS --max-time 60 -H 'Content-Type: application/json'"
        ' -d \'{"input": ["verify"]}\' http://%s:8300/v1/embeddings',
        address,
    )
    assert result.rc == 0, result.stderr
    assert len(json.loads(result.stdout)["data"][0]["embedding"]) == 384
    result = client.testinfra.run("curl -fsS --max-time 10 http://%s:5500/voices", address)
    assert result.rc == 0, f"{client.name} -> TTS: {result.stderr}"
    result = client.testinfra.run("curl -fsS --max-time 10 http://%s:8300/metrics", address)
    assert result.rc == 0 and "embedding_server_requests_total" in result.stdout


def test_model_runs_where_the_data_says(host_in: InventoryHost) -> None:
    health = json.loads(host_in.testinfra.check_output("curl -fsS http://127.0.0.1:8300/health"))
    nvidia = [g for g in host_in.data.get("gpus", []) if g["vendor"] == "nvidia"]
    wanted = host_in.data.get("embedding_device", "auto")
    if wanted == "auto":
        wanted = "cuda" if nvidia else "cpu"
    assert health["device"] == wanted, health
    if wanted == "cuda":
        assert health["providers"][0] == "CUDAExecutionProvider", health


@pytest.mark.hardware
def test_nvidia_driver_lists_the_declared_card(host_in: InventoryHost) -> None:
    nvidia = [g for g in host_in.data.get("gpus", []) if g["vendor"] == "nvidia"]
    if not nvidia:
        pytest.skip(f"{host_in.name} declares no NVIDIA GPU (the lab): nothing to check")
    assert host_in.testinfra.file("/proc/driver/nvidia/version").exists, "nvidia not loaded"
    listed = host_in.testinfra.check_output(
        "nvidia-smi --query-gpu=pci.bus_id,name --format=csv,noheader"
    ).lower()
    for gpu in nvidia:
        display = next(f for f in gpu["functions"] if f["kind"] == "display")
        if display.get("address"):
            assert display["address"][5:] in listed, f"{gpu['model']} missing: {listed}"
        assert gpu["model"].lower() in listed, f"{gpu['model']} missing: {listed}"
