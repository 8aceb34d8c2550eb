"""Benchmark: actr-engine retrieval latency against a plain pgvector nearest-neighbour query.

Fills the memory store on ageis-node with ``--count`` chunks (random unit-free 384-d
embeddings made by PostgreSQL itself, 1 to 5 accesses each over the last 30 days, tagged
``{"bench": <run>}``), then times, interleaved in the same run on the same data:

- ``engine``: ``POST /retrieve`` to the running actr-engine (HTTP, the candidate query,
  activation over the access history, the access recorded), end to end from the host;
- ``pgvector``: the plain query ``SELECT id FROM memory_chunk ORDER BY embedding <=> q
  LIMIT k`` through psycopg (the baseline: what the engine adds on top of it is the
  difference).

and prints p50/p95/p99 in milliseconds for both. The bench chunks are deleted afterwards
(``--keep`` leaves them). Runs the measuring part on the host itself (over SSH, as root: it
reads actr-engine's database password and API token from their root-only credential files);
goal: engine p95 <= 20 ms with 100 000 memories.

    HOMELAB_LAB_ID=n python3 tests/bench/actr_retrieval.py --count 100000 --queries 500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REMOTE = r"""
import json, random, statistics, sys, time, urllib.request
import psycopg

args = json.loads(sys.argv[1])
password = open("/etc/actr-engine/db-password").read().strip()
token = open("/etc/actr-engine/api-token").read().strip()
conn = psycopg.connect("host=127.0.0.1 dbname=memory_store user=actr_engine",
                       password=password, autocommit=True, client_encoding="utf8")
run = f"bench-{int(time.time())}"
dims = conn.execute(
    "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'memory_chunk'::regclass"
    " AND attname = 'embedding'").fetchone()[0]
log = lambda text: print(text, file=sys.stderr, flush=True)

started = time.monotonic()
done = 0
index = None
if args["count"] > 20000:
    # A big fill: an HNSW insert per row is slow; as PostgreSQL builds an index in bulk much
    # faster, the store's HNSW index is dropped for the fill and created again, the same.
    import subprocess
    def as_postgres(sql):
        subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v",
                        "ON_ERROR_STOP=1", "memory_store"], input=sql, text=True, check=True)
    index = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'memory_chunk'"
        " AND indexdef ILIKE '%USING hnsw%'").fetchone()
    if index:
        as_postgres(f"DROP INDEX {index[0]};")
        log(f"  dropped {index[0]} for the fill")
try:
  while done < args["count"]:
    batch = min(10000, args["count"] - done)
    conn.execute(
        "INSERT INTO memory_chunk (content, metadata, embedding, embedding_model, embedded_at)"
        " SELECT 'bench chunk ' || g, jsonb_build_object('bench', %(run)s::text),"
        " (SELECT array_agg(random() - 0.5)::vector FROM generate_series(1, %(dims)s)"
        "  WHERE g > 0), 'bench-random', now()"
        " FROM generate_series(1, %(n)s) g", {"run": run, "dims": dims, "n": batch})
    done += batch
    log(f"  {done} chunks ({time.monotonic() - started:.0f} s)")
finally:
  if index:
    t = time.monotonic()
    as_postgres("SET maintenance_work_mem = '1GB';\n" + index[1] + ";")
    log(f"  {index[0]} created again ({time.monotonic() - t:.0f} s)")
conn.execute(
    "INSERT INTO memory_access (chunk_id, accessed_at)"
    " SELECT c.id, now() - random() * interval '30 days'"
    " FROM memory_chunk c, LATERAL generate_series(1, 1 + (random() * 4)::int + (c.id * 0)::int)"
    " WHERE c.metadata->>'bench' = %s", (run,))
conn.execute("ANALYZE memory_chunk")
conn.execute("ANALYZE memory_access")
total = conn.execute("SELECT count(*) FROM memory_chunk").fetchone()[0]
log(f"filled: {done} bench chunks ({total} in the store) in {time.monotonic() - started:.0f} s")

def cue():
    return [random.random() - 0.5 for _ in range(dims)]

