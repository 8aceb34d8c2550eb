"""The document ingester (files/embedder/homelab_embedder/ingest.py, inbox.py) on a real inbox
directory under the kernel's inotify: idempotency, replacement in one transaction, removal,
partial writes, failures and retries.

Test doubles: ``ConnectionDouble`` stands in for the psycopg connection to the memory store: it
keeps ``memory_chunk`` and ``memory_access`` rows in memory and answers the ingester's own
statements (recognised by identity, so a new statement fails loudly), with transactions that
roll back on error and a log of what each commit left visible; ``EmbeddingDouble`` stands in
for the embedding server (fixed vectors, can be made to fail). ``count_double`` stands in for
the model's tokenizer (words and punctuation).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "files" / "embedder"))

from homelab_embedder import documents, ingest
from homelab_embedder.inbox import Inbox
from homelab_embedder.inotify import Inotify

from tests.fixtures.pdf import minimal_pdf

SETTLE = 0.3
ORIGIN = "embedder"


def count_double(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


class ConnectionLostDouble(Exception):
    """What the double raises for an injected failure (as psycopg raises OperationalError)."""


class CursorDouble:
    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int = 0) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


class ConnectionDouble:
    """The memory store's two tables in memory, for the ingester's statements only."""

    def __init__(self) -> None:
        self.chunks: dict[int, dict[str, Any]] = {}
        self.access: list[int] = []
        self.next_id = 1
        self.statements: list[str] = []
        self.commits: list[frozenset[int]] = []  # the chunk ids visible after each commit
        self.fail_on: str | None = None  # a statement that raises once
        self.closed = False
        self._in_transaction = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        saved = ({k: dict(v) for k, v in self.chunks.items()}, list(self.access), self.next_id)
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self.chunks, self.access, self.next_id = saved
            raise
        finally:
            self._in_transaction = False
        self.commits.append(frozenset(self.chunks))

    def close(self) -> None:
        self.closed = True

    def _documents(self, origin: str, path: str | None = None) -> list[int]:
        return [
            i
            for i, row in self.chunks.items()
            if row["metadata"].get("source_kind") == "document"
            and row["metadata"].get("origin") == origin
            and (path is None or row["metadata"].get("path") == path)
        ]

    def execute(self, sql: str, params: tuple[Any, ...]) -> CursorDouble:
        self.statements.append(sql)
        if sql is self.fail_on:
            self.fail_on = None
            raise ConnectionLostDouble("server closed the connection unexpectedly")
        if sql is ingest.LOCK_SOURCE:
            assert self._in_transaction
            return CursorDouble([])
        if sql is ingest.KNOWN:
            (origin,) = params
            by_path: dict[str, set[str]] = {}
            for i in self._documents(origin):
                meta = self.chunks[i]["metadata"]
                by_path.setdefault(meta["path"], set()).add(meta["sha256"])
            return CursorDouble([(p, sorted(s)) for p, s in by_path.items()])
        if sql is ingest.CURRENT:
            shas = {self.chunks[i]["metadata"]["sha256"] for i in self._documents(*params)}
            return CursorDouble([(s,) for s in shas])
        if sql is ingest.DELETE_SOURCE:
            assert self._in_transaction
            gone = self._documents(*params)
            for i in gone:
                del self.chunks[i]
            self.access = [c for c in self.access if c not in gone]  # ON DELETE CASCADE
            return CursorDouble([], len(gone))
        if sql is ingest.INSERT_CHUNKS:
            assert self._in_transaction
            model, contents, metadata, vectors = params
            ids = []
            for content, meta, vector in zip(contents, metadata, vectors, strict=True):
                self.chunks[self.next_id] = {
                    "content": content,
                    "metadata": json.loads(meta),
                    "embedding": vector,
                    "model": model,
                }
                ids.append((self.next_id,))
                self.next_id += 1
            return CursorDouble(ids)
        if sql is ingest.FIRST_ACCESS:
            assert self._in_transaction
            (ids,) = params
            assert all(i in self.chunks for i in ids)
            self.access += ids
            return CursorDouble([], len(ids))
        raise AssertionError(f"the double does not know this statement: {sql}")

    def rows_of(self, path: str) -> list[dict[str, Any]]:
        return [self.chunks[i] for i in sorted(self._documents(ORIGIN, path))]


class EmbeddingDouble:
    """Answers with a fixed 4-dimension vector per text, or fails while ``down``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.down = False

    def embed(self, texts: list[str]) -> tuple[str, list[str]]:
        if self.down:
            raise ingest.Transient("embedding", "connection refused (double)")
        self.calls.append(list(texts))
        return "all-MiniLM-L6-v2 (double)", ["[0.5,0.5,0.5,0.5]" for _ in texts]


