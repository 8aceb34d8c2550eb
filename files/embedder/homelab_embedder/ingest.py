"""The document ingester: files dropped into the inbox become memories, findable at once.

Each document (Markdown, plain text, HTML, PDF: ``documents.py``) that lands in the inbox
(``inbox.py`` decides when a file is complete) is read, hashed (SHA-256), cut into chunks,
embedded through the local embedding server and written to the memory store with its
embeddings in the same INSERT, so actr-engine retrieves it at once. Every chunk's ``metadata``
names its source: ``source_kind`` "document", ``origin`` (this host), ``path`` (relative to
the inbox), ``sha256`` of the file, ``format``, ``chunk_index``, ``chunk_count`` and the
``heading`` of its section. Its creation is its first access (``memory_access``), as when
actr-engine stores a memory.

Idempotent: a file whose hash the store already holds for its path changes nothing. A changed
file's old chunks are deleted and the new ones inserted in one transaction (readers see the
old set or the new one, never both or neither); a deleted file's chunks are deleted. Deletes
name ``source_kind = 'document'`` and this origin, and the store's row-level security lets
this service's role see and touch no other rows.

A document that cannot be read (damaged or encrypted PDF, a PDF without text, over
``--max-bytes`` or ``--max-chunks``, not readable by the service) counts as failed until the
file changes; its earlier chunks, if any, stay.
An embedding server or database that does not answer is retried with backoff (0.5 s doubling
to 30 s) without end: the metrics show it. A document whose parsing killed the process (out
of memory, the watchdog) is not parsed again until it changes (a marker in the state
directory).

GET /health (200 while the memory store and the embedding server answered last) and
GET /metrics (Prometheus text) on ``--listen``.
"""

from __future__ import annotations

import argparse
import array
import base64
import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from homelab_embedder import documents, inotify, systemd
from homelab_embedder.inbox import Inbox, InboxGone, Signature, regular_file

LOG = logging.getLogger("document-ingest")

SOURCE_KIND = "document"
# One key per source: concurrent writers of one source take turns (two ingesters of one origin
# would otherwise both see the old version and both insert).
LOCK_SOURCE = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
KNOWN = """
SELECT metadata->>'path', array_agg(DISTINCT metadata->>'sha256')
  FROM memory_chunk
 WHERE metadata->>'source_kind' = 'document' AND metadata->>'origin' = %s
 GROUP BY 1
"""
CURRENT = """
SELECT DISTINCT metadata->>'sha256' FROM memory_chunk
 WHERE metadata->>'source_kind' = 'document' AND metadata->>'origin' = %s
   AND metadata->>'path' = %s
"""
DELETE_SOURCE = """
DELETE FROM memory_chunk
 WHERE metadata->>'source_kind' = 'document' AND metadata->>'origin' = %s
   AND metadata->>'path' = %s
"""
INSERT_CHUNKS = """
INSERT INTO memory_chunk (content, metadata, embedding, embedding_model, embedded_at)
SELECT c, m::jsonb, e::vector, %s, now()
  FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(c, m, e)
RETURNING id
"""
# Creation is the first access, as actr-engine records it for the memories it stores.
FIRST_ACCESS = "INSERT INTO memory_access (chunk_id) SELECT unnest(%s::bigint[])"
INSERT_BATCH = 256
RETRY_BASE, RETRY_MAX = 0.5, 30.0
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def alive() -> None:
    """Tell systemd's watchdog the service is turning (no-op outside systemd)."""
    systemd.notify("WATCHDOG=1")


