"""HTTP service of the reference actr-engine (standard library http.server + psycopg 3).

Endpoints (JSON in and out). The two that change or read the memories (``POST``) need
``Authorization: Bearer <token>`` (the systemd credential ``api-token``, or
``ACTR_API_TOKEN_FILE``): without it they answer 401. A body over ``ACTR_MAX_BODY`` bytes
(1 MiB) is refused with 413 before it is read, one without a length with 411, and a client that
sends slower than ``ACTR_CLIENT_TIMEOUT`` seconds (10) per read is cut off with 408; each
connection has its own thread, so a slow client holds only its own. Health and metrics stay
open (monitoring reads them); the engine does not start without a token.

- ``GET /health``: 200 ``{"status": "ok"}`` when the memory store answers, else 503.
- ``GET /metrics``: Prometheus text (requests, errors, retrieval latency histogram).
- ``POST /chunks`` ``{"content": str, "metadata"?: {}, "embedding"?: [float]}``: stores a
  chunk (its creation is its first access); without an embedding it is fetched from the
  embedding server when one is configured, else left to the vector indexer; so is one whose
  server does not answer (the memory is kept, ``actr_engine_embeddings_deferred_total``
  counts it). 201 ``{"id"}``.
- ``POST /retrieve`` ``{"cue"?: str, "embedding"?: [float], "limit"?: int, "threshold"?: float}``:
  the ``ACTR_CANDIDATES`` nearest chunks by cosine distance (pgvector's HNSW index), ranked
  by ACT-R activation (``activation.py``); the chunks returned are recorded as accessed
  once the reply has gone out (the next retrieval on the connection sees them).

Configuration, from the environment (the systemd unit's drop-in):
``ACTR_LISTEN`` (host:port, default 127.0.0.1:8100), ``ACTR_DATABASE`` (libpq conninfo without
the password), the password from the systemd credential ``db-password`` (or
``ACTR_DATABASE_PASSWORD_FILE``), ``ACTR_DECAY`` (0.5), ``ACTR_MISMATCH_PENALTY`` (1.0),
``ACTR_THRESHOLD`` (empty: none), ``ACTR_CANDIDATES`` (20), ``ACTR_EMBEDDER_URL`` (empty: the
caller gives embeddings), ``ACTR_EMBEDDER_MODEL`` (empty: the server's own), ``ACTR_MAX_BODY``,
``ACTR_CLIENT_TIMEOUT``, ``ACTR_EF_SEARCH`` (100: pgvector's HNSW search breadth, set on each
connection).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

from actr_engine.activation import rank

log = logging.getLogger("actr-engine")

# The nearest candidates through pgvector's HNSW index, then each one's access ages through
# the (chunk_id, accessed_at) index. LIMIT is a literal (the configured count): as a parameter,
# a prepared statement's generic plan would not know it is small and may scan memory_access.
CANDIDATES_SQL = """
SELECT c.id, c.content, c.metadata, c.similarity,
       ARRAY(SELECT extract(epoch FROM now() - a.accessed_at)::float8
             FROM memory_access a WHERE a.chunk_id = c.id)