class Harness:
    def __init__(self, root: Path, state: Path, db: ConnectionDouble | None = None) -> None:
        self.root = root
        self.db = db or ConnectionDouble()
        self.embedder = EmbeddingDouble()
        self.metrics = ingest.Metrics()
        self.watcher = Inotify()
        self.inbox = Inbox(root, self.watcher, settle=SETTLE, writer_quiet=3.0)
        self.connects = 0

        def connect() -> ConnectionDouble:
            self.connects += 1
            self.db.closed = False
            return self.db

        self.ingester = ingest.Ingester(
            self.inbox,
            ingest.Store(connect, ORIGIN),
            self.embedder,  # type: ignore[arg-type]
            count_double,
            documents.Sizes(max_tokens=40, overlap_tokens=8, min_tokens=10),
            ingest.Limits(max_bytes=200_000, max_chunks=50, embed_batch=4),
            self.metrics,
            state,
        )
        self.inbox.start()
        self.state = {"next_rescan": time.monotonic() + 3600}

    def turn(self, seconds: float = 0.05) -> None:
        self.ingester.step(seconds, 3600, self.state)

    def until(self, done: Callable[[], bool], seconds: float = 5.0) -> float:
        """Turn until ``done()``; the seconds it took (fails after ``seconds``)."""
        start = time.monotonic()
        while not done():
            assert time.monotonic() - start < seconds, "timed out"
            self.turn()
        return time.monotonic() - start

    def idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.turn()

    def close(self) -> None:
        self.watcher.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "inbox"
    root.mkdir()
    (tmp_path / "state").mkdir()
    h = Harness(root, tmp_path / "state")
    yield h
    h.close()


def drop(root: Path, name: str, text: str) -> Path:
    """Copy-then-rename, as the docs ask: the document appears complete."""
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    partial.write_text(text)
    partial.rename(target)
    return target


DOC = "# Herons\n\nThe heron waits in the shallows at dawn.\n\nIt strikes fast at fish.\n"
LONG = "# Rivers\n\n" + " ".join(f"Sentence {i} about the river bank." for i in range(40))


def test_a_dropped_document_becomes_chunks_with_their_source(harness: Harness) -> None:
    drop(harness.root, "birds/heron.md", DOC)
    waited = harness.until(lambda: harness.db.rows_of("birds/heron.md"))
    assert waited < 2.0
    (row,) = harness.db.rows_of("birds/heron.md")
    sha = hashlib.sha256(DOC.encode()).hexdigest()
    assert row["metadata"] == {
        "source_kind": "document",
        "origin": ORIGIN,
        "path": "birds/heron.md",
        "sha256": sha,
        "format": "markdown",
        "chunk_index": 0,
        "chunk_count": 1,
        "heading": "Herons",
    }
    assert row["content"].startswith("Herons\n\nThe heron waits")
    assert row["embedding"] == "[0.5,0.5,0.5,0.5]" and "MiniLM" in row["model"]
    # Its creation is its first access, as actr-engine records stored memories.
    assert harness.db.access == list(harness.db.chunks)
    text = harness.metrics.text()
    assert 'document_ingest_documents_ingested_total{format="markdown"} 1' in text
    assert "document_ingest_chunks_written_total 1" in text
    assert "document_ingest_failed_documents 0" in text