class Transient(RuntimeError):
    """The embedding server or the database did not answer: try the document again later."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


# --- metrics --------------------------------------------------------------------------------


@dataclass
class Metrics:
    """The service's Prometheus figures (text format written here: no dependency)."""

    ingested: dict[str, int] = field(default_factory=dict)  # by format
    failures: dict[str, int] = field(default_factory=dict)  # by reason
    removed: int = 0
    unchanged: int = 0
    chunks: int = 0
    overflows: int = 0
    last_success: float = 0.0
    documents: int = 0
    failed_documents: int = 0
    pending: int = 0
    database_ok: bool = False
    embedding_ok: bool = True
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, seconds: float) -> None:
        with self.lock:
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.latency[i] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def failed(self, reason: str) -> None:
        with self.lock:
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def text(self) -> str:
        p = "document_ingest"
        with self.lock:
            lines = [
                f"# HELP {p}_documents_ingested_total Documents whose chunks were (re)written",
                f"# TYPE {p}_documents_ingested_total counter",
                *(
                    f'{p}_documents_ingested_total{{format="{f}"}} {n}'
                    for f, n in sorted(self.ingested.items())
                ),
                f"# HELP {p}_documents_removed_total Deleted files whose chunks were removed",
                f"# TYPE {p}_documents_removed_total counter",
                f"{p}_documents_removed_total {self.removed}",
                f"# HELP {p}_documents_unchanged_total Files looked at whose chunks were current",
                f"# TYPE {p}_documents_unchanged_total counter",
                f"{p}_documents_unchanged_total {self.unchanged}",
                f"# HELP {p}_chunks_written_total Chunks inserted",
                f"# TYPE {p}_chunks_written_total counter",
                f"{p}_chunks_written_total {self.chunks}",
                f"# HELP {p}_failures_total Failed attempts by reason",
                f"# TYPE {p}_failures_total counter",
                *(
                    f'{p}_failures_total{{reason="{r}"}} {n}'
                    for r, n in sorted(self.failures.items())
                ),
                f"# HELP {p}_queue_overflows_total inotify queue overflows (a full rescan each)",
                f"# TYPE {p}_queue_overflows_total counter",
                f"{p}_queue_overflows_total {self.overflows}",
                f"# HELP {p}_last_success_timestamp_seconds When a document was last written",
                f"# TYPE {p}_last_success_timestamp_seconds gauge",
                f"{p}_last_success_timestamp_seconds {self.last_success}",
                f"# HELP {p}_documents Documents of the inbox with chunks in the store",
                f"# TYPE {p}_documents gauge",
                f"{p}_documents {self.documents}",
                f"# HELP {p}_failed_documents Documents of the inbox whose version is not stored",
                f"# TYPE {p}_failed_documents gauge",
                f"{p}_failed_documents {self.failed_documents}",
                f"# HELP {p}_pending_files Files waiting to be looked at",
                f"# TYPE {p}_pending_files gauge",
                f"{p}_pending_files {self.pending}",
                f"# HELP {p}_database_connected 1 while the memory store answered last",
                f"# TYPE {p}_database_connected gauge",
                f"{p}_database_connected {int(self.database_ok)}",
                f"# HELP {p}_embedding_server_ok 1 when the last embedding call worked",
                f"# TYPE {p}_embedding_server_ok gauge",
                f"{p}_embedding_server_ok {int(self.embedding_ok)}",
                f"# HELP {p}_seconds Reading, chunking, embedding and committing a document",
                f"# TYPE {p}_seconds histogram",
                *(
                    f'{p}_seconds_bucket{{le="{bound}"}} {n}'
                    for bound, n in zip(LATENCY_BUCKETS, self.latency, strict=True)
                ),
                f'{p}_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                f"{p}_seconds_sum {self.latency_sum}",
                f"{p}_seconds_count {self.latency_count}",
            ]
        return "\n".join(lines) + "\n"


# --- the embedding server -------------------------------------------------------------------


