"""Embedding server benchmark: the server under concurrent clients vs the model called directly.

Runs ON the embedder host, in the embedder's virtual environment (the lab test and
`make bench-embedder` copy it there): the direct baseline loads the very model the server
serves (same ONNX graph, same ONNX Runtime threads) in this process, so both figures come
from the same machine in the same run.

    python embedding_bench.py --model-dir DIR --url http://127.0.0.1:8300 \
        [--seconds 1] [--rounds 15] [--sweep-rounds 3]

Prints one JSON object:
  direct[kind][batch] texts/s for each batch size (median of --sweep-rounds), and the best;
  server[kind]: texts/s under --clients concurrent clients (one text per request), its
  ratio to the best direct batch (the median over --rounds paired slices of server and
  direct, --seconds each, order alternating) and to the direct figure at a batch of all the
  texts the clients have in flight (the most one call can gather), the share of its time the
  model ran and how fast (from the server's /metrics), and single-request latency p50/p95
  (one client, one text); --texts-per-request N makes each request carry N texts;
for kind in short (16 tokens) and long (256 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from homelab_embedder.engine import Engine

WORDS = [
    "memory",
    "vector",
    "chunk",
    "store",
    "search",
    "agent",
    "model",
    "embed",
    "token",
    "server",
    "node",
    "query",
    "index",
    "recall",
    "context",
    "answer",
    "learn",
    "plan",
    "write",
    "read",
    "update",
    "night",
    "morning",
    "river",
    "mountain",
    "city",
    "music",
    "garden",
    "window",
    "kitchen",
    "letter",
    "friend",
    "travel",
    "winter",
    "summer",
    "paper",
    "signal",
    "record",
    "network",
    "power",
    "engine",
    "light",
    "stone",
    "water",
    "forest",
    "cloud",
    "market",
    "language",
    "history",
    "science",
]


def make_texts(engine: Engine, tokens: int, count: int, seed: int) -> list[str]:
    """``count`` different texts of exactly ``tokens`` tokens ([CLS] and [SEP] included)."""
    rng = random.Random(seed)
    texts = []
    while len(texts) < count:
        words = [rng.choice(WORDS) for _ in range(tokens)]
        while engine.count_tokens([" ".join(words)])[0] > tokens:
            words.pop()
        text = " ".join(words)
        if engine.count_tokens([text])[0] == tokens or tokens >= engine.max_length:
            texts.append(text)
    return texts


def host_facts() -> dict[str, Any]:
    return {"host": os.uname().nodename, "cpus": os.cpu_count()}


def direct(engine: Engine, texts: list[str], batch: int, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds or done == 0:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        engine.embed(chunk)
        done += batch
        i += batch
    return done / (time.perf_counter() - started)


class Connection:
    """One keep-alive HTTP/1.1 connection that posts JSON and reads the answer.

    The benchmark's client, kept lean: 32 clients live in one process beside the server, so
    their cost is taken from what is measured. aiohttp's client costs about 150 us of CPU per
    request; this one about 40 us. Needs the server to send Content-Length (aiohttp's
    web.Response does).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urllib.parse.urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = CONTENT_LENGTH.search(head)
        if match is None:
            raise RuntimeError(f"no Content-Length in the answer: {head[:200]!r}")
        return status, await self.reader.readexactly(int(match.group(1)))

    def close(self) -> None:
        self.writer.close()


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
CLIENT_CPU_SHARE: list[float] = []


@dataclass(frozen=True)
class Load:
    """What the clients got while the clock ran."""

    texts: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.texts / self.seconds


async def clients(
    url: str,
    texts: list[str],
    n: int,
    seconds: float,
    per_request: int = 1,
    at_start: Callable[[], None] | None = None,
) -> Load:
    """``n`` concurrent clients for ``seconds``, each sending a request as soon as it has its
    last answer.

    The connections open and each client has one answer before the clock starts (then
    ``at_start`` is called), so the clients come in together as they do in steady state: an
    idle server's first call would otherwise take a lone request. The clock stops when the
    last answer is in, so the load counts whole model calls."""
    done, warmed, go = 0, 0, asyncio.Event()
    started = cpu = stop = 0.0
    connections = await asyncio.gather(*(Connection.open(url) for _ in range(n)))

    async def one_client(k: int, connection: Connection) -> None:
        nonlocal done, warmed, started, cpu, stop
        i, first = k, True
        while first or time.perf_counter() < stop:
            some = [texts[(i + j) % len(texts)] for j in range(per_request)]
            body = orjson.dumps({"input": some[0] if per_request == 1 else some})
            status, reply = await connection.post("/v1/embeddings", body)
            answer = orjson.loads(reply)
            assert status == 200, answer
            assert len(answer["data"]) == per_request, len(answer["data"])
            i += n * per_request
            if first:
                first = False
                warmed += 1
                if warmed == n:
                    if at_start is not None:
                        at_start()
                    started, cpu = time.perf_counter(), time.process_time()
                    stop = started + seconds
                    go.set()
                await go.wait()
            else:
                done += per_request

    try:
        await asyncio.gather(*(one_client(k, c) for k, c in enumerate(connections)))
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    # The clients' own CPU share of the host's cores: in the lab they run beside the
    # server and take from the model what remote clients would not.
    CLIENT_CPU_SHARE.append((time.process_time() - cpu) / (elapsed * (os.cpu_count() or 1)))
    return Load(done, elapsed)


