"""files/homelab-storage-tier: models between Ollama's store and the archive, old work to the HDD.

The script's functions on temporary directories laid out as Ollama lays out its store. The
share's mount check and Ollama's delete API are replaced by test doubles where named.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "files" / "homelab-storage-tier"


@pytest.fixture(scope="module")
def tier() -> ModuleType:
    loader = SourceFileLoader("homelab_storage_tier", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def blob(store: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def model(store: Path, relpath: str, weights: bytes) -> Path:
    manifest = {"config": blob(store, b'{"c": 1}'), "layers": [blob(store, weights)]}
    path = store / "manifests" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


def test_a_model_is_copied_blob_by_blob_with_its_manifest_last(
    tier: ModuleType, tmp_path: Path
) -> None:
    ssd, hdd = tmp_path / "ssd", tmp_path / "hdd"
    model(ssd, "registry.ollama.ai/library/qwen3/32b", b"weights" * 1000)
    model(ssd, "registry.ollama.ai/someone/tiny/latest", b"other")
    digests, copied = tier.move_model("qwen3:32b", ssd, hdd)
    assert len(digests) == 2 and copied == len(b'{"c": 1}') + 7000
    assert tier.list_models(hdd) == ["qwen3:32b"]
    assert sorted(tier.list_models(ssd)) == ["qwen3:32b", "someone/tiny:latest"]
    for digest in digests:
        data = (hdd / "blobs" / f"sha256-{digest}").read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
    assert tier.move_model("qwen3:32b", ssd, hdd)[1] == 0, "verified copies are not copied again"


def test_a_blob_that_does_not_match_its_digest_stops_before_the_manifest(
    tier: ModuleType, tmp_path: Path
) -> None:
    ssd, hdd = tmp_path / "ssd", tmp_path / "hdd"
    manifest = model(ssd, "registry.ollama.ai/library/qwen3/32b", b"weights")
    layer = json.loads(manifest.read_text())["layers"][0]["digest"].replace(":", "-")
    (ssd / "blobs" / layer).write_bytes(b"rotten")
    with pytest.raises(tier.TierError, match="SHA-256 is not its digest"):
        tier.move_model("qwen3:32b", ssd, hdd)
    assert tier.list_models(hdd) == [], "no manifest for a model whose blob failed"
    assert not list((hdd / "blobs").glob("*.partial"))


@pytest.mark.parametrize("name", ["Qwen3:32b", "../../etc:x", "a b", "qwen3:32b;rm"])
def test_a_name_ollama_would_not_use_is_refused(tier: ModuleType, name: str) -> None:
    with pytest.raises(tier.TierError, match=r"is not of the form \[registry/\]"):
        tier.manifest_relpath(name)


def config(tmp_path: Path) -> dict[str, Any]:
    return {
        "models_dir": str(tmp_path / "ssd"),
        "models_archive": "archive/models",
        "ollama_url": "http://127.0.0.1:1",
        "mount_point": str(tmp_path / "hdd"),
        "mount_unit": "srv-hdd.mount",
        "work_dir": str(tmp_path / "work"),
        "kinds": ["datasets", "media"],
        "tier_down_days": 30,
    }


def test_nothing_is_written_while_the_share_is_not_mounted(
    tier: ModuleType, tmp_path: Path, capsys: Any
) -> None:
    settings = config(tmp_path)
    model(tmp_path / "ssd", "registry.ollama.ai/library/qwen3/32b", b"weights")
    (tmp_path / "cfg.json").write_text(json.dumps(settings))
    code = tier.main(["--config", str(tmp_path / "cfg.json"), "models-archive", "qwen3:32b"])
    assert code == 1
    assert "is not mounted (the hypervisor's HDD share); nothing was written" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "hdd").exists()


def test_archiving_removes_the_model_through_ollama(
    tier: ModuleType, tmp_path: Path, monkeypatch: Any
) -> None:
    settings = config(tmp_path)
    model(tmp_path / "ssd", "registry.ollama.ai/library/qwen3/32b", b"weights")
    (tmp_path / "cfg.json").write_text(json.dumps(settings))
    deleted: list[str] = []
    # Test doubles: the share counts as mounted; Ollama's delete is recorded.
    monkeypatch.setattr(tier, "is_mounted", lambda path: True)
    monkeypatch.setattr(tier, "ollama_delete", lambda url, name: deleted.append(name))
    assert tier.main(["--config", str(tmp_path / "cfg.json"), "models-archive", "qwen3:32b"]) == 0
    assert deleted == ["qwen3:32b"]
    assert tier.list_models(tmp_path / "hdd" / "archive" / "models") == ["qwen3:32b"]


def test_tier_down_moves_old_entries_keeps_new_ones_and_never_overwrites(
    tier: ModuleType, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    work = tmp_path / "work"
    old = work / "datasets" / "old-set"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "data.bin").write_bytes(b"x" * 100)
    recent = work / "datasets" / "recent-set"
    recent.mkdir()
    (recent / "a").write_bytes(b"y")
    clash = work / "media" / "film.mkv"
    clash.parent.mkdir(parents=True)
    clash.write_bytes(b"z" * 10)
    (tmp_path / "hdd" / "media").mkdir(parents=True)
    (tmp_path / "hdd" / "media" / "film.mkv").write_bytes(b"older copy")
    long_ago = time.time() - 40 * 86400
    # A recent file deep inside keeps a directory on the SSD, whatever the directory's own age.
    (recent / "b").write_bytes(b"new")
    for path in (old / "sub" / "data.bin", old / "sub", old, recent / "a", recent, clash):
        os.utime(path, (long_ago, long_ago))
    result = tier.tier_down(settings, time.time())
    assert result == {"moved_entries": 1, "moved_bytes": 100, "errors": 1}
    moved = tmp_path / "hdd" / "datasets" / "old-set" / "sub" / "data.bin"
    assert moved.read_bytes() == b"x" * 100 and not old.exists()
    assert abs(moved.stat().st_mtime - long_ago) < 1, "the moved data keeps its age"
    assert recent.is_dir() and clash.is_file()
    assert (tmp_path / "hdd" / "media" / "film.mkv").read_bytes() == b"older copy"


NAMES = [
    "qwen3:32b",
    "nomic-embed-text",
    "library/llama3.1:8b-instruct-q4_K_M",
    "registry.ollama.ai/library/qwen3:32b",
    "example.org:5000/team/model:v1",
    "hf.co/org/model:Q4_K_M",
    "Qwen3:32b",
    "../../etc:x",
    "a b",
    "qwen3:32b;rm",
    "qwen3:",
    ":latest",
    "a/b/c/d",
    "-model",
    "model:" + "t" * 129,
]


@pytest.mark.parametrize("name", NAMES)
def test_the_data_check_and_the_host_script_agree_on_model_names(
    tier: ModuleType, name: str
) -> None:
    """The data key ``model`` and the host script (which runs without the project) each write
    Ollama's name pattern down: a name one takes and the other refuses would pass the run's
    check and fail on the host, or the other way round."""
    import re

    from tasks.ageis_node.storage_tier import MODEL_NAME

    assert bool(re.fullmatch(MODEL_NAME, name)) == bool(tier.NAME.fullmatch(name)), name