class EmbeddingClient:
    """POST /v1/embeddings of the local server (base64 float32 answers, as the indexer)."""

    def __init__(self, url: str, model: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/") + "/v1/embeddings"
        self.model = model
        self.timeout = timeout

    def embed(self, texts: Sequence[str]) -> tuple[str, list[str]]:
        """The model's name and each text's vector as pgvector text ("[x,y,...]")."""
        body: dict[str, Any] = {"input": list(texts), "encoding_format": "base64"}
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
            data = sorted(answer["data"], key=lambda item: item["index"])
            vectors = [vector_text(item["embedding"]) for item in data]
            model = str(answer["model"])
        except urllib.error.HTTPError as error:
            raise Transient("embedding", f"{self.url}: HTTP {error.code}") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise Transient("embedding", f"{self.url}: {error!r}") from None
        if len(vectors) != len(texts):
            raise Transient("embedding", f"{self.url}: {len(vectors)} vectors for {len(texts)}")
        return model, vectors


def vector_text(encoded: str) -> str:
    """pgvector's text form of a base64 little-endian float32 vector."""
    values = array.array("f")
    values.frombytes(base64.b64decode(encoded))
    if sys.byteorder == "big":
        values.byteswap()
    return "[" + ",".join(f"{x:.7g}" for x in values) + "]"


# --- the memory store -----------------------------------------------------------------------


class Store:
    """The ingester's rows of ``memory_chunk``: read, replaced and removed per source.

    ``connect`` opens a connection with psycopg's interface (``execute`` returning a cursor,
    ``transaction()`` as a context manager, autocommit outside it).
    """

    def __init__(self, connect: Callable[[], Any], origin: str) -> None:
        self._connect = connect
        self.origin = origin
        self.conn: Any = None

    def _connection(self) -> Any:
        if self.conn is None or getattr(self.conn, "closed", False):
            try:
                self.conn = self._connect()
            except Exception as error:
                self.conn = None
                raise Transient("database", f"connect: {error}") from error
        return self.conn

    def _run(self, action: Callable[[Any], Any]) -> Any:
        conn = self._connection()
        try:
            return action(conn)
        except Transient:
            raise
        except Exception as error:
            # A lost connection or a refused statement: the next attempt reconnects.
            with contextlib.suppress(Exception):
                conn.close()
            self.conn = None
            raise Transient("database", str(error)) from error

    def known(self) -> dict[str, str]:
        """Path -> SHA-256 of every source of this origin in the store ("" when a path holds
        chunks of more than one version, which only a replace puts right)."""
        rows = self._run(lambda conn: conn.execute(KNOWN, (self.origin,)).fetchall())
        return {path: shas[0] if len(shas) == 1 else "" for path, shas in rows}

    def replace(
        self, path: str, sha256: str, rows: Sequence[tuple[str, str, str]], model: str
    ) -> bool:
        """Make the store hold ``rows`` (content, metadata JSON, vector) as the chunks of
        ``path``, in one transaction; False when it held this version already."""

        def work(conn: Any) -> bool:
            with conn.transaction():
                conn.execute(LOCK_SOURCE, (f"{self.origin}\n{path}",))
                current = {row[0] for row in conn.execute(CURRENT, (self.origin, path))}
                if current == {sha256}:
                    return False
                conn.execute(DELETE_SOURCE, (self.origin, path))
                for start in range(0, len(rows), INSERT_BATCH):
                    batch = rows[start : start + INSERT_BATCH]
                    contents, metadata, vectors = (
                        list(column) for column in zip(*batch, strict=True)
                    )
                    ids = conn.execute(
                        INSERT_CHUNKS, (model, contents, metadata, vectors)
                    ).fetchall()
                    conn.execute(FIRST_ACCESS, ([row[0] for row in ids],))
                    alive()
            return True

        return bool(self._run(work))

    def remove(self, path: str) -> int:
        """Delete the chunks of ``path``; how many there were."""

        def work(conn: Any) -> int:
            with conn.transaction():
                conn.execute(LOCK_SOURCE, (f"{self.origin}\n{path}",))
                return int(conn.execute(DELETE_SOURCE, (self.origin, path)).rowcount)

        return self._run(work)


# --- the ingester ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """The version of a file last looked at, and what came of it."""

    signature: Signature
    sha256: str
    outcome: str  # "stored", "empty" (no text) or "failed:<reason>"


@dataclass
class Limits:
    max_bytes: int = 64 * 1024**2
    max_chunks: int = 10000
    embed_batch: int = 64


class Ingester:
    def __init__(
        self,
        inbox: Inbox,
        store: Store,
        embedder: EmbeddingClient,
        count: documents.Count,
        sizes: documents.Sizes,
        limits: Limits,
        metrics: Metrics,
        state_dir: Path | None = None,
    ) -> None:
        self.inbox = inbox
        self.store = store
        self.embedder = embedder
        self.count = count
        self.sizes = sizes
        self.limits = limits
        self.metrics = metrics
        self.state_dir = state_dir
        self.known: dict[str, str] | None = None  # path -> sha256 in the store (None: unread)
        self.seen: dict[str, Version] = {}
        self.retrying: set[str] = set()
        self.retry_delay = RETRY_BASE
        self.quarantined = self._crashed_on()

    # --- crash marker -----------------------------------------------------------------------

    def _marker(self) -> Path | None:
        return self.state_dir / "parsing.json" if self.state_dir else None

    def _crashed_on(self) -> dict[str, str]:
        """The document whose parsing the last process did not survive, if any."""
        marker = self._marker()
        if marker is None or not marker.exists():
            return {}
        try:
            record = json.loads(marker.read_text())
            path, sha = str(record["path"]), str(record["sha256"])
        except (OSError, ValueError, KeyError) as error:
            LOG.warning("unreadable crash marker %s: %s", marker, error)
            return {}
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()
        LOG.error("%s (sha256 %s) stopped the last process while parsed: skipped", path, sha)
        return {path: sha}

    # --- the loop's parts -------------------------------------------------------------------

    def load_known(self) -> None:
        self.known = self.store.known()
        self.metrics.database_ok = True

    def refresh_known(self) -> None:
        """The store's view again (rows removed by hand are written again), when it answers."""
        try:
            self.load_known()
        except Transient as error:
            self.metrics.database_ok = False
            self.metrics.failed(error.stage)
            LOG.warning("memory store: %s", error)

    def rescan(self, now: float) -> None:
        """Schedule every document whose version differs from the one looked at (or from the
        store's), and every stored or seen path whose file is gone."""
        files = self.inbox.files()
        known = self.known or {}
        for rel, signature in files.items():
            version = self.seen.get(rel)
            if (
                version is None
                or version.signature != signature
                or (version.outcome == "stored" and known.get(rel) != version.sha256)
            ):
                self.inbox.found(rel, now=now)
        for rel in (set(known) | set(self.seen)) - set(files):
            self.inbox.look(rel, now)

    def directory_gone(self, directory: str, now: float) -> None:
        prefix = directory + "/"
        for rel in set(self.known or {}) | set(self.seen):
            if rel.startswith(prefix):
                self.inbox.look(rel, now)

    def process(self, rel: str, now: float) -> None:
        """Look at ``rel`` and bring the store in line with it; transient failures are
        scheduled again with backoff."""
        try:
            if self.known is None:
                self.load_known()
            self._process(rel)
            self.retrying.discard(rel)
            self.retry_delay = RETRY_BASE
            self.metrics.database_ok = True
        except Transient as error:
            self.metrics.failed(error.stage)
            if error.stage == "database":
                self.metrics.database_ok = False
            LOG.warning("%s: %s; again in %.1f s", rel, error, self.retry_delay)
            self.retrying.add(rel)
            self.inbox.look(rel, now + self.retry_delay)
            self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)
        self.update_gauges()

    def update_gauges(self) -> None:
        failed = {r for r, v in self.seen.items() if v.outcome.startswith("failed")}
        self.metrics.failed_documents = len(failed | self.retrying)
        self.metrics.documents = len(self.known or {})
        self.metrics.pending = self.inbox.pending()

    def _process(self, rel: str) -> None:
        try:
            opened = regular_file(self.inbox.root / rel)
        except PermissionError as error:
            try:
                st = (self.inbox.root / rel).stat(follow_symlinks=False)
            except OSError:
                self._gone(rel)
                return
            self._failed(rel, Signature.of(st), "", "permission", str(error))
            return
        except OSError as error:
            raise Transient("filesystem", f"{rel}: {error}") from error
        if opened is None:
            self._gone(rel)
            return
        fd, before = opened
        with os.fdopen(fd, "rb") as handle:
            signature = Signature.of(before)
            if before.st_size > self.limits.max_bytes:
                self._failed(rel, signature, "", "too_large", f"{before.st_size} bytes")
                return
            started = time.monotonic()
            data = handle.read(self.limits.max_bytes + 1)
            after = os.fstat(handle.fileno())
        if Signature.of(after) != signature or len(data) != before.st_size:
            LOG.info("%s changed while read: looked at again once it settles", rel)
            self.inbox.found(rel)
            return
        sha = hashlib.sha256(data).hexdigest()
        assert self.known is not None
        if self.known.get(rel) == sha:
            self.seen[rel] = Version(signature, sha, "stored")
            self.metrics.unchanged += 1
            return
        if self.quarantined.get(rel) == sha:
            self._failed(rel, signature, sha, "crashed", "it stopped the process before")
            return
        fmt = documents.format_of(rel) or "text"
        try:
            chunks = self._chunks(rel, sha, data, fmt)
        except documents.DocumentError as error:
            self._failed(rel, signature, sha, error.reason, str(error))
            return
        if len(chunks) > self.limits.max_chunks:
            self._failed(rel, signature, sha, "too_many_chunks", f"{len(chunks)} chunks")
            return
        self._store(rel, sha, fmt, chunks, signature)
        self.metrics.observe(time.monotonic() - started)

    def _chunks(self, rel: str, sha: str, data: bytes, fmt: str) -> list[documents.Chunk]:
        marker = self._marker()
        if marker is not None:
            marker.write_text(json.dumps({"path": rel, "sha256": sha}))
        try:
            blocks = documents.read(data, fmt, alive)
            chunks = documents.chunk(blocks, self.count, self.sizes)
        except documents.DocumentError:
            raise
        except Exception as error:  # a parser's own bug must not stop the service
            raise documents.DocumentError(
                "unreadable", f"{type(error).__name__}: {error}"
            ) from error
        finally:
            if marker is not None:
                with contextlib.suppress(OSError):
                    marker.unlink()
        if not chunks and fmt == "pdf":
            # An empty text file is just empty; a PDF without text is a scan nobody can find.
            raise documents.DocumentError("no_text", "no text layer (a scan: OCR it first)")
        return chunks

    def _store(
        self, rel: str, sha: str, fmt: str, chunks: list[documents.Chunk], signature: Signature
    ) -> None:
        model, vectors = "", []
        for start in range(0, len(chunks), self.limits.embed_batch):
            alive()
            batch = [c.text for c in chunks[start : start + self.limits.embed_batch]]
            try:
                model, more = self.embedder.embed(batch)
            except Transient:
                self.metrics.embedding_ok = False
                raise
            self.metrics.embedding_ok = True
            vectors += more
        rows = [
            (chunk.text, json.dumps(self.metadata(rel, sha, fmt, i, len(chunks), chunk)), vector)
            for i, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
        ]
        written = self.store.replace(rel, sha, rows, model)
        assert self.known is not None
        if chunks:
            self.known[rel] = sha
        else:
            self.known.pop(rel, None)
        self.seen[rel] = Version(signature, sha, "stored" if chunks else "empty")
        if written:
            with self.metrics.lock:
                self.metrics.ingested[fmt] = self.metrics.ingested.get(fmt, 0) + 1
                self.metrics.chunks += len(rows)
                self.metrics.last_success = time.time()
            LOG.info("%s: %d chunks stored (sha256 %s)", rel, len(rows), sha[:12])
        else:
            self.metrics.unchanged += 1

    def metadata(
        self, rel: str, sha: str, fmt: str, index: int, total: int, chunk: documents.Chunk
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "source_kind": SOURCE_KIND,
            "origin": self.store.origin,
            "path": rel,
            "sha256": sha,
            "format": fmt,
            "chunk_index": index,
            "chunk_count": total,
        }
        if chunk.heading:
            meta["heading"] = chunk.heading
        return meta

    def _gone(self, rel: str) -> None:
        assert self.known is not None
        self.seen.pop(rel, None)
        self.quarantined.pop(rel, None)
        if rel in self.known:
            removed = self.store.remove(rel)
            del self.known[rel]
            self.metrics.removed += 1
            self.metrics.last_success = time.time()
            LOG.info("%s: deleted, its %d chunks removed", rel, removed)

    def _failed(self, rel: str, signature: Signature, sha: str, reason: str, why: str) -> None:
        self.seen[rel] = Version(signature, sha, f"failed:{reason}")
        self.metrics.failed(reason)
        LOG.warning("%s: not ingested (%s): %s; its earlier chunks, if any, stay", rel, reason, why)

    # --- the loop ---------------------------------------------------------------------------

    def step(self, timeout: float, rescan_every: float, state: dict[str, float]) -> None:
        """One turn: wait for events (at most ``timeout``), handle them, look at what is due."""
        now = time.monotonic()
        due = self.inbox.next_due(now)
        wait = min(timeout, max(0.0, state["next_rescan"] - now))
        if due is not None:
            wait = min(wait, max(0.0, due - now))
        for event in self.inbox.watcher.read(wait):
            self.inbox.handle(event, time.monotonic())
        now = time.monotonic()
        if self.inbox.overflowed:
            self.inbox.overflowed = False
            self.metrics.overflows += 1
            LOG.warning("inotify queue overflowed: rescanning the inbox")
            state["next_rescan"] = now
        while self.inbox.gone_directories:
            self.directory_gone(self.inbox.gone_directories.pop(), now)
        if now >= state["next_rescan"]:
            self.refresh_known()
            self.rescan(now)
            state["next_rescan"] = now + rescan_every
        for rel in self.inbox.take_due(now):
            alive()
            self.process(rel, time.monotonic())
        self.update_gauges()

    def run(self, rescan_every: float) -> None:
        state = {"next_rescan": time.monotonic() + rescan_every}
        self.refresh_known()
        self.rescan(time.monotonic())
        systemd.notify("READY=1\nSTATUS=watching the inbox")
        while True:
            alive()
            self.step(1.0, rescan_every, state)