def model_counters(url: str) -> tuple[float, float]:
    """The server's model time and texts so far (seconds, texts), from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        text = reply.read().decode()

    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"{url}/metrics has no {name}")
        return float(match.group(1))

    return value("embedding_server_batch_seconds_sum"), value("embedding_server_batch_texts_sum")


async def latencies(url: str, texts: list[str], count: int) -> dict[str, float]:
    samples = []
    connection = await Connection.open(url)
    try:
        for i in range(count + 3):
            body = orjson.dumps({"input": texts[i % len(texts)]})
            started = time.perf_counter()
            status, reply = await connection.post("/v1/embeddings", body)
            assert status == 200, reply[:300]
            if i >= 3:  # the first few warm the connection
                samples.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 2),
        "requests": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("/var/cache/embedding-server"))
    parser.add_argument("--url", default="http://127.0.0.1:8300")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--texts-per-request",
        type=int,
        default=1,
        help="1: one text per request (the baseline figure); more: batching clients",
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="per slice and sweep point")
    parser.add_argument("--latency-requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=15, help="paired slices")
    parser.add_argument("--sweep-rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,8,16,32,64")
    parser.add_argument("--kinds", default="short,long")
    args = parser.parse_args()
    engine = Engine(args.model_dir, args.cache_dir, args.device, args.dtype, args.threads)
    engine.embed(["warm-up"])
    lengths = {"short": 16, "long": 256}
    in_flight = args.clients * args.texts_per_request
    result: dict[str, Any] = {
        **host_facts(),
        "device": args.device,
        "dtype": args.dtype,
        "providers": engine.providers,
        "clients": args.clients,
        "texts_per_request": args.texts_per_request,
        "seconds_per_point": args.seconds,
    }
    batches = [int(b) for b in args.batches.split(",")]
    at_start: list[float] = []  # the server's model counters when a slice's clock starts

    def read_counters() -> None:
        at_start[:] = model_counters(args.url)

    for kind in args.kinds.split(","):
        texts = make_texts(engine, lengths[kind], 256, seed=7)
        # The sweep picks the batch: every size in each of --sweep-rounds rounds (the order
        # alternating), the median per size, so one slow moment does not pick or drop one.
        sweep: dict[int, list[float]] = {batch: [] for batch in batches}
        for round_ in range(args.sweep_rounds):
            for batch in batches if round_ % 2 == 0 else batches[::-1]:
                sweep[batch].append(direct(engine, texts, batch, args.seconds))
        per_batch = {batch: round(statistics.median(rates), 1) for batch, rates in sweep.items()}
        best = max(per_batch, key=lambda b: per_batch[b])
        # Then the server and the best direct batch in --rounds short paired slices, the
        # order alternating (server first, then direct first, ...): the shared cores' speed
        # drifts by 20 % over seconds here, and a drift hits both sides of a pair alike. The
        # ratio is the median of the pairs' ratios.
        served, direct_rounds = [], []
        model_seconds = model_texts = server_seconds = 0.0
        for round_ in range(args.rounds):
            sides = ["server", "direct"] if round_ % 2 == 0 else ["direct", "server"]
            for side in sides:
                if side == "server":
                    load = asyncio.run(clients(
                        args.url, texts, args.clients, args.seconds, args.texts_per_request,
                        at_start=read_counters,
                    ))  # fmt: skip
                    busy_after, texts_after = model_counters(args.url)
                    served.append(load.rate)
                    server_seconds += load.seconds
                    model_seconds += busy_after - at_start[0]
                    model_texts += texts_after - at_start[1]
                else:
                    direct_rounds.append(direct(engine, texts, best, args.seconds))
        ratios = [s / d for s, d in zip(served, direct_rounds, strict=True)]
        server_rate = statistics.median(served)
        result[kind] = {
            "tokens": lengths[kind],
            "direct_texts_per_s": per_batch,
            "direct_best_batch": best,
            "direct_best_texts_per_s": round(statistics.median(direct_rounds), 1),
            "server_texts_per_s": round(server_rate, 1),
            "server_rounds_texts_per_s": [round(r, 1) for r in served],
            "direct_rounds_texts_per_s": [round(r, 1) for r in direct_rounds],
            "server_vs_direct": round(statistics.median(ratios), 3),
            "server_vs_direct_rounds": [round(r, 3) for r in ratios],
            # Where the server's share goes, from its own /metrics over its timed slices: how
            # much of the time the model ran, and how fast it ran while it did (texts per
            # second of model time, to set beside the direct figure at the batch in flight).
            "server_model_busy_share": round(model_seconds / server_seconds, 3),
            "server_model_texts_per_s": round(model_texts / model_seconds, 1),
            # No call can hold more texts than the clients have in flight, so this is the
            # server's own efficiency where the best batch is larger (a GPU's is).
            "server_vs_direct_at_batch_in_flight": (
                round(server_rate / per_batch[in_flight], 3) if in_flight in per_batch else None
            ),
            "clients_cpu_share_of_host": round(
                statistics.mean(CLIENT_CPU_SHARE[-args.rounds :]), 3
            ),
            "single_request": asyncio.run(latencies(args.url, texts, args.latency_requests)),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
