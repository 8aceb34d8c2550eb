"""Embedding server benchmark: the server under concurrent clients vs the model called directly.

Runs ON the embedder host, in the embedder's virtual environment (the lab test and
`make bench-embedding` copy it there): the direct baseline loads the very model the server
serves (same ONNX graph, same ONNX Runtime threads) in this process, so both figures come
from the same machine in the same run.

    python embedding_bench.py --model-dir DIR --url http://127.0.0.1:8300 [--seconds 5]

Prints one JSON object:
  direct[kind][batch] texts/s for each batch size, and the best;
  server[kind]: texts/s under --clients concurrent clients (one text per request), its
  ratio to the best direct figure and to the direct figure at a batch of all the texts the
  clients have in flight (the most one call can gather), and single-request latency p50/p95
  (one client, one text); --texts-per-request N makes each request carry N texts;
for kind in short (16 tokens) and long (256 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
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


def direct(engine: Engine, texts: list[str], batch: int, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds or done == 0:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        engine.embed(chunk)
        done += batch
        i += batch
    return done / (time.perf_counter() - started)


JSON = {"Content-Type": "application/json"}
CLIENT_CPU_SHARE: list[float] = []


async def clients(
    url: str, texts: list[str], n: int, seconds: float, per_request: int = 1
) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=n), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def one_client(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                # orjson on the client's side too: the clients share the server's cores
                # in the lab, and their JSON is not the server's cost.
                some = [texts[(i + k) % len(texts)] for k in range(per_request)]
                body = orjson.dumps({"input": some[0] if per_request == 1 else some})
                async with session.post(f"{url}/v1/embeddings", data=body, headers=JSON) as reply:
                    answer = orjson.loads(await reply.read())
                    assert reply.status == 200, answer
                    assert len(answer["data"]) == per_request, len(answer["data"])
                done += per_request
                i += n * per_request

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one_client(k) for k in range(n)))
        elapsed = time.perf_counter() - started
        # The clients' own CPU share of the host's cores: in the lab they run beside the
        # server and take from the model what remote clients would not.
        CLIENT_CPU_SHARE.append((time.process_time() - cpu) / (elapsed * (os.cpu_count() or 1)))
        return done / elapsed


async def latencies(url: str, texts: list[str], count: int) -> dict[str, float]:
    samples = []
    async with aiohttp.ClientSession() as session:
        for i in range(count + 3):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/embeddings", json={"input": texts[i]}) as r:
                await r.read()
                assert r.status == 200
            if i >= 3:  # the first few warm the connection
                samples.append((time.perf_counter() - started) * 1000)
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
        help="1: the issue's figure; more: batching clients",
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--latency-requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,8,16,32,64")
    parser.add_argument("--kinds", default="short,long")
    args = parser.parse_args()
    engine = Engine(args.model_dir, args.cache_dir, args.device, args.dtype, args.threads)
    engine.embed(["warm-up"])
    lengths = {"short": 16, "long": 256}
    in_flight = args.clients * args.texts_per_request
    result: dict[str, Any] = {
        "host": os.uname().nodename,
        "cpus": os.cpu_count(),
        "device": args.device,
        "dtype": args.dtype,
        "providers": engine.providers,
        "clients": args.clients,
        "texts_per_request": args.texts_per_request,
        "seconds_per_point": args.seconds,
    }
    for kind in args.kinds.split(","):
        texts = make_texts(engine, lengths[kind], 256, seed=7)
        per_batch = {}
        for batch in [int(b) for b in args.batches.split(",")]:
            per_batch[batch] = round(direct(engine, texts, batch, args.seconds), 1)
        best = max(per_batch, key=lambda b: per_batch[b])
        # Then the server and the best direct batch in alternating rounds, so a neighbour's load
        # on shared CPUs hits both alike; the best round of each counts.
        served, direct_rounds = [], [per_batch[best]]
        for _ in range(args.rounds):
            served.append(
                asyncio.run(
                    clients(args.url, texts, args.clients, args.seconds, args.texts_per_request)
                )
            )
            direct_rounds.append(direct(engine, texts, best, args.seconds))
        best_direct = max(direct_rounds)
        server_rate = max(served)
        result[kind] = {
            "tokens": lengths[kind],
            "direct_texts_per_s": per_batch,
            "direct_best_batch": best,
            "direct_best_texts_per_s": round(best_direct, 1),
            "server_texts_per_s": round(server_rate, 1),
            "server_rounds_texts_per_s": [round(r, 1) for r in served],
            "direct_rounds_texts_per_s": [round(r, 1) for r in direct_rounds],
            "server_vs_direct": round(server_rate / best_direct, 3),
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