def test_an_unchanged_file_changes_nothing_even_after_a_restart(
    harness: Harness, tmp_path: Path
) -> None:
    path = drop(harness.root, "rivers.md", LONG)
    harness.until(lambda: harness.db.rows_of("rivers.md"))
    ids = sorted(harness.db.chunks)
    assert len(ids) > 3
    writes = len(harness.db.commits)
    os.utime(path)  # touched: a new modification time, the same content
    harness.ingester.rescan(time.monotonic())
    harness.idle(SETTLE + 0.3)
    # A second process starts on the same store (a restart): it reads what is stored.
    again = Harness(harness.root, tmp_path / "state", db=harness.db)
    try:
        again.idle(SETTLE + 0.3)
    finally:
        again.close()
    assert sorted(harness.db.chunks) == ids
    assert len(harness.db.commits) == writes
    assert harness.metrics.unchanged >= 1 and again.metrics.unchanged == 1


def test_a_changed_file_replaces_its_chunks_in_one_transaction(harness: Harness) -> None:
    path = drop(harness.root, "rivers.md", LONG)
    harness.until(lambda: harness.db.rows_of("rivers.md"))
    old = frozenset(harness.db.chunks)
    new_text = LONG.replace("river bank", "estuary mud")
    path.write_text(new_text)  # in place: create/modify, then close
    new_sha = hashlib.sha256(new_text.encode()).hexdigest()
    harness.until(
        lambda: {r["metadata"]["sha256"] for r in harness.db.rows_of("rivers.md")} == {new_sha}
    )
    rows = harness.db.rows_of("rivers.md")
    assert all("estuary" in r["content"] for r in rows if "Sentence" in r["content"])
    assert [r["metadata"]["chunk_index"] for r in rows] == list(range(len(rows)))
    # Every commit left the old set or the new set visible: never both, never neither.
    new = frozenset(harness.db.chunks)
    assert not old & new
    assert [c for c in harness.db.commits if c not in (old, new)] == []
    assert "DELETE FROM memory_chunk" in ingest.DELETE_SOURCE
    assert harness.db.access == sorted(new)  # the old chunks' accesses went with them


def test_a_failed_write_rolls_back_and_is_retried(harness: Harness) -> None:
    path = drop(harness.root, "rivers.md", LONG)
    harness.until(lambda: harness.db.rows_of("rivers.md"))
    old = frozenset(harness.db.chunks)
    harness.db.fail_on = ingest.FIRST_ACCESS  # the connection drops mid-transaction
    path.write_text(LONG + " One more sentence.")
    harness.until(lambda: harness.db.fail_on is None)
    assert frozenset(harness.db.chunks) == old  # rolled back: the old version stands
    assert harness.metrics.failures == {"database": 1}
    assert harness.metrics.failed_documents == 1
    harness.until(lambda: frozenset(harness.db.chunks) != old)  # retried after the backoff
    assert harness.connects == 2  # reconnected
    assert harness.metrics.failed_documents == 0


def test_a_deleted_file_loses_its_chunks_and_only_those(harness: Harness) -> None:
    # Another client's memory that mentions the same path, and another embedder's document.
    harness.db.chunks[900] = {"content": "x", "metadata": {"path": "heron.md"}}
    harness.db.chunks[901] = {
        "content": "y",
        "metadata": {"source_kind": "document", "origin": "other", "path": "heron.md"},
    }
    path = drop(harness.root, "heron.md", DOC)
    harness.until(lambda: harness.db.rows_of("heron.md"))
    path.unlink()
    harness.until(lambda: not harness.db.rows_of("heron.md"))
    assert sorted(harness.db.chunks) == [900, 901]
    assert harness.metrics.removed == 1
    # The statements themselves say whose rows they touch (the store's row-level security
    # enforces the same for the role).
    for sql in (ingest.DELETE_SOURCE, ingest.CURRENT, ingest.KNOWN):
        assert "metadata->>'source_kind' = 'document'" in sql
        assert "metadata->>'origin' = %s" in sql


def test_a_file_being_written_waits_for_its_close(harness: Harness) -> None:
    target = harness.root / "slow.md"
    with open(target, "w") as writer:  # a slow copy: written in parts, closed at the end
        writer.write("# Slow\n\nThe first half of the document arrives. ")
        writer.flush()
        harness.idle(SETTLE * 3)  # longer than the settle time: still open, still waiting
        assert harness.db.rows_of("slow.md") == []
        assert harness.inbox.entries["slow.md"].writing
        writer.write("The second half arrives much later.\n")
        writer.flush()
        harness.idle(SETTLE)
        assert harness.db.rows_of("slow.md") == []
    waited = harness.until(lambda: harness.db.rows_of("slow.md"), seconds=2)
    assert waited < 1.0  # the close is the signal: no settle wait after it
    (row,) = harness.db.rows_of("slow.md")
    assert row["content"].endswith("The second half arrives much later.")


