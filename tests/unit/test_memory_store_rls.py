"""The memory store's grants and row-level security, and the document ingester's statements, on
a real PostgreSQL: a scratch cluster of the controller's PostgreSQL server on a Unix socket.

The schema is the real template rendered by ``memory_store.render_schema``, with pgvector's
parts swapped for plain text (test double: the controller's PostgreSQL has no pgvector): the
column type ``vector(384)`` becomes ``text``, the dimension check and the HNSW index are left
out. Roles, grants, policies and indexes are the template's own, and so are the ingester's
statements (their ``::vector`` casts read as ``::text``), run through ``ingest.Store``.
Clients connect with pg8000 as the store's real roles (the scratch cluster trusts its socket).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg8000.dbapi
import pytest

from tasks.ageis_node.memory_store import CLIENT_ROLES, render_schema, scram_verifier

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "files" / "embedder"))

from homelab_embedder import ingest

PORT = 5432  # names the socket file in the cluster's own directory; no TCP


def _server_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    """A running scratch cluster; its directory (the socket's too), removed afterwards."""
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server (initdb) on this machine: install postgresql to run")
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="homelab-memory-store-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and no postgres user to run PostgreSQL as")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    pg_ctl = [*prefix, str(binaries / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*prefix, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*pg_ctl, "-w", "-l", str(base / "log"), "-o",
             f"-p {PORT} -k {base} -c listen_addresses='' -c fsync=off", "start"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        yield base
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def schema_sql() -> str:
    verifiers = {role: scram_verifier(f"{role}-password") for role in CLIENT_ROLES}
    verifiers["wal_receiver"] = scram_verifier("wal_receiver-password")
    sql = render_schema(384, verifiers)
    replaced = sql.replace("CREATE EXTENSION IF NOT EXISTS vector;\n", "")
    replaced = replaced.replace("embedding vector(384) NULL", "embedding text NULL")
    replaced = re.sub(r"-- A changed dimension.*?\$\$;\n", "", replaced, flags=re.S)
    replaced = re.sub(
        r"CREATE INDEX IF NOT EXISTS memory_chunk_embedding_hnsw\n.*?;\n", "", replaced, flags=re.S
    )
    assert replaced.count("ROW LEVEL SECURITY") == 2 and "vector(" not in replaced
    return replaced


def psql(cluster: Path, sql: str) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    binaries = _server_binaries()
    client = binaries / "psql" if binaries and (binaries / "psql").exists() else Path("psql")
    return subprocess.run(
        [*prefix, str(client), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(cluster),
         "-p", str(PORT), "-U", "postgres", "-d", "postgres", "-f", "-"],
        input=sql, capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def store_db(cluster: Path) -> Path:
    for _ in range(2):  # the schema is applied at every change: a second run must pass too
        result = psql(cluster, schema_sql())
        assert result.returncode == 0, result.stderr
    return cluster


@pytest.fixture(autouse=True)
def empty_store(store_db: Path) -> Iterator[None]:
    yield
    result = psql(store_db, "\\connect memory_store\nTRUNCATE memory_chunk, memory_access;\n")
    assert result.returncode == 0, result.stderr


class Pg8000Connection:
    """pg8000 with the part of psycopg's interface the ingester uses (``execute`` returning a
    cursor, ``transaction()``, autocommit outside it)."""

    def __init__(self, cluster: Path, user: str) -> None:
        self.conn = pg8000.dbapi.connect(
            user=user, unix_sock=str(cluster / f".s.PGSQL.{PORT}"), database="memory_store"
        )
        self.conn.autocommit = True
        self.closed = False
        self.after: dict[str, Any] = {}  # statement -> a hook run after it (a concurrent reader)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cursor = self.conn.cursor()
        cursor.execute(sql.replace("::vector", "::text"), params)
        if sql in self.after:
            self.after[sql]()
        return cursor

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        cursor = self.conn.cursor()
        cursor.execute("BEGIN")
        try:
            yield
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
        self.closed = True


def rows(origin: str, path: str, sha: str, n: int) -> list[tuple[str, str, str]]:
    return [
        (
            f"{path} chunk {i} of version {sha}",
            json.dumps(
                {
                    "source_kind": "document",
                    "origin": origin,
                    "path": path,
                    "sha256": sha,
                    "chunk_index": i,
                }
            ),
            f"[{i},0.5]",
        )
        for i in range(n)
    ]


def contents(conn: Pg8000Connection, where: str = "true") -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            f"SELECT content FROM memory_chunk WHERE {where} ORDER BY id"
        ).fetchall()
    ]


def test_the_ingester_replaces_and_removes_only_its_documents(store_db: Path) -> None:
    actr = Pg8000Connection(store_db, "actr_engine")
    actr.execute(
        "INSERT INTO memory_chunk (content, metadata) VALUES ('a conversation', %s::jsonb)",
        (json.dumps({"path": "heron.md"}),),
    )
    store = ingest.Store(lambda: Pg8000Connection(store_db, "document_ingest"), "embedder")
    assert store.replace("heron.md", "v1", rows("embedder", "heron.md", "v1", 3), "minilm")
    assert not store.replace("heron.md", "v1", rows("embedder", "heron.md", "v1", 3), "minilm")
    assert store.known() == {"heron.md": "v1"}
    # Each chunk was accessed once: at its creation, as actr-engine records its own.
    accessed = actr.execute(
        "SELECT count(*) FROM memory_access a JOIN memory_chunk c ON c.id = a.chunk_id"
        " WHERE c.metadata->>'source_kind' = 'document'"
    ).fetchall()
    assert [list(row) for row in accessed] == [[3]]
    assert store.replace("heron.md", "v2", rows("embedder", "heron.md", "v2", 2), "minilm")
    assert contents(actr, "metadata->>'source_kind' = 'document'") == [
        "heron.md chunk 0 of version v2",
        "heron.md chunk 1 of version v2",
    ]
    assert store.remove("heron.md") == 2
    assert contents(actr) == ["a conversation"]  # another client's memory of the same path


def test_row_level_security_keeps_the_ingester_to_document_rows(store_db: Path) -> None:
    actr = Pg8000Connection(store_db, "actr_engine")
    ((conversation,),) = actr.execute(
        "INSERT INTO memory_chunk (content, metadata) VALUES ('a conversation', '{}'::jsonb)"
        " RETURNING id"
    ).fetchall()
    store = ingest.Store(lambda: Pg8000Connection(store_db, "document_ingest"), "embedder")
    store.replace("heron.md", "v1", rows("embedder", "heron.md", "v1", 1), "minilm")
    refused = {
        "a row that is not a document": "INSERT INTO memory_chunk (content, metadata)"
        " VALUES ('forged', '{}'::jsonb)",
        "changing a row": "UPDATE memory_chunk SET content = 'changed'",
        "reading accesses": "SELECT count(*) FROM memory_access",
        "an access of another client's memory": "INSERT INTO memory_access (chunk_id)"
        f" VALUES ({conversation})",
    }
    for what, sql in refused.items():
        ingester = Pg8000Connection(store_db, "document_ingest")
        with pytest.raises(pg8000.dbapi.DatabaseError) as error:
            ingester.execute(sql)
        assert error.value.args[0]["C"] == "42501", what  # insufficient privilege / policy
        ingester.close()
    ingester = Pg8000Connection(store_db, "document_ingest")
    assert contents(ingester) == ["heron.md chunk 0 of version v1"]  # it sees its rows only
    assert ingester.execute("DELETE FROM memory_chunk WHERE true").rowcount == 1
    assert contents(actr) == ["a conversation"]
    # The other clients keep seeing and changing every row.
    indexer = Pg8000Connection(store_db, "vector_indexer")
    assert indexer.execute("UPDATE memory_chunk SET embedding = '[1]'").rowcount == 1
    assert actr.execute("DELETE FROM memory_chunk").rowcount == 1


def test_a_replace_shows_readers_the_old_version_until_it_commits(store_db: Path) -> None:
    reader = Pg8000Connection(store_db, "actr_engine")
    store = ingest.Store(lambda: writer, "embedder")
    writer = Pg8000Connection(store_db, "document_ingest")
    store.replace("tides.md", "v1", rows("embedder", "tides.md", "v1", 2), "minilm")
    seen_inside: list[list[str]] = []
    where = "metadata->>'path' = 'tides.md'"
    # Read from another connection right after the delete and after the insert.
    writer.after = {
        ingest.DELETE_SOURCE: lambda: seen_inside.append(contents(reader, where)),
        ingest.INSERT_CHUNKS: lambda: seen_inside.append(contents(reader, where)),
    }
    store.replace("tides.md", "v2", rows("embedder", "tides.md", "v2", 3), "minilm")
    old = ["tides.md chunk 0 of version v1", "tides.md chunk 1 of version v1"]
    assert seen_inside == [old, old]  # neither nothing nor both while it runs
    assert contents(reader, where) == [f"tides.md chunk {i} of version v2" for i in range(3)]
