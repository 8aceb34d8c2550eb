"""The vector indexer: embeds memory chunks that have no embedding yet, through the server.

Loop: take up to ``--batch-size`` chunks ``WHERE embedding IS NULL`` (oldest first, the
store's partial index), embed them with one POST /v1/embeddings, write each vector with
``UPDATE ... WHERE id = ... AND embedding IS NULL`` (a chunk is written once, whoever else runs),
repeat until none is left; then wait for a ``memory_chunk_added`` notification (LISTEN) or
``--scan-interval`` seconds, whichever comes first. The scan, not the notification, decides
what is embedded: after either side was away, the first scan catches up with everything
stored meanwhile.

Failures: a call to the embedding server is retried with exponential backoff (``--retry-base``
doubling up to ``--retry-max``) at most ``--max-attempts`` times; a lost database connection is
reopened with the same backoff and bound. Past the bound the process exits non-zero and
systemd restarts it (``Restart=on-failure`` with its own growing delay).

GET /health (200 while the database connection is up and the last embedding call worked) and
GET /metrics (Prometheus) are served on ``--listen``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from homelab_embedder import systemd

LOG = logging.getLogger("vector-indexer")
T = TypeVar("T")

EMBEDDED = Counter("vector_indexer_chunks_embedded_total", "Chunks whose embedding was written")
SKIPPED = Counter(
    "vector_indexer_chunks_skipped_total", "Chunks already embedded when the write came"
)
PENDING = Gauge("vector_indexer_pending_chunks", "Chunks without embedding at the last scan")
NOTIFIED = Counter("vector_indexer_notifications_total", "memory_chunk_added notifications")
ERRORS = Counter("vector_indexer_errors_total", "Failed attempts", ["stage"])
BATCH_SECONDS = Histogram(
    "vector_indexer_batch_seconds",
    "Scan + embed + write of one batch",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
LAST_SUCCESS = Gauge(
    "vector_indexer_last_success_timestamp_seconds", "When a batch was last written"
)
DB_UP = Gauge("vector_indexer_database_connected", "1 while connected to the memory store")
EMBED_UP = Gauge("vector_indexer_embedding_server_ok", "1 when the last embedding call worked")

SELECT_PENDING = "SELECT id, content FROM memory_chunk WHERE embedding IS NULL ORDER BY id LIMIT %s"
COUNT_PENDING = "SELECT count(*) FROM memory_chunk WHERE embedding IS NULL"
WRITE = """
UPDATE memory_chunk AS c
   SET embedding = v.embedding::vector, embedding_model = %s, embedded_at = now()
  FROM unnest(%s::bigint[], %s::text[]) AS v(id, embedding)
 WHERE c.id = v.id AND c.embedding IS NULL
"""


def alive() -> None:
    """Tell systemd's watchdog the main loop is turning (no-op outside systemd)."""
    systemd.notify("WATCHDOG=1")


def sleep(seconds: float) -> None:
    """time.sleep in slices that keep the watchdog fed."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        alive()
        time.sleep(min(left, 5.0))


class GaveUp(RuntimeError):
    """Retries exhausted: the process exits and systemd restarts it."""


class Backoff:
    def __init__(self, base: float, cap: float, attempts: int) -> None:
        self.base, self.cap, self.attempts = base, cap, attempts

    def delays(self) -> list[float]:
        return [min(self.cap, self.base * 2**n) for n in range(self.attempts - 1)]

    def run(self, what: str, stage: str, action: Callable[[], T]) -> T:
        for attempt, delay in enumerate([*self.delays(), None], start=1):
            try:
                return action()
            except Exception as error:
                ERRORS.labels(stage).inc()
                if delay is None:
                    raise GaveUp(f"{what}: failed {self.attempts} times, last: {error}") from error
                LOG.warning(
                    "%s failed (attempt %d of %d): %s; again in %.1fs",
                    what, attempt, self.attempts, error, delay,
                )  # fmt: skip
                sleep(delay)
        raise AssertionError("unreachable")


class EmbeddingClient:
    def __init__(self, url: str, model: str | None, timeout: float) -> None:
        self.url = url.rstrip("/") + "/v1/embeddings"
        self.model = model
        self.timeout = timeout

    def embed(self, texts: list[str]) -> tuple[str, list[np.ndarray]]:
        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.model:
            body["model"] = self.model
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{self.url}: HTTP {error.code}: {error.read()[:300]!r}") from None
        data = sorted(answer["data"], key=lambda item: item["index"])
        if len(data) != len(texts):
            raise RuntimeError(f"{self.url}: {len(data)} embeddings for {len(texts)} texts")
        vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
        return answer["model"], vectors


class State:
    def __init__(self) -> None:
        self.db_ok = False
        self.embed_ok = True
        self.reason = "starting"


def serve_http(listen: str, state: State) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
            elif self.path == "/health":
                ok = state.db_ok and state.embed_ok
                body = json.dumps(
                    {"status": "ok" if ok else "degraded", "reason": state.reason}
                ).encode()
                ctype, code = "application/json", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="http").start()
    return server


def text_of(content: str | bytes) -> str:
    """A chunk's text; a database in SQL_ASCII hands text over as bytes (taken as UTF-8)."""
    return content.decode("utf-8", "replace") if isinstance(content, bytes) else content


def vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