def test_temporary_and_hidden_names_are_not_documents_until_renamed(harness: Harness) -> None:
    for name in (".draft.md", "report.md.part", "notes.txt~", "page.html.crdownload", "a.jpg"):
        (harness.root / name).write_text("The heron waits.\n")
    harness.idle(SETTLE * 2)
    assert harness.db.chunks == {}
    (harness.root / "report.md.part").rename(harness.root / "report.md")
    harness.until(lambda: harness.db.rows_of("report.md"))
    assert len(harness.db.chunks) == 1


def test_a_file_found_by_a_scan_waits_until_it_settles(harness: Harness) -> None:
    harness.watcher.close()  # no events: only the scan sees it
    harness.watcher = harness.inbox.watcher = Inotify()
    (harness.root / "found.md").write_text(DOC)
    now, wall = time.monotonic(), time.time()
    harness.inbox.entries.clear()
    harness.inbox.found("found.md", now=now, wall=wall)
    assert harness.inbox.take_due(now) == []
    assert harness.inbox.entries["found.md"].due == pytest.approx(now + SETTLE, abs=0.05)
    assert harness.inbox.take_due(now + SETTLE + 0.05) == ["found.md"]


def test_a_file_changing_while_read_is_looked_at_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = harness.root / "grows.md"
    target.write_text(DOC)
    real_fstat = os.fstat
    calls = []

    def fstat_while_a_writer_appends(fd: int) -> os.stat_result:
        calls.append(fd)
        if len(calls) == 2:  # after the read: the writer appended meanwhile
            with open(target, "a") as writer:
                writer.write("More text.\n")
        return real_fstat(fd)

    monkeypatch.setattr(ingest.os, "fstat", fstat_while_a_writer_appends)
    harness.ingester.load_known()
    harness.ingester.process("grows.md", time.monotonic())
    assert harness.db.chunks == {}
    assert "grows.md" in harness.inbox.entries  # looked at again once it settles
    monkeypatch.setattr(ingest.os, "fstat", real_fstat)
    harness.until(lambda: harness.db.rows_of("grows.md"))
    assert harness.db.rows_of("grows.md")[0]["content"].endswith("More text.")


def test_subdirectories_are_watched_and_a_moved_away_directory_is_removed(
    harness: Harness, tmp_path: Path
) -> None:
    (harness.root / "papers").mkdir()
    drop(harness.root, "papers/one.md", DOC)
    drop(harness.root, "papers/deep/two.txt", "Two paragraphs.\n\nOf plain text.\n")
    harness.until(lambda: len(harness.db.chunks) == 2)
    (harness.root / "papers").rename(tmp_path / "elsewhere")
    harness.until(lambda: not harness.db.chunks)
    assert harness.metrics.removed == 2


def test_symbolic_links_are_not_followed(harness: Harness, tmp_path: Path) -> None:
    secret = tmp_path / "credential.txt"
    secret.write_text("a database password\n")
    (harness.root / "leak.txt").symlink_to(secret)
    harness.ingester.rescan(time.monotonic())
    harness.idle(SETTLE * 2)
    assert harness.db.chunks == {}


def test_an_unreadable_pdf_fails_until_it_changes_and_keeps_no_retry_loop(
    harness: Harness,
) -> None:
    path = drop(harness.root, "paper.pdf", "%PDF-1.4\nnot really a PDF")
    harness.until(lambda: harness.metrics.failures.get("unreadable") == 1)
    assert harness.metrics.failed_documents == 1
    harness.ingester.rescan(time.monotonic())
    harness.idle(SETTLE * 2)
    assert harness.metrics.failures == {"unreadable": 1}  # not parsed again: unchanged
    text = harness.metrics.text()
    assert 'document_ingest_failures_total{reason="unreadable"} 1' in text
    assert "document_ingest_failed_documents 1" in text
    path.write_bytes(minimal_pdf([["The heron waits in the shallows."]]))
    harness.until(lambda: harness.db.rows_of("paper.pdf"))
    assert harness.db.rows_of("paper.pdf")[0]["metadata"]["format"] == "pdf"
    assert harness.metrics.failed_documents == 0