FROM (
    SELECT id, content, metadata, 1 - (embedding <=> %(q)s::vector) AS similarity
    FROM memory_chunk
    WHERE embedding IS NOT NULL
    ORDER BY embedding <=> %(q)s::vector
    LIMIT {limit:d}
) c
"""
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    database: str
    password: str | None
    decay: float
    mismatch_penalty: float
    threshold: float | None
    candidates: int
    embedder_url: str | None
    embedder_model: str
    api_token: str | None = None
    max_body: int = 1024 * 1024
    client_timeout: float = 10.0
    # HNSW's search breadth (pgvector's hnsw.ef_search, 40 by default): with many near-equal
    # memories (a drill's rows, repeated notes) 40 misses the true nearest one.
    ef_search: int = 100

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Config:
        env = dict(os.environ if env is None else env)
        host, _, port = env.get("ACTR_LISTEN", "127.0.0.1:8100").rpartition(":")
        password_file = env.get("ACTR_DATABASE_PASSWORD_FILE") or (
            str(Path(env["CREDENTIALS_DIRECTORY"]) / "db-password")
            if env.get("CREDENTIALS_DIRECTORY")
            else ""
        )
        password = Path(password_file).read_text().strip() if password_file else None
        token_file = env.get("ACTR_API_TOKEN_FILE") or (
            str(Path(env["CREDENTIALS_DIRECTORY"]) / "api-token")
            if env.get("CREDENTIALS_DIRECTORY")
            else ""
        )
        token = Path(token_file).read_text().strip() if token_file else None
        threshold = env.get("ACTR_THRESHOLD", "").strip()
        return cls(
            listen_host=host or "127.0.0.1",
            listen_port=int(port),
            database=env.get("ACTR_DATABASE", "dbname=memory_store user=actr_engine"),
            password=password,
            decay=float(env.get("ACTR_DECAY", "0.5")),
            mismatch_penalty=float(env.get("ACTR_MISMATCH_PENALTY", "1.0")),
            threshold=float(threshold) if threshold else None,
            candidates=int(env.get("ACTR_CANDIDATES", "20")),
            embedder_url=env.get("ACTR_EMBEDDER_URL", "").strip() or None,
            embedder_model=env.get("ACTR_EMBEDDER_MODEL", "").strip(),
            api_token=token or None,
            max_body=int(env.get("ACTR_MAX_BODY", str(1024 * 1024))),
            client_timeout=float(env.get("ACTR_CLIENT_TIMEOUT", "10")),
            ef_search=int(env.get("ACTR_EF_SEARCH", "100")),
        )


class BadRequest(ValueError):
    pass


class Refused(Exception):
    """A request turned away before its body is read: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def check_request(headers: Any, token: str | None, max_body: int) -> int:
    """The body length of a state-changing request that may be read, or :class:`Refused`.

    The token is compared in constant time; the length is checked before any byte of the body
    is read, so a huge body costs the engine nothing.
    """
    given = headers.get("Authorization") or ""
    if token is None or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Refused(401, "a valid bearer token is needed", {"WWW-Authenticate": "Bearer"})
    length_text = headers.get("Content-Length")
    if length_text is None:
        raise Refused(411, "Content-Length is needed")
    try:
        length = int(length_text)
    except ValueError:
        raise Refused(400, "Content-Length is not a number") from None
    if not 0 <= length <= max_body:
        raise Refused(413, f"the body must be at most {max_body} bytes")
    return length


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0
        self.deferred = 0

    def embedding_deferred(self) -> None:
        with self.lock:
            self.deferred += 1

    def request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1

    def retrieval(self, seconds: float) -> None:
        with self.lock:
            self.count += 1
            self.total += seconds
            for index, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[index] += 1

    def text(self) -> str:
        with self.lock:
            lines = [
                "# HELP actr_engine_requests_total HTTP requests by path and status.",
                "# TYPE actr_engine_requests_total counter",
            ]
            for (path, status), value in sorted(self.requests.items()):
                lines.append(
                    f'actr_engine_requests_total{{path="{path}",status="{status}"}} {value}'
                )
            lines += [
                "# HELP actr_engine_retrieval_seconds Time to answer a retrieval.",
                "# TYPE actr_engine_retrieval_seconds histogram",
            ]
            for bound, value in zip(BUCKETS, self.buckets, strict=True):
                lines.append(f'actr_engine_retrieval_seconds_bucket{{le="{bound}"}} {value}')
            lines.append(f'actr_engine_retrieval_seconds_bucket{{le="+Inf"}} {self.count}')
            lines.append(f"actr_engine_retrieval_seconds_sum {self.total}")
            lines.append(f"actr_engine_retrieval_seconds_count {self.count}")
            lines += [
                "# HELP actr_engine_embeddings_deferred_total Memories stored without their"
                " embedding because the embedding server did not answer (the indexer embeds them).",
                "# TYPE actr_engine_embeddings_deferred_total counter",
                f"actr_engine_embeddings_deferred_total {self.deferred}",
            ]
        return "\n".join(lines) + "\n"


def vector_text(values: Any) -> str:
    if not isinstance(values, list) or not values:
        raise BadRequest("embedding must be a non-empty list of numbers")
    try:
        return "[" + ",".join(repr(float(v)) for v in values) + "]"
    except (TypeError, ValueError):
        raise BadRequest("embedding must be a non-empty list of numbers") from None


