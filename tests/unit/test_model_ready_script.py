"""files/ollama-model-ready against the lab's stand-in Ollama (a TEST DOUBLE: it loads no
model and reports size_vram 0, as an Ollama without a GPU does), run here on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "files" / "ollama-model-ready"
STANDIN = REPO / "tests" / "lab" / "inference_standin" / "ollama"
MODEL = "lab-standin:tiny"


def load_script() -> ModuleType:
    loader = SourceFileLoader("ollama_model_ready", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(api: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(api + path, data=data), timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[str]:
    """The stand-in's `ollama serve` on a free loopback port, with MODEL pulled."""
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, str(STANDIN), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                call(api, "/api/version")
                break
            except OSError:
                time.sleep(0.05)
        call(api, "/api/pull", {"model": MODEL})
        yield api
    finally:
        server.terminate()
        server.wait(timeout=10)


def ready(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--api", api, "--wait", "3", "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_loads_the_model_with_the_keep_alive_and_reports_its_placement(standin: str) -> None:
    result = ready(standin, "--model", MODEL, "--keep-alive=30m")
    assert result.returncode == 0, result.stderr
    assert f"ollama-model-ready: {MODEL} loaded in " in result.stdout
    assert "of it in VRAM (placement not checked" in result.stdout
    (entry,) = call(standin, "/api/ps")["models"]
    assert (entry["name"], entry["keep_alive"]) == (MODEL, "30m")


def test_a_bare_number_keep_alive_travels_as_a_number(standin: str) -> None:
    # Ollama's API refuses "-1" as a string (no unit); -1 as a number keeps the model loaded.
    assert ready(standin, "--model", MODEL, "--keep-alive=-1").returncode == 0
    (entry,) = call(standin, "/api/ps")["models"]
    assert entry["keep_alive"] == -1


def test_a_model_on_the_cpu_fails_where_a_gpu_is_required(standin: str) -> None:
    result = ready(standin, "--model", MODEL, "--keep-alive=30m", "--require-gpu")
    assert result.returncode == 1
    assert "FAILED: lab-standin:tiny loaded on the CPU only" in result.stderr
    assert "size_vram 0" in result.stderr and "journalctl -u ollama" in result.stderr


def test_a_model_that_is_not_pulled_fails_naming_it(standin: str) -> None:
    result = ready(standin, "--model", "nope:1b", "--keep-alive=30m")
    assert result.returncode == 1
    assert "model 'nope:1b' not found" in result.stderr
    assert "is nope:1b pulled?" in result.stderr


def test_ollama_not_answering_fails_after_the_bounded_wait() -> None:
    started = time.monotonic()
    result = ready(f"http://127.0.0.1:{free_port()}", "--model", MODEL, "--keep-alive=30m")
    assert result.returncode == 1
    assert "Ollama is not up after 3s (journalctl -u ollama)" in result.stderr
    assert time.monotonic() - started < 30


def test_no_model_configured_is_nothing_to_load() -> None:
    result = ready("http://127.0.0.1:9", "--keep-alive=30m")
    assert result.returncode == 0 and "nothing to load" in result.stdout


def test_a_split_where_offload_is_not_allowed_is_a_warning_with_the_numbers(capsys) -> None:
    module = load_script()
    entry = {"size": 40 * 1024**3, "size_vram": 30 * 1024**3}
    where = module.placement(entry, "big:70b", require_gpu=True, whole=True)
    assert where == "40.0 GiB, 30.0 GiB (75%) of it in VRAM"
    warning = capsys.readouterr().err
    assert "WARNING: big:70b is partly in system RAM" in warning
    assert "raise ollama_gpu_overhead" in warning
    # Offload allowed: the same split is no warning; wholly on the GPU: none either.
    module.placement(entry, "big:70b", require_gpu=True, whole=False)
    module.placement({"size": 9, "size_vram": 9}, "small", require_gpu=True, whole=True)
    assert capsys.readouterr().err == ""