def test_limits_fail_a_document_with_its_reason(harness: Harness) -> None:
    drop(harness.root, "huge.txt", "word " * 50_000)  # 250 kB: over max_bytes
    drop(harness.root, "many.txt", "\n\n".join(f"Paragraph {i}. " * 8 for i in range(80)))
    (harness.root / "scan.pdf").write_bytes(minimal_pdf([[]]))  # a page without text
    drop(harness.root, "empty.txt", "\n")  # an empty text file is no failure
    harness.until(lambda: len(harness.metrics.failures) == 3)
    assert harness.metrics.failures == {"too_large": 1, "too_many_chunks": 1, "no_text": 1}
    assert harness.db.chunks == {}
    harness.until(lambda: "empty.txt" in harness.ingester.seen)
    assert harness.ingester.seen["empty.txt"].outcome == "empty"
    assert harness.metrics.failed_documents == 3


def test_the_embedding_server_away_delays_the_document_without_losing_it(
    harness: Harness,
) -> None:
    harness.embedder.down = True
    drop(harness.root, "heron.md", DOC)
    harness.until(lambda: harness.metrics.failures.get("embedding", 0) >= 1)
    assert harness.metrics.failed_documents == 1 and not harness.metrics.embedding_ok
    harness.embedder.down = False
    harness.until(lambda: harness.db.rows_of("heron.md"))
    assert harness.metrics.embedding_ok and harness.metrics.failed_documents == 0


def test_a_document_that_stopped_the_process_is_skipped_until_it_changes(
    harness: Harness, tmp_path: Path
) -> None:
    path = drop(harness.root, "bomb.md", DOC)
    sha = hashlib.sha256(DOC.encode()).hexdigest()
    # What a process killed while parsing leaves behind (out of memory, the watchdog).
    (tmp_path / "state" / "parsing.json").write_text(json.dumps({"path": "bomb.md", "sha256": sha}))
    harness.db.chunks.clear()
    restarted = Harness(harness.root, tmp_path / "state", db=harness.db)
    try:
        restarted.ingester.rescan(time.monotonic())
        restarted.until(lambda: restarted.metrics.failures.get("crashed") == 1)
        assert not (tmp_path / "state" / "parsing.json").exists()
        assert restarted.db.chunks == {}
        path.write_text(DOC + "\nFixed.\n")
        restarted.until(lambda: restarted.db.rows_of("bomb.md"))
    finally:
        restarted.close()


def test_a_queue_overflow_rescans_the_inbox(harness: Harness) -> None:
    harness.watcher.close()  # events lost, as when the kernel's queue overflows
    harness.watcher = harness.inbox.watcher = Inotify()
    (harness.root / "missed.md").write_text(DOC)
    os.utime(harness.root / "missed.md", (time.time() - 10, time.time() - 10))
    harness.inbox.overflowed = True
    harness.until(lambda: harness.db.rows_of("missed.md"))
    assert harness.metrics.overflows == 1


def test_the_embedding_client_speaks_the_servers_api() -> None:
    import base64
    import struct

    seen: list[dict[str, Any]] = []

    class EmbeddingServerDouble(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            data = [
                {"index": i, "embedding": base64.b64encode(struct.pack("<3f", i, 0.5, -1)).decode()}
                for i in reversed(range(len(body["input"])))
            ]
            answer = json.dumps({"model": "minilm", "data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EmbeddingServerDouble)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ingest.EmbeddingClient(f"http://127.0.0.1:{server.server_port}")
        model, vectors = client.embed(["a", "b"])
    finally:
        server.shutdown()
    assert seen == [{"input": ["a", "b"], "encoding_format": "base64"}]
    assert model == "minilm"
    assert vectors == ["[0,0.5,-1]", "[1,0.5,-1]"]  # in input order
    with pytest.raises(ingest.Transient) as refused:
        ingest.EmbeddingClient("http://127.0.0.1:9", timeout=1).embed(["a"])
    assert refused.value.stage == "embedding"
