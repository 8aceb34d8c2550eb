"""ageis-node's services in the lab: actr-engine on the real memory store, the boot order.

actr-engine (the reference engine) runs for real against the lab's PostgreSQL + pgvector:
store and retrieve over HTTP. The order mounts, postgresql@..., memory-store-integrity,
ollama, ollama-model-ready, actr-engine, openclaw-pipeline is read from the journal's "Started"
records after a clean reboot and after a pulled plug, and after a pulled plug the pipeline's
start is compared with the model-ready unit's end (systemd's timestamps); a failing integrity
check keeps actr-engine and the pipeline down. The pipeline's memory plugin is in place and its
gateway (the stand-in) has actr-engine's token as a credential. The benchmark runs in a small
version here
(its 100 000-memory run is ``make bench-actr``). Each test leaves the lab converged.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import tomllib
from typing import Any

import pytest

from tests.bench import actr_retrieval
from tests.lab import hosts, labctl
from tests.lab.consumer_http import http_from
from tests.lab.lab_cli import labctl_run

pytestmark = pytest.mark.lab

NODE = hosts.by_name("ageis-node")
ENGINE = f"http://{NODE.address}:8100"
ORDER = (
    "postgresql@17-main.service",
    "memory-store-integrity.service",
    "ollama.service",
    "ollama-model-ready.service",
    "actr-engine.service",
    "openclaw-pipeline.service",
)
# systemd's "unit started" journal record (sd-messages.h SD_MESSAGE_UNIT_STARTED).
STARTED = "39f53479d3a045ac8e11786248231fbf"
DIMS = 384


def ssh(command: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        labctl.ssh_argv(NODE, command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def api_token() -> str:
    return tomllib.loads(hosts.SECRETS_FILE.read_text())["actr_engine_api_token"]


def call(path: str, payload: dict[str, Any] | None = None) -> tuple[int, Any]:
    """actr-engine's answer, asked from its own host (its clients are local; the firewall
    admits monitoring besides), with the API token the POST endpoints require."""
    status, body, _ = http_from(
        NODE,
        "POST" if payload is not None else "GET",
        ENGINE + path,
        payload,
        headers={"Authorization": f"Bearer {api_token()}"},
    )
    return status, json.loads(body)


def unit_vector(*hot: int) -> list[float]:
    vector = [0.0] * DIMS
    for index in hot:
        vector[index] = 1.0 / math.sqrt(len(hot))
    return vector


def wait_active(unit: str, seconds: int = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ssh(f"systemctl is-active {unit}", timeout=20).stdout.strip() == "active":
            return
        time.sleep(2)
    status = ssh(f"systemctl status --no-pager {unit}; journalctl -b -u {unit} -n 20").stdout
    raise AssertionError(f"{unit} not active after {seconds}s:\n{status}")


def started_order() -> list[tuple[int, str]]:
    """(monotonic usec, unit) of this boot's "Started" records of the ordered units."""
    out = ssh(f"journalctl -b -o json MESSAGE_ID={STARTED} _PID=1", timeout=60).stdout
    seen: dict[str, int] = {}
    for line in out.splitlines():
        record = json.loads(line)
        unit = record.get("UNIT")
        if unit in ORDER and unit not in seen:
            seen[unit] = int(record["__MONOTONIC_TIMESTAMP"])
    return sorted((stamp, unit) for unit, stamp in seen.items())


def test_actr_engine_stores_and_retrieves_by_activation() -> None:
    status, health = call("/health")
    assert (status, health) == (200, {"status": "ok"})
    tag = f"lab-{time.time_ns()}"
    ids = {}
    # "apple" is stored last: the newest chunk and the closest to the cue, so it has the
    # highest activation by construction, however long the other stores took (ACT-R's
    # recency term would let a newer "pear" or "rocket" win on a slow machine otherwise).
    for name, hot in (("pear", (1, 3)), ("rocket", (200, 201)), ("apple", (1, 2))):
        status, answer = call(
            "/chunks",
            {"content": f"{name} {tag}", "metadata": {"test": tag}, "embedding": unit_vector(*hot)},
        )
        assert status == 201, answer
        ids[name] = answer["id"]
    # A cue closest to "apple": of these three it ranks first, with its activation's parts.
    # (Among all the store's memories another may rank higher: one that other tests retrieved
    # often just now has a higher base level, as ACT-R means it to; so all its candidates are
    # asked for, and the order of these three is checked.)
    status, answer = call("/retrieve", {"embedding": unit_vector(1, 2), "limit": 20})
    assert status == 200, answer
    ours = [c for c in answer["chunks"] if c["id"] in ids.values()]
    best = ours[0]
    assert best["id"] == ids["apple"] and best["similarity"] == pytest.approx(1.0)
    assert best["activation"] == pytest.approx(best["base_level"])  # P * (1 - 1) = 0
    # Each retrieval is recorded as an access (just after the reply); the count below proves it.
    time.sleep(0.5)
    status, again = call("/retrieve", {"embedding": unit_vector(1, 2), "limit": 20})
    assert next(c["id"] for c in again["chunks"] if c["id"] in ids.values()) == ids["apple"]
    time.sleep(0.5)
    accesses = ssh(
        "sudo -u postgres psql -tA memory_store -c "
        f'"SELECT count(*) FROM memory_access WHERE chunk_id = {ids["apple"]}"'
    ).stdout.strip()
    assert accesses == "3"  # stored, retrieved, retrieved
    ssh(
        "sudo -u postgres psql -q memory_store -c "
        f"\"DELETE FROM memory_chunk WHERE metadata->>'test' = '{tag}'\""
    )


