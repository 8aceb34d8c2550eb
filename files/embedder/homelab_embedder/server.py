"""The embedding server: OpenAI-compatible POST /v1/embeddings with dynamic batching.

Requests that arrive together are embedded together: what arrived is tokenized as one batch
on a thread while the model runs, then a single batcher takes what is queued
(up to ``--max-batch`` texts; while busy it waits for as many requests as the recent calls
served, at most ``--batch-wait-ms``) and runs it as one ONNX Runtime call on one worker thread,
so 32 clients sending one text each cost about what one client sending 32 texts costs. An idle
server runs a lone request at once. GET /health answers 200 once a warm-up embedding
succeeded; GET /metrics is Prometheus'.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from homelab_embedder import systemd
from homelab_embedder.batching import Gathering
from homelab_embedder.engine import Engine

LOG = logging.getLogger("embedding-server")

REQUESTS = Counter(
    "embedding_server_requests_total", "Embedding requests by outcome", ["endpoint", "code"]
)
TEXTS = Counter("embedding_server_texts_total", "Texts embedded")
TOKENS = Counter("embedding_server_tokens_total", "Tokens embedded (after truncation)")
LATENCY = Histogram(
    "embedding_server_request_seconds",
    "Time from request to response, POST /v1/embeddings",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
BATCH_TEXTS = Histogram(
    "embedding_server_batch_texts",
    "Texts per model call (dynamic batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SECONDS = Histogram(
    "embedding_server_batch_seconds",
    "Model time per batch",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
QUEUED = Gauge("embedding_server_queued_texts", "Texts waiting for the model")
UP = Gauge("embedding_server_model_ready", "1 when the model answered its warm-up", ["model"])
INFO = Gauge(
    "embedding_server_info", "Served model", ["model", "device", "dtype", "provider", "dims"]
)


@dataclass
class Request:
    """One request's texts, waiting to be tokenized; ``jobs`` resolves to its model jobs."""

    texts: list[str]
    jobs: asyncio.Future[list[Job]] = field(repr=False)


@dataclass
class Job:
    encoded: list[list[int]]
    future: asyncio.Future[Any] = field(repr=False)

    @property
    def width(self) -> int:
        return max(len(ids) for ids in self.encoded)


