"""The embedding server's own cost per request, with the model call taken out.

On a GPU the model answers 32 short texts in about 2 ms, and what bounds the server is its own
work per request: HTTP, JSON and tokenizing, around one event loop. This benchmark measures
that work on any machine. It serves the real server code with a test double in place of the
model call (``InstantModel``: the real tokenizer and shapes, zero vectors, no ONNX Runtime
call), loads it with 32 clients for each text kind, and reports:
  requests_per_s: what this host sustained (clients and server share its cores);
  server_cpu_us_per_request: the server process's CPU per request, all threads;
  event_loop_us_per_request: its main thread's CPU per request, the part one core must do
    for every request: 1e6 / this is the most requests/s the loop can take where other
    cores tokenize and run the model.

Side by side: each ``--app NAME=DIR`` is a build of ``homelab_embedder`` (a baseline is a
``git archive`` of another commit), served with the lab's batching arguments
(``--server-args``); builds are served in rounds, the order alternating, and the median round
counts. Runs on the embedder host in its virtual environment, next to
embedding_bench.py (the lab test copies both there):

    python embedding_server_overhead.py --model-dir DIR --app now=/opt/embedder/app \\
        [--app before=/root/baseline] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

LENGTHS = {"short": 16, "long": 256}
#: The embedding server's batching arguments on the lab's CPU embedder (its systemd unit).
LAB_CPU_ARGS = "--max-batch 64 --max-batch-tokens 1024 --batch-wait-ms 5"


def serve(app_dir: str, model_dir: str, cache_dir: str, port: int, server_args: str) -> None:
    """Child process: the server of ``app_dir`` with the model call replaced by a test double."""
    sys.path.insert(0, app_dir)
    import numpy as np
    from homelab_embedder import engine, server

    class InstantModel(engine.Engine):
        """Test double for the model call: tokenizer, shapes and server code are real."""

        def run(self, encoded: list[list[int]]) -> engine.Batch:
            vectors = np.zeros((len(encoded), self.dimensions), dtype=np.float32)
            return engine.Batch(vectors, [len(ids) for ids in encoded])

    server.Engine = InstantModel  # main() builds the engine by this name
    sys.argv = ["embedding-server", "--model-dir", model_dir, "--model-name", "bench",
                "--cache-dir", cache_dir, "--host", "127.0.0.1", "--port", str(port),
                *server_args.split()]  # fmt: skip
    server.main()


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU of a process (or one of its threads) from /proc."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy within {timeout:.0f}s")


def measure(
    app_dir: str, args: argparse.Namespace, texts: dict[str, list[str]]
) -> dict[str, dict[str, float]]:
    """One round of one build: start it, load it with each text kind, stop it."""
    from embedding_bench import clients

    url = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, __file__, "--serve", app_dir, "--model-dir", str(args.model_dir),
               "--cache-dir", str(args.cache_dir), "--port", str(args.port),
               f"--server-args={args.server_args}"]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_healthy(url, process)
        figures = {}
        cpu_at_start: list[float] = []  # server, event loop: when the clients' clock starts

        def read_cpu() -> None:
            cpu_at_start[:] = [cpu_seconds(process.pid), cpu_seconds(process.pid, process.pid)]

        for kind, kind_texts in texts.items():
            asyncio.run(clients(url, kind_texts, args.clients, 0.5))  # warm connections, caches
            load = asyncio.run(
                clients(url, kind_texts, args.clients, args.seconds, at_start=read_cpu)
            )
            server, loop = cpu_seconds(process.pid), cpu_seconds(process.pid, process.pid)
            figures[kind] = {
                "requests_per_s": load.rate,
                "server_cpu_us_per_request": (server - cpu_at_start[0]) / load.texts * 1e6,
                "event_loop_us_per_request": (loop - cpu_at_start[1]) / load.texts * 1e6,
            }
        return figures
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        if process.returncode not in (0, -15):
            print(stderr.decode()[-2000:], file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("/var/cache/embedding-server"))
    parser.add_argument("--app", action="append", default=[], help="NAME=DIR, repeatable")
    parser.add_argument("--port", type=int, default=8391)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--server-args",
        default=LAB_CPU_ARGS,
        help=f"the server's batching arguments (default: the lab's, {LAB_CPU_ARGS!r})",
    )
    parser.add_argument("--serve", metavar="APP_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, str(args.model_dir), str(args.cache_dir), args.port, args.server_args)
        return
    apps = dict(spec.split("=", 1) for spec in args.app) or {"now": "/opt/embedder/app"}
    # Imported here, not at the top: a --serve child must import homelab_embedder from its
    # own build's directory, not from this environment's.
    from embedding_bench import host_facts, make_texts
    from homelab_embedder.engine import Engine

    tokenizer = Engine(args.model_dir, args.cache_dir)
    texts = {kind: make_texts(tokenizer, n, 256, seed=11) for kind, n in LENGTHS.items()}
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in apps}
    for round_ in range(args.rounds):
        # The order alternates, so drift in a neighbour's load hits every build alike.
        order = list(apps.items()) if round_ % 2 == 0 else list(apps.items())[::-1]
        for name, app_dir in order:
            rounds[name].append(measure(app_dir, args, texts))
    result: dict[str, Any] = {
        **host_facts(),
        "clients": args.clients,
        "seconds_per_point": args.seconds,
        "rounds": args.rounds,
        "server_args": args.server_args,
    }
    for name, per_round in rounds.items():
        result[name] = {
            kind: {
                figure: round(statistics.median(r[kind][figure] for r in per_round), 1)
                for figure in per_round[0][kind]
            }
            for kind in LENGTHS
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
