"""The hypervisor's Proxmox VE state, read through its API (the real one, or the lab's double).

A real Proxmox host passes these as well: every pool of the data is an active storage with its
content types, the nightly backup job exists and writes to the backup storage, every guest of
the hypervisor exists and runs, and (with passthrough) the VM carries the GPU as hostpci0 with
pcie=1. The API is reached the way the deploy reaches it (``tasks/hypervisor/proxmox_api.py``: the
inventory's data and the secrets file).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from pyinfra.api import State
from pyinfra.context import ctx_inventory, ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

from tasks.hypervisor.proxmox_api import Proxmox, connect
from tests.verify.conftest import REPO, InventoryHost

pytestmark = pytest.mark.verify
ROLE = "hypervisor"


@pytest.fixture
def api(host_in: InventoryHost, request: pytest.FixtureRequest) -> Any:
    path = request.config.getoption("--inventory")
    if "lab" in path:
        os.environ.setdefault("HOMELAB_SECRETS_FILE", str(_lab_secrets()))
    state = State()
    with ctx_state.use(state):
        inventory = make_inventory_from_files(path, cwd=str(REPO))
    with ctx_inventory.use(inventory), ctx_state.use(state):
        yield connect(inventory.get_host(host_in.name)), inventory


def _lab_secrets() -> Any:
    from tests.lab import hosts

    return hosts.SECRETS_FILE


def _guests(inventory: Any, hypervisor: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (h.name, h.data.get("guest"))
        for h in inventory
        if h.data.get("guest") and h.data.get("guest").get("hypervisor") == hypervisor
    ]


def test_every_pool_is_an_active_storage(host_in: InventoryHost, api: Any) -> None:
    client, _ = api
    assert isinstance(client, Proxmox)
    storages = {s["storage"]: s for s in client.get(f"nodes/{client.node}/storage")}
    for name, pool in host_in.data["pools"].items():
        assert name in storages, f"pool {name} is not a Proxmox storage"
        assert storages[name]["active"] == 1, f"storage {name} is not active (not mounted?)"
        have = set(str(storages[name]["content"]).split(","))
        assert set(pool.get("content") or []) <= have, f"storage {name}: content {have}"


def test_nightly_backup_job_is_there(host_in: InventoryHost, api: Any) -> None:
    client, _ = api
    job_id = host_in.data.get("proxmox_backup_job_id", "homelab-nightly")
    jobs = {job["id"]: job for job in client.get("cluster/backup")}
    assert job_id in jobs, f"no backup job {job_id}: {sorted(jobs)}"
    job = jobs[job_id]
    assert job["mode"] == "snapshot" and job["compress"] == "zstd"
    assert str(job.get("enabled", 1)) == "1"
    assert "keep-daily=" in job["prune-backups"]
    storage = client.get(f"nodes/{client.node}/storage/{job['storage']}/status")
    assert "backup" in storage["content"] and storage["active"] == 1


def test_every_guest_exists_and_runs(host_in: InventoryHost, api: Any) -> None:
    client, inventory = api
    guests = _guests(inventory, host_in.name)
    assert guests, "the inventory gives this hypervisor no guests"
    for name, spec in guests:
        kind, vmid = spec["kind"], spec["vmid"]
        status = client.get(f"nodes/{client.node}/{kind}/{vmid}/status/current")
        assert status["status"] == "running", f"{name} ({kind} {vmid}) is {status['status']}"
        config = client.get(f"nodes/{client.node}/{kind}/{vmid}/config")
        assert str(config["onboot"]) == "1", f"{name} does not start at boot"
        if kind == "qemu":
            assert config["machine"] == "q35" and config["bios"] == "ovmf"
            assert str(config["balloon"]) == "0"
            if spec.get("passthrough_gpu"):
                assert "pcie=1" in config["hostpci0"], config.get("hostpci0")
