"""Storage tiering on the lab: ageis-node's share of pve's HDD pool, models archived and loaded
through `make models-*`'s deploy, old work tiered down by its timer's unit.

Real: the directory mapping and ``virtiofs0`` the rollout made in the Proxmox API double, the
shared directory on pve, the VM's mount unit and its state, ``homelab-storage-tier``, its
unit and textfile, ``deploys/models.py``. Stand-ins: the virtiofs device is a bind mount of
pve's shared directory into the container (``labctl``: a container has no virtiofs), and Ollama
is the lab's test double, which keeps Ollama's store layout and answers its delete API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import hosts
from tests.lab.embedder_helpers import ssh

pytestmark = pytest.mark.lab

PVE = hosts.by_name("pve")
NODE = hosts.by_name("ageis-node")
STATE = PVE.root_dir / "var/lib/homelab-pve-api-double/state.json"
SHARED = "/srv/hdd/shares/ageis-node"  # on pve
MODEL = "lab-archive-test:1b"
PYINFRA = Path(sys.executable).with_name("pyinfra")


def models(action: str, model: str | None = None) -> str:
    """`make models-<action> MODEL=...` against the lab inventory."""
    data = ["--data", f"models_action={action}", *(["--data", f"model={model}"] if model else [])]
    result = subprocess.run(
        [str(PYINFRA), "-y", "-vvv", "tests/lab/inventory.py", "deploys/models.py", *data],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def ollama_models() -> list[str]:
    tags = json.loads(ssh(NODE, "curl -sf http://127.0.0.1:11434/api/tags"))
    return sorted(model["name"] for model in tags["models"])


def test_the_vm_mounts_its_own_directory_of_the_hdd_pool() -> None:
    state = json.loads(STATE.read_text())
    assert state["dir_mappings"]["ageis-node-hdd"]["map"] == [f"node=pve,path={SHARED}"]
    vm = next(g["config"] for g in state["guests"].values() if g["config"].get("name") == NODE.name)
    assert vm["virtiofs0"] == "ageis-node-hdd,cache=auto"
    assert ssh(NODE, "systemctl is-enabled srv-hdd.mount") == "enabled"
    assert ssh(NODE, "systemctl is-active srv-hdd.mount") == "active"
    assert ssh(NODE, "ls /srv/hdd").split() == ["archive", "checkpoints", "datasets", "media"]
    ssh(NODE, "echo from-the-vm > /srv/hdd/datasets/lab-share-probe")
    try:
        assert ssh(PVE, f"cat {SHARED}/datasets/lab-share-probe") == "from-the-vm"
        # The VM sees its own directory only: not the pool's backups or pgBackRest repository.
        assert "pgbackrest" not in ssh(NODE, "ls -R /srv/hdd")
    finally:
        ssh(NODE, "rm -f /srv/hdd/datasets/lab-share-probe")


def test_a_model_goes_to_the_hdd_archive_and_comes_back_verified() -> None:
    ssh(NODE, f'curl -sf -X POST http://127.0.0.1:11434/api/pull -d \'{{"model": "{MODEL}"}}\'')
    assert MODEL in ollama_models()
    try:
        out = models("archive", MODEL)
        assert f"{MODEL}: archived to /srv/hdd/archive/models" in out, out
        assert "SHA-256 checked" in out
        assert MODEL not in ollama_models(), "Ollama no longer lists the archived model"
        manifest = (
            f"{SHARED}/archive/models/manifests/registry.ollama.ai/library/lab-archive-test/1b"
        )
        layers = json.loads(ssh(PVE, f"cat {manifest}"))["layers"]
        blob = layers[0]["digest"].replace(":", "-")
        ssh(PVE, f"test -f {SHARED}/archive/models/blobs/{blob}")
        assert f"{MODEL}\thdd" in models("list")
        out = models("load", MODEL)
        assert f"{MODEL}: loaded to /srv/ssd/ollama/models" in out, out
        assert MODEL in ollama_models(), "the loaded model is Ollama's again"
        owner = ssh(NODE, f"stat -c %U /srv/ssd/ollama/models/blobs/{blob}")
        assert owner == "ollama"
    finally:
        ssh(
            NODE,
            f'curl -s -X DELETE http://127.0.0.1:11434/api/delete -d \'{{"model": "{MODEL}"}}\'',
        )
        ssh(
            PVE,
            f"rm -rf {SHARED}/archive/models/manifests/registry.ollama.ai/library/lab-archive-test",
        )


def test_the_tier_down_unit_moves_old_work_and_keeps_recent_work() -> None:
    ssh(NODE, "mkdir -p /srv/ssd/work/datasets/lab-old/sub /srv/ssd/work/datasets/lab-new"
              " && echo old > /srv/ssd/work/datasets/lab-old/sub/data"
              " && echo new > /srv/ssd/work/datasets/lab-new/data"
              " && touch -h -d '45 days ago' /srv/ssd/work/datasets/lab-old/sub/data"
              " /srv/ssd/work/datasets/lab-old/sub /srv/ssd/work/datasets/lab-old")  # fmt: skip
    try:
        ssh(NODE, "systemctl start homelab-tier-down.service", timeout=300)
        assert ssh(PVE, f"cat {SHARED}/datasets/lab-old/sub/data") == "old"
        assert ssh(NODE, "test -e /srv/ssd/work/datasets/lab-old || echo gone") == "gone"
        assert ssh(NODE, "cat /srv/ssd/work/datasets/lab-new/data") == "new"
        metrics = ssh(NODE, "cat /var/lib/prometheus/node-exporter/homelab-storage-tier.prom")
        assert "homelab_storage_tier_down_ok 1" in metrics.splitlines(), metrics
    finally:
        ssh(NODE, "rm -rf /srv/ssd/work/datasets/lab-old /srv/ssd/work/datasets/lab-new")
        ssh(PVE, f"rm -rf {SHARED}/datasets/lab-old")