class Batcher:
    """Tokenizes what arrived, then collects the tokenized jobs into model calls.

    Tokenizing is a stage of its own: everything that arrived since the last round goes to the
    tokenizer as one ``encode_batch`` on a thread (the tokenizer releases the GIL and spreads a
    batch over all cores), during the running model call. The event loop keeps only HTTP and
    JSON: tokenizing was about half of its work per short request and most of it per long one
    (measured: 45 of 105 us at 16 tokens, about 450 us at 256).

    A call holds at most ``max_batch`` texts and at most ``max_tokens`` padded tokens (texts
    times the longest text): short texts batch wide, long ones stay in the batch sizes where
    the model is fastest per text.
    """

    def __init__(self, engine: Engine, max_batch: int, max_tokens: int, wait_s: float) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        self.gathering = Gathering(wait_s)
        self.untokenized: collections.deque[Request] = collections.deque()
        self.to_tokenize = asyncio.Event()
        self.jobs: collections.deque[Job] = collections.deque()
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.tokenizing_texts = 0  # in the tokenizer's current round

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        request = Request(texts, asyncio.get_running_loop().create_future())
        self.untokenized.append(request)
        QUEUED.inc(len(texts))
        self.to_tokenize.set()
        jobs = await request.jobs
        if len(jobs) == 1:
            return await jobs[0].future
        parts = await asyncio.gather(*(job.future for job in jobs))
        return np.concatenate([p[0] for p in parts]), [n for p in parts for n in p[1]]

    def _split(self, encoded: list[list[int]], loop: asyncio.AbstractEventLoop) -> list[Job]:
        """One request's texts as jobs that each fit in a model call."""
        per_job = max(1, min(self.max_batch, self.max_tokens // max(map(len, encoded))))
        return [
            Job(encoded[start : start + per_job], loop.create_future())
            for start in range(0, len(encoded), per_job)
        ]

    async def tokenize(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.untokenized:
                self.to_tokenize.clear()
                await self.to_tokenize.wait()
            requests = list(self.untokenized)
            self.untokenized.clear()
            texts = [text for request in requests for text in request.texts]
            self.tokenizing_texts = len(texts)
            try:
                encoded = await loop.run_in_executor(self.tokenizing, self.engine.encode, texts)
                per_request, offset = [], 0
                for request in requests:
                    per_request.append(
                        self._split(encoded[offset : offset + len(request.texts)], loop)
                    )
                    offset += len(request.texts)
            except Exception as error:  # this round's requests fail, the stage goes on
                LOG.exception("tokenizing failed")
                QUEUED.dec(len(texts))
                for request in requests:
                    if not request.jobs.done():
                        request.jobs.set_exception(error)
                continue
            finally:
                self.tokenizing_texts = 0
            for request, jobs in zip(requests, per_request, strict=True):
                self.jobs.extend(jobs)
                if not request.jobs.done():
                    request.jobs.set_result(jobs)
            self.arrived.set()

    def pending(self) -> int:
        """Texts not yet in a model call: waiting for the tokenizer, in it, or tokenized."""
        return (
            sum(len(r.texts) for r in self.untokenized)
            + self.tokenizing_texts
            + sum(len(j.encoded) for j in self.jobs)
        )

    def _fits(self, count: int, width: int, job: Job) -> bool:
        n = count + len(job.encoded)
        return n <= self.max_batch and n * max(width, job.width) <= self.max_tokens

    async def _take(self) -> list[Job]:
        while not self.jobs:
            self.arrived.clear()
            await self.arrived.wait()
        first = self.jobs.popleft()
        taken, count, width = [first], len(first.encoded), first.width
        # Busy: wait a little for the clients that are about to send, so the call is fuller,
        # but go as soon as those the recent calls served are in (batching.Gathering).
        busy = bool(self.jobs or self.untokenized or self.tokenizing_texts)
        expected, deadline = self.gathering.start(time.monotonic(), busy)
        while True:
            if self.jobs:
                if not self._fits(count, width, self.jobs[0]):
                    break
                job = self.jobs.popleft()
                taken.append(job)
                count += len(job.encoded)
                width = max(width, job.width)
                continue
            if len(taken) >= expected:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                break
        self.gathering.record(len(taken))
        return taken

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._take()
            encoded = [ids for job in jobs for ids in job.encoded]
            QUEUED.dec(len(encoded))
            started = time.perf_counter()
            try:
                batch = await loop.run_in_executor(self.executor, self.engine.run, encoded)
            except Exception as error:  # the jobs fail, the batcher goes on
                LOG.exception("model call failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            BATCH_SECONDS.observe(time.perf_counter() - started)
            BATCH_TEXTS.observe(len(encoded))
            offset = 0
            for job in jobs:
                n = len(job.encoded)
                if not job.future.done():
                    job.future.set_result(
                        (batch.vectors[offset : offset + n], batch.tokens[offset : offset + n])
                    )
                offset += n


def json_response(payload: dict[str, Any], status: int = 200) -> web.Response:
    """JSON through orjson: float32 vectors serialize straight from numpy, several times
    faster than the standard library's float repr (per-text cost the model's share pays for)."""
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
    )


def error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    REQUESTS.labels("/v1/embeddings", str(status)).inc()
    return json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
    )


class Service:
    def __init__(self, engine: Engine, model_name: str, batcher: Batcher, max_inputs: int) -> None:
        self.engine = engine
        self.model_name = model_name
        self.names = {model_name, model_name.rsplit("/", 1)[-1]}
        self.batcher = batcher
        self.max_inputs = max_inputs
        self.ready = False

    async def embeddings(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in self.names:
            return error(404, f"model {model!r} is not served here; this server serves "
                         f"{self.model_name!r}", "model_not_found")  # fmt: skip
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t for t in texts)
        ):
            return error(400, "input must be a non-empty string or a list of non-empty strings")
        if len(texts) > self.max_inputs:
            return error(400, f"at most {self.max_inputs} inputs per request")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != self.engine.dimensions:
            return error(400, f"dimensions: this model gives {self.engine.dimensions}")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return error(400, "encoding_format must be float or base64")
        try:
            vectors, tokens = await self.batcher.embed(texts)
        except Exception as exc:
            LOG.exception("embedding failed")
            return error(500, f"embedding failed: {exc}", "server_error")
        if encoding == "base64":
            items: Any = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            items = np.ascontiguousarray(vectors, dtype=np.float32)
        total = int(sum(tokens))
        TEXTS.inc(len(texts))
        TOKENS.inc(total)
        REQUESTS.labels("/v1/embeddings", "200").inc()
        response = json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": item}
                    for i, item in enumerate(items)
                ],
                "model": self.model_name,
                "usage": {"prompt_tokens": total, "total_tokens": total},
            }
        )
        LATENCY.observe(time.perf_counter() - started)
        return response

    async def models(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "object": "list",
                "data": [{"id": self.model_name, "object": "model", "owned_by": "homelab"}],
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        status = 200 if self.ready else 503
        return json_response(
            {
                "status": "ok" if self.ready else "loading",
                "model": self.model_name,
                "device": self.engine.device,
                "dtype": self.engine.dtype,
                "providers": self.engine.providers,
                "dimensions": self.engine.dimensions,
                "queued_texts": self.batcher.pending(),
            },
            status=status,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ping_watchdog(service: Service) -> None:
    """WATCHDOG=1 while the event loop runs and the model answers (systemd's WatchdogSec)."""
    interval = systemd.watchdog_interval()
    if interval is None:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(service.batcher.embed(["watchdog"]), interval)
        except Exception:
            LOG.warning("watchdog: the model did not answer within %.0fs", interval)
            continue
        systemd.notify("WATCHDOG=1")


def make_app(service: Service) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/embeddings", service.embeddings)
    app.router.add_get("/v1/models", service.models)
    app.router.add_get("/health", service.health)
    app.router.add_get("/metrics", service.metrics)

    async def start_batcher(app: web.Application) -> Any:
        tasks = [
            asyncio.create_task(service.batcher.tokenize()),
            asyncio.create_task(service.batcher.run()),
        ]
        vectors, _ = await service.batcher.embed(["warm-up"])
        if vectors.shape != (1, service.engine.dimensions):
            raise RuntimeError(f"warm-up gave shape {vectors.shape}")
        service.ready = True
        UP.labels(service.model_name).set(1)
        LOG.info("ready: %s on %s", service.model_name, service.engine.providers)
        systemd.notify(f"READY=1\nSTATUS=serving {service.model_name} on {service.engine.device}")
        watchdog = asyncio.create_task(ping_watchdog(service))
        yield
        for task in [*tasks, watchdog]:
            task.cancel()

    app.cleanup_ctx.append(start_batcher)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("CACHE_DIRECTORY",
                        "/var/cache/embedding-server")))  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-inputs", type=int, default=2048)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    engine = Engine(args.model_dir, args.cache_dir, args.device, args.dtype, args.threads)
    INFO.labels(
        args.model_name, args.device, args.dtype, engine.providers[0], str(engine.dimensions)
    ).set(1)
    batcher = Batcher(engine, args.max_batch, args.max_batch_tokens, args.batch_wait_ms / 1000.0)
    service = Service(engine, args.model_name, batcher, args.max_inputs)
    web.run_app(make_app(service), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