class Indexer:
    def __init__(self, args: argparse.Namespace, password: str, state: State) -> None:
        self.args = args
        self.password = password
        self.state = state
        self.client = EmbeddingClient(args.embed_url, args.model, args.embed_timeout)
        self.backoff = Backoff(args.retry_base, args.retry_max, args.max_attempts)
        self.conn: psycopg.Connection[Any] | None = None

    def connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            host=self.args.db_host,
            port=self.args.db_port,
            dbname=self.args.db_name,
            user=self.args.db_user,
            password=self.password,
            autocommit=True,
            connect_timeout=5,
            application_name="vector-indexer",
            # TLS, the server's certificate checked against the memory store's CA and name.
            sslmode=self.args.db_sslmode,
            sslrootcert=self.args.db_ca,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        conn.execute("LISTEN memory_chunk_added")
        return conn

    def ensure_connected(self) -> psycopg.Connection[Any]:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        DB_UP.set(0)
        self.state.db_ok = False
        self.conn = self.backoff.run("connect to the memory store", "connect", self.connect)
        DB_UP.set(1)
        self.state.db_ok = True
        self.state.reason = "connected"
        LOG.info("connected to %s:%s/%s", self.args.db_host, self.args.db_port, self.args.db_name)
        return self.conn

    def drop_connection(self, error: Exception) -> None:
        LOG.warning("memory store connection lost: %s", error)
        ERRORS.labels("database").inc()
        DB_UP.set(0)
        self.state.db_ok = False
        self.state.reason = f"database: {error}"
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def embed(self, texts: list[str]) -> tuple[str, list[np.ndarray]]:
        def call() -> tuple[str, list[np.ndarray]]:
            try:
                result = self.client.embed(texts)
            except Exception as error:
                EMBED_UP.set(0)
                self.state.embed_ok = False
                self.state.reason = f"embedding server: {error}"
                raise
            EMBED_UP.set(1)
            self.state.embed_ok = True
            return result

        return self.backoff.run(f"embed {len(texts)} chunks", "embed", call)

    def one_batch(self) -> int:
        """Embed and write one batch; the number of chunks it took (0: nothing pending)."""
        conn = self.ensure_connected()
        started = time.perf_counter()
        rows = conn.execute(SELECT_PENDING, (self.args.batch_size,)).fetchall()
        if not rows:
            PENDING.set(0)
            return 0
        model, vectors = self.embed([text_of(content) for _, content in rows])
        conn = self.ensure_connected()
        cursor = conn.execute(
            WRITE, (model, [row[0] for row in rows], [vector_text(v) for v in vectors])
        )
        written = cursor.rowcount
        EMBEDDED.inc(written)
        SKIPPED.inc(len(rows) - written)
        LAST_SUCCESS.set_to_current_time()
        BATCH_SECONDS.observe(time.perf_counter() - started)
        self.state.reason = "ok"
        return len(rows)

    def wait_for_news(self) -> None:
        conn = self.ensure_connected()
        PENDING.set(conn.execute(COUNT_PENDING).fetchone()[0])
        deadline = time.monotonic() + self.args.scan_interval
        while time.monotonic() < deadline:
            alive()
            got = 0
            for _ in conn.notifies(timeout=min(1.0, max(0.01, deadline - time.monotonic()))):
                got += 1
                NOTIFIED.inc()
                break
            if got:
                # Take whatever else is already queued (a short timeout: 0 would mean none),
                # then go and scan.
                for _ in conn.notifies(timeout=0.01):
                    got += 1
                    NOTIFIED.inc()
            if got:
                return

    def run(self) -> None:
        database_failures = 0
        systemd.notify("READY=1\nSTATUS=indexing")
        while True:
            try:
                while self.one_batch() == self.args.batch_size:
                    alive()
                self.wait_for_news()
                database_failures = 0
            except psycopg.Error as error:
                self.drop_connection(error)
                database_failures += 1
                if database_failures >= self.args.max_attempts:
                    raise GaveUp(f"memory store: {database_failures} failures in a row") from error
                delays = self.backoff.delays()
                sleep(delays[min(database_failures, len(delays)) - 1])


def read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().strip()
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SystemExit("no --password-file and no systemd credential (CREDENTIALS_DIRECTORY)")
    return (Path(directory) / "db-password").read_text().strip()


def ca_file(args: argparse.Namespace) -> str:
    """The memory store's CA: --db-ca, else the systemd credential db-ca."""
    if args.db_ca:
        return args.db_ca
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory or not (Path(directory) / "db-ca").is_file():
        raise SystemExit("no --db-ca and no systemd credential db-ca (the memory store's CA)")
    return str(Path(directory) / "db-ca")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-host", required=True)
    parser.add_argument("--db-port", type=int, default=5432)
    parser.add_argument("--db-name", default="memory_store")
    parser.add_argument("--db-user", default="vector_indexer")
    parser.add_argument("--password-file", help="default: the systemd credential db-password")
    parser.add_argument("--db-ca", help="the memory store's CA; default: the credential db-ca")
    parser.add_argument(
        "--db-sslmode", default="verify-full", choices=("verify-full", "verify-ca", "require")
    )
    parser.add_argument("--embed-url", default="http://127.0.0.1:8300")
    parser.add_argument("--model", help="model name to ask the server for (default: its own)")
    parser.add_argument("--embed-timeout", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scan-interval", type=float, default=30.0)
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--retry-base", type=float, default=0.5)
    parser.add_argument("--retry-max", type=float, default=30.0)
    parser.add_argument("--listen", default="0.0.0.0:9310")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    args.db_ca = ca_file(args)
    state = State()
    serve_http(args.listen, state)
    indexer = Indexer(args, read_password(args), state)
    try:
        indexer.run()
    except GaveUp as error:
        LOG.error("%s; exiting for systemd to restart", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