def test_text_memories_and_cues_are_embedded_by_the_labs_embedder() -> None:
    """Wired by default: no embeddings given, the inventory's embedder makes them, and a text
    cue finds the memory that means the same (the model's similarity, not recency)."""
    tag = f"lab-text-{time.time_ns()}"
    texts = {
        "pie": f"Bake the apple pie at 180 degrees for forty minutes. {tag}",
        "rocket": f"The rocket engine burns liquid oxygen and kerosene. {tag}",
        "pear": f"Prune the pear tree in late winter before the buds open. {tag}",
    }
    ids = {}
    for name, text in texts.items():
        status, answer = call("/chunks", {"content": text, "metadata": {"test": tag}})
        assert status == 201, answer
        ids[name] = answer["id"]
    rows = ssh(
        "sudo -u postgres psql -tA memory_store -c "
        f'"SELECT embedding_model, vector_dims(embedding) FROM memory_chunk'
        f" WHERE metadata->>'test' = '{tag}'\""
    ).stdout.split()
    # Embedded as they were stored, by the embedder's model (not left to the indexer).
    assert len(rows) == 3 and all(r.endswith(f"|{DIMS}") for r in rows), rows
    assert all("MiniLM" in r for r in rows), rows
    cues = {
        "pie": "How long does an apple pie bake?",
        "rocket": "What fuel does the rocket burn?",
        "pear": "When should I prune a pear tree?",
    }
    for name, cue in cues.items():
        status, answer = call("/retrieve", {"cue": cue, "limit": 20})
        assert status == 200, answer
        ours = {c["id"]: c["similarity"] for c in answer["chunks"] if tag in c["content"]}
        # Other memories of the store may sit near the cue too; of these three, the one
        # that means the same is the closest, clearly.
        assert ids[name] in ours, (cue, answer)
        assert ours[ids[name]] > 0.4, (cue, ours)
        assert all(ours[ids[name]] > s + 0.2 for i, s in ours.items() if i != ids[name]), ours
    ssh(
        "sudo -u postgres psql -q memory_store -c "
        f"\"DELETE FROM memory_chunk WHERE metadata->>'test' = '{tag}'\""
    )


def test_actr_engine_refuses_requests_without_the_token_and_huge_bodies() -> None:
    for path in ("/chunks", "/retrieve"):
        status, body, headers = http_from(NODE, "POST", ENGINE + path, {"content": "x"})
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer", (path, body)
        wrong = {"Authorization": "Bearer not-the-token"}
        assert http_from(NODE, "POST", ENGINE + path, {"cue": "x"}, headers=wrong)[0] == 401
    # A body claimed to be 1 GiB is refused from its length, before any of it is read.
    status, _, _ = http_from(
        NODE,
        "POST",
        ENGINE + "/chunks",
        headers={"Authorization": f"Bearer {api_token()}", "Content-Length": "1073741824"},
        timeout=20,
    )
    assert status == 413
    assert call("/health")[0] == 200, "the engine still answers"


def test_actr_engine_exports_metrics() -> None:
    status, body, _ = http_from(hosts.by_name("monitoring"), "GET", ENGINE + "/metrics")
    assert status == 200
    text = body.decode()
    assert "actr_engine_retrieval_seconds_count" in text


def test_failing_integrity_check_keeps_engine_and_pipeline_down() -> None:
    # Lab fixture: a drop-in that makes the integrity check fail, as a damaged store would.
    dropin = "/run/systemd/system/memory-store-integrity.service.d/lab-fail.conf"
    ssh(
        f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\nExecStartPre=/bin/false\\n'"
        f" > {dropin} && systemctl daemon-reload"
    )
    try:
        ssh("systemctl restart memory-store-integrity.service", timeout=120)
        states = {
            unit: ssh(f"systemctl is-active {unit}").stdout.strip()
            for unit in ("memory-store-integrity.service", *ORDER[-2:])
        }
        assert states["memory-store-integrity.service"] == "failed", states
        assert states["actr-engine.service"] != "active", states
        assert states["openclaw-pipeline.service"] != "active", states
        # Starting them by hand does not get past the failed check either.
        ssh("systemctl start openclaw-pipeline.service", timeout=120)
        assert ssh("systemctl is-active actr-engine.service").stdout.strip() != "active"
        assert ssh("curl -fsS --max-time 3 http://127.0.0.1:8100/health").returncode != 0
    finally:
        ssh(f"rm -f {dropin} && systemctl daemon-reload && systemctl reset-failed")
        ssh("systemctl start memory-store-integrity.service openclaw-pipeline.service", 300)
    wait_active("openclaw-pipeline.service")
    assert call("/health")[0] == 200


