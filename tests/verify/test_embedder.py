"""The embedder: its services healthy, its endpoints answering their consumers only, and
(real hardware only) the NVIDIA driver loaded with the declared card listed by nvidia-smi."""

from __future__ import annotations

import json

import pytest

from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "embedder"
UNITS = ("embedding-server", "vector-indexer", "document-ingest", "piper-tts")


def _in_group(group: str, everyone: list[InventoryHost]) -> InventoryHost:
    """A host of ``group``, to ask the embedder's endpoints from where their consumers are."""
    members = [h for h in everyone if group in h.groups]
    assert members, f"the inventory has no host in group {group!r} to test from"
    return members[0]


@pytest.mark.parametrize("unit", UNITS)
def test_services_run_and_start_at_boot(host_in: InventoryHost, unit: str) -> None:
    service = host_in.testinfra.service(unit)
    assert service.is_running, f"{host_in.name}: {unit} is not running"
    assert service.is_enabled, f"{host_in.name}: {unit} does not start at boot"


def test_endpoints_answer_their_consumers_and_no_one_else(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    """The embedding server and TTS answer ageis-node; health and metrics answer monitoring;
    a LAN host that consumes neither (the dns guest) gets no answer at all."""
    consumer = _in_group("ageis_node", inventory_hosts)
    monitoring = _in_group("monitoring", inventory_hosts)
    address = host_in.data["lan_address"]
    for url in (
        f"http://{address}:8300/health",
        f"http://{address}:9310/health",
        f"http://{address}:9311/health",
    ):
        result = monitoring.testinfra.run("curl -fsS --max-time 10 %s", url)
        assert result.rc == 0, f"{monitoring.name} -> {url}: {result.stderr}"
        assert json.loads(result.stdout)["status"] == "ok", result.stdout
    result = monitoring.testinfra.run("curl -fsS --max-time 10 http://%s:8300/metrics", address)
    assert result.rc == 0 and "embedding_server_requests_total" in result.stdout
    result = consumer.testinfra.run(
        "curl -fsS --max-time 60 -H 'Content-Type: application/json'"
        ' -d \'{"input": ["verify"]}\' http://%s:8300/v1/embeddings',
        address,
    )
    assert result.rc == 0, f"{consumer.name} -> embeddings: {result.stderr}"
    assert len(json.loads(result.stdout)["data"][0]["embedding"]) == 384
    result = monitoring.testinfra.run("curl -fsS --max-time 10 http://%s:9311/metrics", address)
    assert result.rc == 0 and "document_ingest_failed_documents" in result.stdout
    result = consumer.testinfra.run("curl -fsS --max-time 10 http://%s:5500/voices", address)
    assert result.rc == 0, f"{consumer.name} -> TTS: {result.stderr}"
    outsider = _in_group("dns", inventory_hosts)
    for port in (8300, 5500, 9311):
        result = outsider.testinfra.run("curl -sS --max-time 3 http://%s:%s/", address, str(port))
        # 28: timed out, the firewall dropped the SYN (7 would mean refused: a rule reached it).
        assert result.rc == 28, f"{outsider.name} -> {address}:{port}: rc {result.rc}"


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


def test_the_document_inbox_is_its_groups_only(host_in: InventoryHost) -> None:
    """root:<group> 2770 (setgid): group members drop files, nobody else looks in; the service
    reads it through the group, read-only."""
    unit = host_in.testinfra.check_output("systemctl cat document-ingest.service")
    inbox = unit.split("--inbox ", 1)[1].split()[0]
    group = host_in.data.get("document_inbox_group", "homelab-ingest")
    directory = host_in.testinfra.file(inbox)
    assert directory.is_directory, inbox
    assert (directory.user, directory.group, directory.mode) == ("root", group, 0o2770)
    assert f"SupplementaryGroups={group}" in unit and f"ReadOnlyPaths={inbox}" in unit
    health = json.loads(host_in.testinfra.check_output("curl -fsS http://127.0.0.1:9311/health"))
    assert health == {"status": "ok", "database": True, "embedding_server": True}, health
