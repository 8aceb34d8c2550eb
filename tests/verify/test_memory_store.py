"""The memory store on ageis-node: PostgreSQL, its integrity unit, archiving, the restore test.

Checks a real ageis-node must pass too: the cluster has data checksums and runs from the
pool's data directory, listens only where the contract says, admits only scram-sha-256
clients, the integrity unit passed, WAL archiving works end to end right now (a restore point
plus a WAL switch reaches the repository, with no new failure in ``pg_stat_archiver``), and the
restore test passed within the last two days.
"""

from __future__ import annotations

import time

import pytest

from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "ageis_node"
TEXTFILE = "/var/lib/prometheus/node-exporter"
# The restore test runs daily: its last success must be younger than this.
RESTORE_TEST_MAX_AGE = 2 * 86400


def sql(host_in: InventoryHost, query: str, database: str = "postgres") -> str:
    out = host_in.testinfra.check_output(
        f'runuser -u postgres -- psql -XAtq -d {database} -c "{query}"'
    )
    return out.strip()


def env(host_in: InventoryHost) -> dict[str, str]:
    text = host_in.testinfra.file("/etc/homelab/memory-store/memory-store.env").content_string
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")


def metrics(host_in: InventoryHost, name: str) -> dict[str, float]:
    text = host_in.testinfra.file(f"{TEXTFILE}/{name}").content_string
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_cluster_runs_with_checksums_from_the_pool(host_in: InventoryHost) -> None:
    settings = env(host_in)
    unit = host_in.testinfra.service(settings["PG_UNIT"])
    assert unit.is_running and unit.is_enabled
    assert sql(host_in, "SHOW data_checksums") == "on"
    assert sql(host_in, "SHOW data_directory") == settings["PG_DATA"]
    assert settings["PG_DATA"].startswith(host_in.data["pools"]["ssd"]["path"])
    assert sql(host_in, "SELECT coalesce(sum(checksum_failures), 0) FROM pg_stat_database") == "0"


def test_memory_store_database_is_utf8(host_in: InventoryHost) -> None:
    query = "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'memory_store'"
    assert sql(host_in, query) == "UTF8"


def test_integrity_unit_passed(host_in: InventoryHost) -> None:
    unit = host_in.testinfra.service("memory-store-integrity")
    assert unit.is_enabled
    state = host_in.testinfra.check_output(
        "systemctl show -p ActiveState -p Result --value memory-store-integrity"
    ).split()
    assert sorted(state) == ["active", "success"]
    assert metrics(host_in, "memory_store_integrity.prom")["homelab_memory_store_integrity_ok"] == 1


def test_listens_only_on_loopback_and_the_lan(host_in: InventoryHost) -> None:
    out = host_in.testinfra.check_output("ss -Hltn 'sport = :5432'")
    addresses = {line.split()[3].rsplit(":", 1)[0].strip("[]") for line in out.splitlines()}
    expected = {"127.0.0.1", "::1", host_in.data["lan_address"]}
    if host_in.data.get("postgresql_tailnet_address"):
        expected.add(host_in.data["postgresql_tailnet_address"])
    assert addresses == expected


def test_hba_is_scram_only_and_roles_are_least_privilege(host_in: InventoryHost) -> None:
    rules = sql(
        host_in, "SELECT type, user_name::text, address, auth_method FROM pg_hba_file_rules"
    ).splitlines()
    for rule in rules:
        kind, users, address, method = rule.split("|")
        if users == "{postgres}":
            assert (kind, method) == ("local", "peer"), rule
        else:
            assert method == "scram-sha-256", rule
        # Beyond the host itself, TLS only.
        if kind != "local" and address not in ("127.0.0.1", "::1"):
            assert kind == "hostssl", rule
    assert sql(host_in, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'memory_owner'") == "f"
    verifiers = sql(
        host_in,
        "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid"
        " WHERE rolname IN ('actr_engine', 'vector_indexer', 'document_ingest')",
    ).split()
    assert verifiers == ["t", "t", "t"]
    privileges = sql(
        host_in,
        "SELECT has_table_privilege('actr_engine', 'memory_chunk', 'DELETE'),"
        " has_table_privilege('vector_indexer', 'memory_chunk', 'INSERT'),"
        " has_column_privilege('vector_indexer', 'memory_chunk', 'embedding', 'UPDATE'),"
        " has_column_privilege('vector_indexer', 'memory_chunk', 'content', 'UPDATE')",
        database="memory_store",
    )
    assert privileges == "t|f|t|f"
    # The document ingester: its rows only, by row-level security, and no updates at all.
    ingest = sql(
        host_in,
        "SELECT has_table_privilege('document_ingest', 'memory_chunk', 'INSERT'),"
        " has_table_privilege('document_ingest', 'memory_chunk', 'UPDATE'),"
        " has_table_privilege('document_ingest', 'memory_access', 'SELECT'),"
        " (SELECT bool_and(relrowsecurity) FROM pg_class"
        "  WHERE relname IN ('memory_chunk', 'memory_access')),"
        " (SELECT string_agg(policyname, ',' ORDER BY policyname) FROM pg_policies"
        "  WHERE 'document_ingest' = ANY (roles))",
        database="memory_store",
    )
    assert ingest == "t|f|f|t|memory_access_documents,memory_chunk_documents"


def test_network_clients_use_tls_13(host_in: InventoryHost) -> None:
    """The server offers TLS 1.3 with the memory store CA's certificate, and every vector
    indexer connection (the clients over the network) is encrypted."""
    assert sql(host_in, "SHOW ssl") == "on"
    assert sql(host_in, "SHOW ssl_min_protocol_version") == "TLSv1.3"
    sessions = sql(
        host_in,
        "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s JOIN pg_stat_activity a"
        " USING (pid) WHERE a.usename = 'vector_indexer'",
    ).splitlines()
    assert sessions, "no vector_indexer session: the indexer is not connected"
    assert set(sessions) == {"t|TLSv1.3"}, sessions


def test_wal_archiving_works_now(host_in: InventoryHost) -> None:
    """A fresh WAL record, switched out, reaches the repository; no new failure meanwhile."""
    before = sql(host_in, "SELECT archived_count, failed_count FROM pg_stat_archiver").split("|")
    sql(host_in, "SELECT pg_create_restore_point('verify-archiving')")
    segment = sql(host_in, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 120
    while True:
        now = sql(
            host_in, "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver"
        ).split("|")
        if int(now[0]) > int(before[0]) and now[2] >= segment:
            break
        assert time.monotonic() < deadline, f"{segment} not archived in 120 s: {now}"
        time.sleep(2)
    assert now[1] == before[1], f"archive failures while archiving {segment}: {before} -> {now}"
    # The repository agrees (pgbackrest check switches and waits for the segment itself).
    host_in.testinfra.check_output(
        f"runuser -u postgres -- pgbackrest --stanza={env(host_in)['PGBACKREST_STANZA']} check"
    )


def test_restore_test_passed_recently(host_in: InventoryHost) -> None:
    timer = host_in.testinfra.service("memory-store-restore-test.timer")
    assert timer.is_enabled and timer.is_running
    values = metrics(host_in, "memory_store_restore_test.prom")
    assert values["homelab_restore_test_last_run_success"] == 1
    age = time.time() - values["homelab_restore_test_last_success_timestamp_seconds"]
    assert age < RESTORE_TEST_MAX_AGE, f"last successful restore test {age / 3600:.1f} h ago"
    assert values['homelab_restore_test_rows{table="memory_chunk"}'] >= 0
