"""Ingest-to-searchable benchmark and outage writer; runs ON the memory store's host.

Run as the ``postgres`` OS user (peer login over the local socket) with Debian's
python3-psycopg; the lab test copies it there (tests/lab/test_embedder_*.py):

  latency  --count N   store N memories one by one; for each, the time from its commit until
                        a similarity search (HNSW, cosine) with the embedding server's vector of
                        the same text finds it: p50/p95/max
  throughput --count N store N memories in one transaction; time until the indexer embedded
                        all of them: chunks/s
  writer --seconds S --rate R --tag T
                        store R memories a second for S seconds, retrying each until its commit
                        is acknowledged (the database may be down meanwhile); prints the ids

Each prints one JSON object. Chunks carry metadata {"bench": TAG} so the test can find them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
import uuid

import psycopg

WORDS = [
    "memory",
    "agent",
    "river",
    "lantern",
    "orchard",
    "violin",
    "harbor",
    "meadow",
    "comet",
    "glacier",
    "falcon",
    "ember",
    "canyon",
    "thunder",
    "willow",
    "saffron",
    "marble",
    "cobalt",
    "velvet",
    "quartz",
    "tundra",
    "lagoon",
    "prairie",
    "summit",
]


def text(rng_seed: int) -> str:
    import random

    rng = random.Random(rng_seed)
    return " ".join(rng.choice(WORDS) for _ in range(24)) + f" ({uuid.uuid4().hex[:8]})"


def connect() -> psycopg.Connection:
    return psycopg.connect(dbname="memory_store", autocommit=True, connect_timeout=5)


def query_vector(url: str, content: str) -> str:
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/embeddings",
        data=json.dumps({"input": content}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        vector = json.load(response)["data"][0]["embedding"]
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


def latency(args: argparse.Namespace) -> dict:
    samples = []
    with connect() as conn:
        conn.execute("SET hnsw.ef_search = 100")
        for i in range(args.count):
            content = text(1000 + i)
            query = query_vector(args.url, content)
            row = conn.execute(
                "INSERT INTO memory_chunk (content, metadata) VALUES (%s, %s) RETURNING id",
                (content, json.dumps({"bench": args.tag})),
            ).fetchone()
            committed = time.perf_counter()
            while True:
                found = conn.execute(
                    "SELECT id FROM memory_chunk WHERE embedding IS NOT NULL"
                    " ORDER BY embedding <=> %s::vector LIMIT 5",
                    (query,),
                ).fetchall()
                if any(r[0] == row[0] for r in found):
                    samples.append(time.perf_counter() - committed)
                    break
                if time.perf_counter() - committed > args.timeout:
                    raise SystemExit(f"chunk {row[0]} not findable after {args.timeout}s")
                time.sleep(0.01)
    samples.sort()
    return {
        "chunks": len(samples),
        "p50_s": round(statistics.median(samples), 3),
        "p95_s": round(samples[int(0.95 * (len(samples) - 1))], 3),
        "max_s": round(samples[-1], 3),
    }


def throughput(args: argparse.Namespace) -> dict:
    with connect() as conn:
        with conn.transaction():
            ids = [
                conn.execute(
                    "INSERT INTO memory_chunk (content, metadata) VALUES (%s, %s) RETURNING id",
                    (text(5000 + i), json.dumps({"bench": args.tag})),
                ).fetchone()[0]
                for i in range(args.count)
            ]
        committed = time.perf_counter()
        while True:
            pending = conn.execute(
                "SELECT count(*) FROM memory_chunk WHERE id = ANY(%s) AND embedding IS NULL",
                (ids,),
            ).fetchone()[0]
            if pending == 0:
                break
            if time.perf_counter() - committed > args.timeout:
                raise SystemExit(
                    f"{pending} of {len(ids)} chunks not embedded after {args.timeout}s"
                )
            time.sleep(0.05)
        elapsed = time.perf_counter() - committed
    return {
        "chunks": len(ids),
        "seconds": round(elapsed, 2),
        "chunks_per_s": round(len(ids) / elapsed, 1),
    }


def writer(args: argparse.Namespace) -> dict:
    acknowledged: list[int] = []
    failures = 0
    conn = None
    end = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < end:
        started = time.monotonic()
        content = text(9000 + i)
        while True:  # this chunk until its commit is acknowledged
            try:
                if conn is None or conn.closed:
                    conn = connect()
                row = conn.execute(
                    "INSERT INTO memory_chunk (content, metadata) VALUES (%s, %s) RETURNING id",
                    (content, json.dumps({"bench": args.tag})),
                ).fetchone()
                acknowledged.append(row[0])
                break
            except psycopg.Error:
                failures += 1
                conn = None
                time.sleep(0.5)
        i += 1
        time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - started)))
    return {"acknowledged": acknowledged, "failed_attempts": failures}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("latency", "throughput", "writer"))
    parser.add_argument("--url", default="http://embedder:8300")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=5)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--tag", default="bench")
    args = parser.parse_args()
    result = {"latency": latency, "throughput": throughput, "writer": writer}[args.mode](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