@pytest.mark.parametrize("how", ["reboot", "pull-the-plug"])
def test_services_start_in_the_declared_order(how: str) -> None:
    if how == "reboot":
        labctl_run("reboot", NODE.name)
    else:
        labctl_run("kill", NODE.name)
        labctl_run("start", NODE.name)
    wait_active("openclaw-pipeline.service", 300)
    order = started_order()
    assert [unit for _, unit in order] == list(ORDER), order
    if how == "pull-the-plug":
        hook = ssh("journalctl -b -u openclaw-pipeline.service -o cat").stdout
        assert "did not stop cleanly: resume" in hook


def unit_show(unit: str) -> dict[str, str]:
    """systemd's state and timestamps of ``unit`` on the node (systemctl show)."""
    properties = (
        "ActiveState,Result,NRestarts,ExecMainExitTimestampMonotonic,"
        "ActiveEnterTimestampMonotonic,InactiveExitTimestampMonotonic"
    )
    out = ssh(f"systemctl show {unit} --property={properties}", timeout=30).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_pipeline_starts_only_after_the_model_is_ready_after_a_power_cut() -> None:
    labctl_run("kill", NODE.name)
    labctl_run("start", NODE.name)
    wait_active("openclaw-pipeline.service", 300)
    ready = unit_show("ollama-model-ready.service")
    pipeline = unit_show("openclaw-pipeline.service")
    assert (ready["ActiveState"], ready["Result"]) == ("active", "success"), ready
    # Its first start of this boot (a restart would move its timestamps past the model's).
    assert (pipeline["ActiveState"], pipeline["NRestarts"]) == ("active", "0"), pipeline
    loaded = int(ready["ExecMainExitTimestampMonotonic"])
    began = int(pipeline["InactiveExitTimestampMonotonic"])  # its start job, ExecStartPre on
    assert loaded > 0 and began > 0, (ready, pipeline)
    assert loaded <= began <= int(pipeline["ActiveEnterTimestampMonotonic"]), (ready, pipeline)
    # The load ran against the lab's stand-in Ollama, with the data's keep-alive; the GPU
    # check is off in the lab (the data says the host lacks the card: rocm_check_pci).
    ps = json.loads(ssh("curl -fsS --max-time 5 http://127.0.0.1:11434/api/ps").stdout)
    assert [(m["name"], m["keep_alive"]) for m in ps["models"]] == [("lab-standin:tiny", "30m")]
    journal = ssh("journalctl -b -u ollama-model-ready.service -o cat").stdout
    assert "lab-standin:tiny loaded in" in journal and "placement not checked" in journal


def test_the_pipeline_gets_the_memory_plugin_and_actr_engines_token() -> None:
    """The deploy's half of the memory wiring, end to end on the lab's node: the plugin's files
    root-owned and read-only for the gateway's user, and the running gateway (the stand-in, which
    runs no plugin code) finds the plugin enabled and the token credential systemd passed it."""
    plugin = "/usr/local/lib/openclaw-plugins/actr-memory"
    listing = ssh(f"stat -c '%U:%G %a %n' {plugin} {plugin}/*").stdout.splitlines()
    assert listing == [
        f"root:root 755 {plugin}",
        f"root:root 644 {plugin}/index.js",
        f"root:root 644 {plugin}/openclaw.plugin.json",
        f"root:root 644 {plugin}/package.json",
    ], listing
    assert ssh(f"runuser -u openclaw -- test -w {plugin}/index.js").returncode != 0
    health = json.loads(ssh("curl -fsS --max-time 5 http://127.0.0.1:18789/health").stdout)
    assert health["plugins"] == {
        "actr-memory": {
            "enabled": True,
            "tools": ["actr_remember", "actr_recall"],
            "baseUrl": "http://127.0.0.1:8100",
            "credential": True,
        }
    }, health
    config = ssh("cat /etc/openclaw-pipeline/openclaw.json").stdout
    assert api_token() not in config  # a credential, never in the world-readable file


def test_benchmark_small_n_runs_both_sides() -> None:
    result = actr_retrieval.run(2000, 100)
    for side in ("engine", "pgvector"):
        assert result[side]["p95_ms"] > 0, result
    print(f"\nbenchmark (2000 memories, 100 queries): {json.dumps(result)}")