# --- the service ----------------------------------------------------------------------------


def serve_http(listen: str, metrics: Metrics) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, ctype, code = metrics.text().encode(), "text/plain; version=0.0.4", 200
            elif self.path == "/health":
                ok = metrics.database_ok and metrics.embedding_ok
                status = {
                    "status": "ok" if ok else "degraded",
                    "database": metrics.database_ok,
                    "embedding_server": metrics.embedding_ok,
                }
                body, ctype = json.dumps(status).encode(), "application/json"
                code = 200 if ok else 503
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


def credential(args_value: str | None, name: str) -> str:
    """A file named on the command line, else the systemd credential ``name``."""
    if args_value:
        return args_value
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory or not (Path(directory) / name).is_file():
        raise SystemExit(f"no --{name} and no systemd credential {name}")
    return str(Path(directory) / name)


def token_counter(model_dir: Path, max_tokens: int) -> documents.Count:
    """Word pieces of a text by the model's own tokenizer (no special tokens, no truncation);
    a chunk size the model's window cannot hold stops the service."""
    from tokenizers import Tokenizer

    from homelab_embedder.bert_onnx import model_settings

    window = model_settings(model_dir)["max_length"]  # as the embedding server reads it
    if max_tokens > int(window) - 2:
        raise SystemExit(
            f"--chunk-tokens {max_tokens}: the model's window is {window} tokens with [CLS] and"
            f" [SEP]; at most {int(window) - 2}"
        )
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def connector(args: argparse.Namespace, password: str) -> Callable[[], Any]:
    def connect() -> Any:
        import psycopg

        return psycopg.connect(
            host=args.db_host,
            port=args.db_port,
            dbname=args.db_name,
            user=args.db_user,
            password=password,
            autocommit=True,
            connect_timeout=5,
            application_name="document-ingest",
            # TLS, the server's certificate checked against the memory store's CA and name.
            sslmode=args.db_sslmode,
            sslrootcert=args.db_ca,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    return connect


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inbox", required=True, type=Path)
    parser.add_argument("--origin", required=True, help="this host's name in chunk metadata")
    parser.add_argument("--model-dir", required=True, type=Path, help="for its tokenizer")
    parser.add_argument("--db-host", required=True)
    parser.add_argument("--db-port", type=int, default=5432)
    parser.add_argument("--db-name", default="memory_store")
    parser.add_argument("--db-user", default="document_ingest")
    parser.add_argument("--password-file", help="default: the systemd credential db-password")
    parser.add_argument("--db-ca", help="the memory store's CA; default: the credential db-ca")
    parser.add_argument(
        "--db-sslmode", default="verify-full", choices=("verify-full", "verify-ca", "require")
    )
    parser.add_argument("--embed-url", default="http://127.0.0.1:8300")
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--overlap-tokens", type=int, default=32)
    parser.add_argument("--min-tokens", type=int, default=48)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--writer-quiet", type=float, default=30.0)
    parser.add_argument("--rescan-interval", type=float, default=60.0)
    parser.add_argument("--max-bytes", type=int, default=64 * 1024**2)
    parser.add_argument("--max-chunks", type=int, default=10000)
    parser.add_argument("--state-dir", type=Path, default=os.environ.get("STATE_DIRECTORY"))
    parser.add_argument("--listen", default="0.0.0.0:9311")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    args.db_ca = credential(args.db_ca, "db-ca")
    password = Path(credential(args.password_file, "db-password")).read_text().strip()
    sizes = documents.Sizes(args.chunk_tokens, args.overlap_tokens, args.min_tokens)
    count = token_counter(args.model_dir, sizes.max_tokens)
    if not args.inbox.is_dir():
        raise SystemExit(f"the inbox {args.inbox} is not a directory (or cannot be read)")
    metrics = Metrics()
    serve_http(args.listen, metrics)
    with inotify.Inotify() as watcher:
        inbox = Inbox(args.inbox, watcher, args.settle, args.writer_quiet)
        inbox.start()
        ingester = Ingester(
            inbox,
            Store(connector(args, password), args.origin),
            EmbeddingClient(args.embed_url),
            count,
            sizes,
            Limits(args.max_bytes, args.max_chunks),
            metrics,
            args.state_dir,
        )
        try:
            ingester.run(args.rescan_interval)
        except InboxGone as error:
            LOG.error("%s; exiting for systemd to restart", error)
            sys.exit(1)


if __name__ == "__main__":
    main()