class Engine:
    """The memory operations, one database connection per thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.local = threading.local()
        self.metrics = Metrics()
        # Open connections kept between requests: each HTTP connection gets its own thread,
        # and a new database login (SCRAM) per request would cost more than the query.
        self.idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()

    def connection(self) -> psycopg.Connection:
        """The connection of the current request (taken from the idle ones, or a new one)."""
        conn = getattr(self.local, "conn", None)
        while conn is None or conn.closed:
            try:
                conn = self.idle.get_nowait()
            except queue.Empty:
                # UTF-8 whatever the database's encoding (a SQL_ASCII cluster gives bytes).
                conn = psycopg.connect(
                    self.config.database,
                    password=self.config.password,
                    autocommit=True,
                    client_encoding="utf8",
                )
                conn.execute(f"SET hnsw.ef_search = {int(self.config.ef_search)}")
            self.local.conn = conn
        return conn

    def release(self) -> None:
        """Hand the request's connection back to the idle ones."""
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None and not conn.closed and self.idle.qsize() < 16:
            self.idle.put(conn)
        elif conn is not None:
            conn.close()

    def healthy(self) -> bool:
        try:
            self.connection().execute("SELECT 1").fetchone()
            return True
        except psycopg.Error:
            conn, self.local.conn = self.local.conn, None
            if conn is not None:
                conn.close()
            return False

    def embed(self, text: str) -> tuple[list[float], str]:
        """The text's embedding and the model that made it (the server's answer names it)."""
        if not self.config.embedder_url:
            raise BadRequest("no embedding given and no embedding server configured")
        request_body: dict[str, Any] = {"input": text}
        if self.config.embedder_model:  # else the server's own model
            request_body["model"] = self.config.embedder_model
        body = json.dumps(request_body).encode()
        request = urllib.request.Request(
            self.config.embedder_url, body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        model = answer.get("model") or self.config.embedder_model or "embedding-server"
        return answer["data"][0]["embedding"], model

    def store(self, payload: dict[str, Any]) -> int:
        content = payload.get("content")
        if not isinstance(content, str) or not content:
            raise BadRequest("content must be a non-empty string")
        metadata = payload.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise BadRequest("metadata must be an object")
        embedding = payload.get("embedding")
        model = payload.get("embedding_model") or ("caller" if embedding else None)
        if embedding is None and self.config.embedder_url:
            try:
                embedding, model = self.embed(content)
            except OSError as error:
                # The memory matters more than its embedding now: keep it; the vector indexer
                # embeds it (WHERE embedding IS NULL) once the server answers again.
                log.warning("embedding server: %s; memory stored, the indexer embeds it", error)
                self.metrics.embedding_deferred()
        vector = vector_text(embedding) if embedding is not None else None
        conn = self.connection()
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO memory_chunk (content, metadata, embedding, embedding_model,"
                " embedded_at) VALUES (%s, %s::jsonb, %s::vector, %s,"
                " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END) RETURNING id",
                (content, json.dumps(metadata), vector, model, vector),
            ).fetchone()
            conn.execute("INSERT INTO memory_access (chunk_id) VALUES (%s)", (row[0],))
        return int(row[0])

    def retrieve(self, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        embedding = payload.get("embedding")
        if embedding is None:
            cue = payload.get("cue")
            if not isinstance(cue, str) or not cue:
                raise BadRequest("give a cue (text) or its embedding")
            embedding, _ = self.embed(cue)
        limit = payload.get("limit", 1)
        if not isinstance(limit, int) or not 1 <= limit <= self.config.candidates:
            raise BadRequest(f"limit must be a whole number from 1 to {self.config.candidates}")
        threshold = payload.get("threshold", self.config.threshold)
        conn = self.connection()
        query = CANDIDATES_SQL.format(limit=self.config.candidates)
        rows = conn.execute(query, {"q": vector_text(embedding)}).fetchall()  # type: ignore[arg-type]
        by_id = {row[0]: row for row in rows}
        best = rank(
            ((row[0], float(row[3]), row[4]) for row in rows),
            decay=self.config.decay,
            mismatch_penalty=self.config.mismatch_penalty,
            threshold=threshold,
            limit=limit,
        )
        elapsed = time.perf_counter() - started
        self.metrics.retrieval(elapsed)
        return {
            "chunks": [
                {
                    "id": chunk_id,
                    "content": by_id[chunk_id][1],
                    "metadata": by_id[chunk_id][2],
                    "activation": value,
                    "base_level": base,
                    "similarity": similarity,
                }
                for chunk_id, value, base, similarity in best
            ],
            "elapsed_ms": round(elapsed * 1000, 3),
        }

    def record_access(self, answer: dict[str, Any]) -> None:
        """Record the retrieved chunks as accessed (after the reply has gone out).

        Without waiting for the commit's flush (synchronous_commit off for this statement's
        transaction): an access record is a statistic of use; a power cut may lose the last
        fraction of a second of them, never the store's consistency.
        """
        ids = [chunk["id"] for chunk in answer["chunks"]]
        if ids:
            conn = self.connection()
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")
                conn.execute(
                    "INSERT INTO memory_access (chunk_id) SELECT unnest(%s::bigint[])", (ids,)
                )


def handler_for(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "actr-engine/1.0"
        # Every read and write on the connection: a client that stalls is cut off.
        timeout = engine.config.client_timeout

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def reply(
            self,
            status: int,
            body: Any,
            content_type: str = "application/json",
            headers: dict[str, str] | None = None,
        ) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            engine.metrics.request(self.path.split("?")[0], status)

        def do_GET(self) -> None:
            try:
                self.get()
            finally:
                engine.release()

        def do_POST(self) -> None:
            try:
                self.post()
            finally:
                engine.release()

        def get(self) -> None:
            if self.path == "/health":
                if engine.healthy():
                    self.reply(200, {"status": "ok"})
                else:
                    self.reply(503, {"status": "memory store unreachable"})
            elif self.path == "/metrics":
                self.reply(200, engine.metrics.text(), "text/plain; version=0.0.4")
            else:
                self.reply(404, {"error": "not found"})

        def read_body(self) -> bytes | None:
            """The request's body, or None once the request was refused (and answered)."""
            try:
                length = check_request(
                    self.headers, engine.config.api_token, engine.config.max_body
                )
            except Refused as refused:
                self.close_connection = True  # the unread body must not be taken as a request
                self.reply(refused.status, {"error": str(refused)}, headers=refused.headers)
                return None
            # The whole body within the client timeout, not only each read: a client that
            # trickles a byte at a time would otherwise hold its thread for hours.
            deadline = time.monotonic() + engine.config.client_timeout
            parts: list[bytes] = []
            remaining = length
            try:
                while remaining > 0 and time.monotonic() < deadline:
                    part = self.rfile.read1(min(remaining, 65536))
                    if not part:
                        break
                    parts.append(part)
                    remaining -= len(part)
            except TimeoutError:
                pass
            if remaining > 0:
                self.close_connection = True
                self.reply(408, {"error": "the body came too slowly"})
                return None
            return b"".join(parts)

        def post(self) -> None:
            body = self.read_body()
            if body is None:
                return
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise BadRequest("the body must be a JSON object")
                if self.path == "/chunks":
                    self.reply(201, {"id": engine.store(payload)})
                elif self.path == "/retrieve":
                    answer = engine.retrieve(payload)
                    self.reply(200, answer)
                    engine.record_access(answer)
                else:
                    self.reply(404, {"error": "not found"})
            except (BadRequest, json.JSONDecodeError) as error:
                self.reply(400, {"error": str(error)})
            except psycopg.Error as error:
                conn, engine.local.conn = engine.local.conn, None
                if conn is not None:
                    conn.close()
                log.error("memory store: %s", error)
                self.reply(503, {"error": "memory store error"})
            except OSError as error:
                log.error("embedding server: %s", error)
                self.reply(502, {"error": f"embedding server: {error}"})

    return Handler


def main() -> None:
    logging.basicConfig(level=os.environ.get("ACTR_LOG_LEVEL", "INFO"), format="%(message)s")
    config = Config.from_environment()
    if config.api_token is None:
        log.error("actr-engine: no API token (credential api-token or ACTR_API_TOKEN_FILE)")
        sys.exit(2)
    engine = Engine(config)
    server = ThreadingHTTPServer((config.listen_host, config.listen_port), handler_for(engine))
    server.daemon_threads = True
    log.info(
        "actr-engine listening on %s:%d (decay %s, mismatch penalty %s, %d candidates,"
        " embedder %s)",
        config.listen_host,
        config.listen_port,
        config.decay,
        config.mismatch_penalty,
        config.candidates,
        config.embedder_url or "none: callers give embeddings",
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