def engine(vector):
    body = json.dumps({"embedding": vector, "limit": args["limit"]}).encode()
    request = urllib.request.Request("http://127.0.0.1:8100/retrieve", body,
                                     {"Content-Type": "application/json",
                                      "Authorization": f"Bearer {token}"})
    t = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    elapsed = time.perf_counter() - t
    assert answer["chunks"], answer
    return elapsed, answer["elapsed_ms"] / 1000

def plain(vector):
    text = "[" + ",".join(repr(v) for v in vector) + "]"
    t = time.perf_counter()
    rows = conn.execute("SELECT id FROM memory_chunk ORDER BY embedding <=> %s::vector LIMIT %s",
                        (text, args["candidates"])).fetchall()
    elapsed = time.perf_counter() - t
    assert rows
    return elapsed

times = {"engine": [], "engine (server side)": [], "pgvector": []}
try:
    for _ in range(20):  # warm-up: caches, connections
        v = cue(); engine(v); plain(v)
    for _ in range(args["queries"]):
        v = cue()
        e, server = engine(v)
        times["engine"].append(e); times["engine (server side)"].append(server)
        times["pgvector"].append(plain(v))
finally:
    if not args["keep"]:
        conn.execute("DELETE FROM memory_chunk WHERE metadata->>'bench' = %s", (run,))
        conn.execute("VACUUM ANALYZE memory_chunk")
        conn.execute("VACUUM ANALYZE memory_access")

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000

result = {"chunks_in_store": total, "bench_chunks": done, "queries": args["queries"],
          "dims": dims, "candidates": args["candidates"]}
for name, values in times.items():
    result[name] = {"p50_ms": round(pct(values, 50), 2), "p95_ms": round(pct(values, 95), 2),
                    "p99_ms": round(pct(values, 99), 2),
                    "mean_ms": round(statistics.fmean(values) * 1000, 2)}
print(json.dumps(result))
"""


def lab_ssh_argv(host: str, command: str) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.lab import hosts, labctl

    return labctl.ssh_argv(hosts.by_name(host), command, connect_timeout=10)


def run(count: int, queries: int, *, keep: bool = False, ssh: list[str] | None = None) -> dict:
    """Run the benchmark on the host; return the result (also used by the lab test)."""
    args = {"count": count, "queries": queries, "limit": 1, "candidates": 20, "keep": keep}
    remote = f"python3 - {_quote(json.dumps(args))}"
    command = [*ssh, remote] if ssh else lab_ssh_argv("ageis-node", remote)
    result = subprocess.run(
        command, input=REMOTE, text=True, stdout=subprocess.PIPE, check=False, timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark failed on the host (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="memories to add")
    parser.add_argument("--queries", type=int, default=500, help="timed retrievals")
    parser.add_argument("--keep", action="store_true", help="leave the bench chunks")
    parser.add_argument("--goal-p95-ms", type=float, default=20.0)
    parser.add_argument(
        "--ssh", help="ssh destination of ageis-node (default: the lab's, HOMELAB_LAB_ID)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    ssh = ["ssh", args.ssh] if args.ssh else None
    result = run(args.count, args.queries, keep=args.keep, ssh=ssh)
    print(
        f"actr-engine retrieval with {result['chunks_in_store']} memories"
        f" ({result['dims']}-d, {result['candidates']} candidates, {result['queries']} queries)"
    )
    for name in ("engine", "engine (server side)", "pgvector"):
        figures = result[name]
        print(
            f"  {name:22} p50 {figures['p50_ms']:7.2f} ms   p95 {figures['p95_ms']:7.2f} ms"
            f"   p99 {figures['p99_ms']:7.2f} ms   mean {figures['mean_ms']:7.2f} ms"
        )
    goal = result["engine"]["p95_ms"] <= args.goal_p95_ms
    print(
        f"  goal engine p95 <= {args.goal_p95_ms} ms: {'met' if goal else 'NOT met'}"
        f"  ({time.monotonic() - started:.0f} s in all)"
    )
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
