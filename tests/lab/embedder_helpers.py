"""Helpers of the embedder's lab tests: SSH to a lab host, copy a file, HTTP from a consumer.

The embedder's ports are open to their consumers only (the embedding server and TTS to
ageis-node, the indexer's health and metrics to monitoring), so HTTP goes out from that
consumer (``consumer_http``), through the embedder's real firewall.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.lab import hosts, labctl
from tests.lab.consumer_http import http_from

REPO = Path(__file__).resolve().parents[2]
EMBEDDER = hosts.by_name("embedder")
STORE = hosts.by_name("ageis-node")
MONITORING = hosts.by_name("monitoring")
EMBED_URL = f"http://{EMBEDDER.address}:8300"
TTS_URL = f"http://{EMBEDDER.address}:5500"
INDEXER_URL = f"http://{EMBEDDER.address}:9310"
INGEST_URL = f"http://{EMBEDDER.address}:9311"
BENCH_DIR = Path(os.environ.get("HOMELAB_BENCH_DIR", hosts.STATE_DIR / "bench"))


def ssh(host: hosts.LabHost, command: str, timeout: float = 120, stdin: str | None = None) -> str:
    result = subprocess.run(
        labctl.ssh_argv(host, command),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{host.name}: {command!r} exited {result.returncode}:\n{result.stdout[-2000:]}"
        f"\n{result.stderr[-3000:]}"
    )
    return result.stdout.strip()


def copy(host: hosts.LabHost, source: Path, dest: str) -> None:
    ssh(host, f"cat > {dest} && chmod 644 {dest}", stdin=source.read_text())


# Who consumes each of the embedder's ports (tasks/embedder/*.py declare the same).
CONSUMER_OF_PORT = {8300: STORE, 5500: STORE, 9310: MONITORING, 9311: MONITORING}


def http(
    method: str, url: str, body: Any = None, timeout: float = 60
) -> tuple[int, bytes, dict[str, str]]:
    """``method url`` sent from the port's consumer (``CONSUMER_OF_PORT``)."""
    consumer = CONSUMER_OF_PORT[urlsplit(url).port or 80]
    return http_from(consumer, method, url, body, timeout=timeout)


def wait_healthy(url: str, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            status, body, _ = http("GET", url, timeout=5)
            if status == 200:
                return
            last = (status, body[:200])
        except OSError as error:
            last = error
        time.sleep(1)
    raise AssertionError(f"{url} not healthy within {timeout:.0f}s: {last}")


def record(name: str, result: dict[str, Any]) -> None:
    """Print a benchmark's figures and keep them under the lab's state directory."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(result)}")
