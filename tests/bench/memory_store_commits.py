"""Benchmark: commit latency of the memory store, synchronous (WAL receivers) against local.

On ageis-node, as actr-engine connects (TCP to 127.0.0.1, role ``actr_engine``), each
transaction is the engine's store: ``INSERT INTO memory_chunk`` (text, metadata, a 384-d
embedding, the HNSW index updated) and its first ``memory_access``, then ``COMMIT``. Timed
from the client, side by side in the same run, in alternating blocks of ``--block``:

- ``synchronous``: ``synchronous_commit = on``, the store's setting: the commit returns once
  the WAL is flushed here and on ``memory_store_synchronous_receivers`` WAL receivers;
- ``local``: ``synchronous_commit = local`` (the baseline: flushed here only, what the store
  did before it streamed WAL).

Prints p50/p95/p99 and the overhead of each; the bench rows are deleted afterwards. Goal:
p95 overhead <= 2 ms in the lab.

    python3 tests/bench/memory_store_commits.py --commits 10000     (make bench-memory-store)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REMOTE = r"""
import json, random, statistics, sys, time
import psycopg

args = json.loads(sys.argv[1])
password = open("/etc/actr-engine/db-password").read().strip()
run = f"commit-bench-{int(time.time())}"
modes = {"synchronous": "on", "local": "local"}
conns = {}
for mode, setting in modes.items():
    conn = psycopg.connect("host=127.0.0.1 dbname=memory_store user=actr_engine",
                           password=password, autocommit=True, client_encoding="utf8")
    conn.execute(f"SET synchronous_commit = {setting}")
    conns[mode] = conn
dims = conns["local"].execute(
    "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'memory_chunk'::regclass"
    " AND attname = 'embedding'").fetchone()[0]
# pg_stat_replication's rows are the superuser's to read: asked as postgres.
import subprocess
receivers = int(subprocess.run(
    ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c",
     "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('quorum', 'sync')"],
    capture_output=True, text=True, check=True).stdout.strip())
standby_names = conns["local"].execute("SHOW synchronous_standby_names").fetchone()[0]

def store(conn, n):
    vector = "[" + ",".join(f"{random.random() - 0.5:.6f}" for _ in range(dims)) + "]"
    t = time.perf_counter()
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO memory_chunk (content, metadata, embedding, embedding_model, embedded_at)"
            " VALUES (%s, %s::jsonb, %s::vector, 'bench-random', now()) RETURNING id",
            (f"commit bench {n}", json.dumps({"bench": run}), vector)).fetchone()
        conn.execute("INSERT INTO memory_access (chunk_id) VALUES (%s)", (row[0],))
    return time.perf_counter() - t

times = {mode: [] for mode in modes}
n = 0
try:
    for _ in range(50):  # warm-up
        for mode in modes:
            n += 1; store(conns[mode], n)
    blocks = 0
    while min(len(v) for v in times.values()) < args["commits"]:
        order = list(modes) if blocks % 2 == 0 else list(modes)[::-1]
        for mode in order:
            for _ in range(args["block"]):
                n += 1
                times[mode].append(store(conns[mode], n))
        blocks += 1
finally:
    conns["local"].execute("DELETE FROM memory_chunk WHERE metadata->>'bench' = %s", (run,))
    conns["local"].execute("VACUUM ANALYZE memory_chunk")

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000

result = {"commits_each": len(times["local"]), "block": args["block"],
          "receivers_streaming": receivers, "synchronous_standby_names": standby_names}
for mode, values in times.items():
    result[mode] = {"p50_ms": round(pct(values, 50), 3), "p95_ms": round(pct(values, 95), 3),
                    "p99_ms": round(pct(values, 99), 3),
                    "mean_ms": round(statistics.fmean(values) * 1000, 3)}
print(json.dumps(result))
"""


def lab_ssh_argv(host: str, command: str) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.lab import hosts, labctl

    return labctl.ssh_argv(hosts.by_name(host), command, connect_timeout=10)


def run(commits: int, block: int, ssh: list[str] | None = None) -> dict:
    """Run the benchmark on the host; return its result."""
    args = json.dumps({"commits": commits, "block": block})
    remote = "python3 - '" + args.replace("'", "'\\''") + "'"
    command = [*ssh, remote] if ssh else lab_ssh_argv("ageis-node", remote)
    result = subprocess.run(
        command, input=REMOTE, text=True, stdout=subprocess.PIPE, check=False, timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark failed on the host (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=10_000, help="timed commits of each kind")
    parser.add_argument("--block", type=int, default=500, help="commits per alternating block")
    parser.add_argument("--goal-p95-overhead-ms", type=float, default=2.0)
    parser.add_argument(
        "--ssh", help="ssh destination of ageis-node (default: the lab's, HOMELAB_LAB_ID)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args.commits, args.block, ["ssh", args.ssh] if args.ssh else None)
    print(
        f"memory store commits, {result['commits_each']} of each kind in blocks of"
        f" {result['block']}; synchronous_standby_names = {result['synchronous_standby_names']!r},"
        f" {result['receivers_streaming']} receivers streaming"
    )
    for mode in ("synchronous", "local"):
        figures = result[mode]
        print(
            f"  {mode:12} p50 {figures['p50_ms']:7.3f} ms   p95 {figures['p95_ms']:7.3f} ms"
            f"   p99 {figures['p99_ms']:7.3f} ms   mean {figures['mean_ms']:7.3f} ms"
        )
    overhead = {
        p: round(result["synchronous"][f"{p}_ms"] - result["local"][f"{p}_ms"], 3)
        for p in ("p50", "p95", "p99")
    }
    print(f"  overhead     {json.dumps(overhead)}")
    goal = overhead["p95"] <= args.goal_p95_overhead_ms and result["receivers_streaming"] > 0
    print(
        f"  goal p95 overhead <= {args.goal_p95_overhead_ms} ms with receivers streaming:"
        f" {'met' if goal else 'NOT met'}  ({time.monotonic() - started:.0f} s in all)"
    )
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
