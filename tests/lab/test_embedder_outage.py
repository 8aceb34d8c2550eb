"""Outage drill: the embedding server, then PostgreSQL, stopped during ingestion.

A writer on ageis-node stores memories continuously (each retried until its commit is
acknowledged). Meanwhile the embedding server is stopped for EMBEDDER_OUTAGE_SECONDS, then
PostgreSQL (the memory store) for as long. Afterwards every acknowledged chunk must have its
embedding (none lost) and each must have been written exactly once (none double-embedded): a
test-only audit trigger (SECURITY DEFINER, dropped afterwards) logs every write of an
embedding. The units stopped on the way are started again, so the lab is converged after it.

make test runs it with short pauses; `make embedder-drill` with a minute each.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.lab.embedder_helpers import (
    EMBED_URL,
    EMBEDDER,
    INDEXER_URL,
    REPO,
    STORE,
    copy,
    http,
    record,
    ssh,
    wait_healthy,
)

pytestmark = pytest.mark.lab

PAUSE = float(os.environ.get("EMBEDDER_OUTAGE_SECONDS", "10"))
RATE = 4.0  # memories a second
AUDIT_SETUP = """
CREATE TABLE IF NOT EXISTS lab_embed_audit (chunk_id bigint NOT NULL,
                                            at timestamptz NOT NULL DEFAULT now());
CREATE OR REPLACE FUNCTION lab_embed_audit() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN INSERT INTO lab_embed_audit (chunk_id) VALUES (NEW.id); RETURN NEW; END $$;
DROP TRIGGER IF EXISTS lab_embed_audit ON memory_chunk;
CREATE TRIGGER lab_embed_audit AFTER UPDATE OF embedding ON memory_chunk
  FOR EACH ROW WHEN (NEW.embedding IS NOT NULL) EXECUTE FUNCTION lab_embed_audit();
"""
AUDIT_TEARDOWN = """
DROP TRIGGER IF EXISTS lab_embed_audit ON memory_chunk;
DROP FUNCTION IF EXISTS lab_embed_audit();
DROP TABLE IF EXISTS lab_embed_audit;
"""


def psql(sql: str, timeout: float = 60) -> str:
    return ssh(
        STORE,
        "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d memory_store -At -f -",
        timeout=timeout,
        stdin=sql,
    )


def active_units(host) -> set[str]:
    out = ssh(host, "systemctl list-units --type=service --state=active --plain --no-legend")
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture
def audited() -> Iterator[None]:
    psql(AUDIT_SETUP)
    try:
        yield
    finally:
        psql(AUDIT_TEARDOWN)


def counter(url: str, name: str) -> float:
    status, body, _ = http("GET", url)
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_outages_lose_no_chunk_and_embed_none_twice(audited: None) -> None:
    store_units = active_units(STORE)
    embedder_units = active_units(EMBEDDER)
    postgres = sorted(u for u in store_units if u.startswith("postgresql@"))
    assert postgres, f"no postgresql@ unit active on {STORE.name}: {sorted(store_units)}"
    errors_before = counter(f"{INDEXER_URL}/metrics", "vector_indexer_errors_total")
    copy(STORE, REPO / "tests/bench/ingest_bench.py", "/var/lib/postgresql/ingest_bench.py")
    tag = f"outage-{uuid.uuid4().hex[:8]}"
    writer_seconds = 2 * PAUSE + 12
    ssh(
        STORE,
        f"nohup runuser -u postgres -- python3 /var/lib/postgresql/ingest_bench.py writer"
        f" --seconds {writer_seconds} --rate {RATE} --tag {tag} --url {EMBED_URL}"
        f" > /root/{tag}.json 2> /root/{tag}.err < /dev/null &",
    )
    try:
        time.sleep(3)
        ssh(EMBEDDER, "systemctl stop embedding-server")
        time.sleep(PAUSE)
        ssh(EMBEDDER, "systemctl start embedding-server", timeout=300)
        time.sleep(3)
        ssh(STORE, f"systemctl stop {' '.join(postgres)}")
        time.sleep(PAUSE)
    finally:
        # Whatever happened: every unit that ran before runs again (the lab stays converged).
        ssh(STORE, f"systemctl start {' '.join(sorted(store_units))}", timeout=300)
        ssh(EMBEDDER, f"systemctl start {' '.join(sorted(embedder_units))}", timeout=300)
    deadline = time.monotonic() + writer_seconds + 120
    while True:
        text = ssh(STORE, f"cat /root/{tag}.json")
        if text:
            break
        assert time.monotonic() < deadline, ssh(STORE, f"cat /root/{tag}.err")
        time.sleep(2)
    written = json.loads(text)
    ids = written["acknowledged"]
    assert len(ids) >= RATE * writer_seconds * 0.3, written  # the writer kept writing
    id_list = "ARRAY[" + ",".join(map(str, ids)) + "]::bigint[]"
    waited = time.monotonic()
    while True:
        missing = int(psql(
            f"SELECT count(*) FROM memory_chunk WHERE id = ANY({id_list}) AND embedding IS NULL"
        ))  # fmt: skip
        if missing == 0:
            break
        assert time.monotonic() - waited < 300, f"{missing} of {len(ids)} chunks never embedded"
        time.sleep(2)
    caught_up = time.monotonic() - waited
    stored = int(psql(f"SELECT count(*) FROM memory_chunk WHERE id = ANY({id_list})"))
    twice = psql(
        f"SELECT chunk_id, count(*) FROM lab_embed_audit WHERE chunk_id = ANY({id_list})"
        " GROUP BY chunk_id HAVING count(*) > 1"
    )
    once = int(psql(
        f"SELECT count(DISTINCT chunk_id) FROM lab_embed_audit WHERE chunk_id = ANY({id_list})"
    ))  # fmt: skip
    errors = counter(f"{INDEXER_URL}/metrics", "vector_indexer_errors_total") - errors_before
    record(
        "outage_drill",
        {
            "pause_s": PAUSE,
            "acknowledged": len(ids),
            "writer_failed_attempts": written["failed_attempts"],
            "indexer_failed_attempts": errors,
            "lost": len(ids) - stored,
            "embedded_twice": len(twice.splitlines()),
            "caught_up_after_writer_s": round(caught_up, 1),
        },
    )
    assert stored == len(ids), "acknowledged chunks are missing from the store"
    assert twice == "", f"embedded more than once: {twice}"
    assert once == len(ids)
    assert written["failed_attempts"] > 0, "the writer never saw PostgreSQL down"
    assert errors > 0, "the indexer never noticed an outage"
    wait_healthy(f"{EMBED_URL}/health")
    wait_healthy(f"{INDEXER_URL}/health")
