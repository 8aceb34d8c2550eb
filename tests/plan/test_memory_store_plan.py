"""Plans of the memory store (PostgreSQL + pgvector) on ageis-node: Ubuntu 24.04 and Debian 13."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path

import pytest

from tasks.ageis_node.memory_store import (
    MemoryStoreState,
    kept_or_new_verifier,
    scram_verifier,
    verifier_digest,
)
from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import REPO, Plan
from tests.plan.machines import DEBIAN_13

NODE = "ageis-node"
PASSWORD = PLAN_SECRETS["memory_store_actr_engine_password"]


def ageis_plan(plan_of, fleet, release: str, tmp_path: Path | None = None) -> Plan:
    if release == "debian-13":
        # The lab's ageis-node: a Debian 13 guest (the inventory says so in guest.os).
        assert tmp_path is not None
        fleet[NODE].os_release = DEBIAN_13
        text = (REPO / "inventory.py").read_text()
        assert text.count('"os": "ubuntu-24.04"') == 1
        inventory = tmp_path / "inventory.py"
        inventory.write_text(text.replace('"os": "ubuntu-24.04"', '"os": "debian-13"'))
        # ROCm's suite forced as the lab does (AMD's repositories have no Debian suite).
        return plan_of(
            "deploys/ageis_node.py",
            limit=[NODE],
            inventory_file=str(inventory),
            override_data={"rocm_apt_suite": "noble"},
        )
    return plan_of("deploys/ageis_node.py", limit=[NODE])


def cause(caught: pytest.ExceptionInfo) -> BaseException:
    """The task's own exception (pyinfra's CLI wraps it in UnexpectedExternalError)."""
    return getattr(caught.value, "exception", caught.value)


@pytest.mark.parametrize(("release", "major"), [("ubuntu-24.04", 16), ("debian-13", 17)])
def test_distribution_major_cluster_on_the_ssd_pool_with_checksums(
    plan_of, fleet, release: str, major: int, tmp_path: Path
) -> None:
    result = ageis_plan(plan_of, fleet, release, tmp_path)
    install = result.op(NODE, f"Install PostgreSQL {major} and pgvector")
    assert f"postgresql-{major}-pgvector" in " ".join(install.commands)
    env = result.upload(NODE, "/etc/homelab/memory-store/memory-store.env")
    assert f"PG_DATA=/srv/ssd/postgresql/{major}/main\n" in env
    assert f"PG_UNIT=postgresql@{major}-main.service\n" in env
    createcluster = result.upload(NODE, "/etc/postgresql-common/createcluster.d/homelab.conf")
    assert "initdb_options = '--data-checksums'" in createcluster
    assert "create_main_cluster = false" in createcluster
    assert result.op(NODE, f"Create cluster {major}/main").commands == [
        "/usr/local/sbin/memory-store-bootstrap"
    ]
    unit = result.upload(NODE, "/etc/systemd/system/memory-store-integrity.service")
    assert f"Requires=postgresql@{major}-main.service\n" in unit
    assert f"After=postgresql@{major}-main.service\n" in unit
    assert f"RequiresMountsFor=/srv/ssd/postgresql/{major}/main" in unit
    mounts = result.upload(
        NODE, f"/etc/systemd/system/postgresql@{major}-main.service.d/homelab-mounts.conf"
    )
    assert f"RequiresMountsFor=/srv/ssd/postgresql/{major}/main" in mounts


def test_settings_sized_from_ram_listen_and_hba(plan_of, fleet) -> None:
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    conf = result.upload(NODE, "/etc/postgresql/16/main/conf.d/homelab.conf")
    # 24 GiB VM, 12 % for PostgreSQL: ~2.8 GiB budget, half of it shared_buffers.
    assert "shared_buffers = '1442MB'" in conf
    assert "listen_addresses = '127.0.0.1,::1,192.168.1.20'" in conf
    assert "password_encryption = 'scram-sha-256'" in conf
    hba = result.upload(NODE, "/etc/postgresql/16/main/pg_hba.conf")
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["local", "memory_store", "actr_engine", "scram-sha-256"],
        ["host", "memory_store", "actr_engine", "127.0.0.1/32", "scram-sha-256"],
        ["host", "memory_store", "actr_engine", "::1/128", "scram-sha-256"],
        # The embedder's vector indexer and document ingester, each with its own role.
        ["hostssl", "memory_store", "document_ingest", "192.168.1.30/32", "scram-sha-256"],
        ["hostssl", "memory_store", "vector_indexer", "192.168.1.30/32", "scram-sha-256"],
        # The WAL receivers (pve, embedder): replication only, no database.
        ["hostssl", "replication", "wal_receiver", "192.168.1.10/32", "scram-sha-256"],
        ["hostssl", "replication", "wal_receiver", "192.168.1.30/32", "scram-sha-256"],
    ]
    # A commit is acknowledged once one of the two receivers has flushed it too.
    assert 'synchronous_standby_names = \'ANY 1 ("walrcv_embedder", "walrcv_pve")\'' in conf
    assert "synchronous_commit = on" in conf
    assert "max_slot_wal_keep_size = '16384MB'" in conf


def test_network_clients_get_tls_with_a_certificate_of_the_stores_own_ca(plan_of, fleet) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    tls = "/etc/postgresql/16/main/homelab-tls"
    conf = result.upload(NODE, "/etc/postgresql/16/main/conf.d/homelab.conf")
    assert "ssl = on" in conf
    assert f"ssl_cert_file = '{tls}/server.crt'" in conf
    assert f"ssl_key_file = '{tls}/server.key'" in conf
    assert "ssl_min_protocol_version = 'TLSv1.3'" in conf
    key = result.op(NODE, "PostgreSQL TLS server.key").commands
    assert "chown postgres:postgres /etc/postgresql/16/main/homelab-tls/server.key" in key
    assert "chmod 600 /etc/postgresql/16/main/homelab-tls/server.key" in key
    cert = x509.load_pem_x509_certificate(result.upload(NODE, f"{tls}/server.crt").encode())
    ca = x509.load_pem_x509_certificate(result.upload(NODE, f"{tls}/ca.crt").encode())
    cert.verify_directly_issued_by(ca)
    assert "memory store CA" in ca.subject.rfc4514_string()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ageis-node", "ageis-node.home.arpa"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["192.168.1.20"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # ECDSA with SHA-256: libpq's SCRAM channel binding hashes the certificate with its
    # signature's digest (an Ed25519 one has none and the client gives up).
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    # The same seed gives the same files (deterministic ECDSA): a second run changes nothing.
    again = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    assert again.upload(NODE, f"{tls}/server.crt") == result.upload(NODE, f"{tls}/server.crt")
    # Not pgBackRest's CA: a pgBackRest certificate never passes as the store's server.
    pgbackrest_ca = result.upload(NODE, "/etc/pgbackrest/tls/ca.crt")
    assert pgbackrest_ca != result.upload(NODE, f"{tls}/ca.crt")
    reload = result.op(NODE, "PostgreSQL takes the new settings")
    assert reload.conditional


def test_passwords_travel_only_as_scram_verifiers(plan_of, fleet) -> None:
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    # (every plan secret is the same test double; the Tailscale key file and the clients'
    # root-only credential files, actr-engine's two and the gateway's, legitimately hold it)
    leaks = [c for c in result.commands(NODE) if PASSWORD in c]
    assert leaks == [
        "upload /etc/tailscale/authkey\n" + PASSWORD,
        "upload /etc/actr-engine/db-password\n" + PASSWORD + "\n",
        "upload /etc/actr-engine/api-token\n" + PASSWORD + "\n",
        "upload /etc/openclaw-pipeline/gateway-token\n" + PASSWORD + "\n",
    ]
    sql = result.upload(NODE, "/etc/homelab/memory-store/schema.sql")
    verifier = sql_verifiers(sql)["actr_engine"]
    assert PASSWORD not in sql
    assert verifier_checks(verifier, PASSWORD)
    assert not verifier_checks(verifier, PASSWORD + "x")
    assert "embedding vector(384) NULL" in sql
    apply = result.op(NODE, "Apply the memory store schema")
    assert apply.commands == [
        "runuser -u postgres -- env PGOPTIONS='-c synchronous_commit=local'"
        " psql -X -q -v ON_ERROR_STOP=1 -f - < /etc/homelab/memory-store/schema.sql"
    ]
    # The WAL receivers' role: replication, no database (no CONNECT grant names it).
    receiver = sql_verifiers(sql)["wal_receiver"]
    assert verifier_checks(receiver, PLAN_SECRETS["memory_store_wal_receiver_password"])
    assert "ALTER ROLE wal_receiver LOGIN REPLICATION NOSUPERUSER" in sql
    assert not [line for line in sql.splitlines() if "GRANT" in line and "wal_receiver" in line]


def test_document_ingest_role_reaches_only_document_rows(plan_of, fleet) -> None:
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    sql = result.upload(NODE, "/etc/homelab/memory-store/schema.sql")
    verifier = sql_verifiers(sql)["document_ingest"]
    assert verifier_checks(verifier, PLAN_SECRETS["memory_store_document_ingest_password"])
    grants = [line for line in sql.splitlines() if "GRANT" in line and "document_ingest" in line]
    assert grants == [
        "GRANT CONNECT ON DATABASE memory_store TO actr_engine, vector_indexer, document_ingest;",
        "GRANT USAGE ON SCHEMA public TO actr_engine, vector_indexer, document_ingest;",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO actr_engine, document_ingest;",
        "GRANT SELECT, INSERT, DELETE ON memory_chunk TO document_ingest;",
        "GRANT INSERT ON memory_access TO document_ingest;",
    ]
    assert "ALTER TABLE memory_chunk ENABLE ROW LEVEL SECURITY;" in sql
    assert (
        "CREATE POLICY memory_chunk_documents ON memory_chunk TO document_ingest\n"
        "  USING (metadata->>'source_kind' = 'document')\n"
        "  WITH CHECK (metadata->>'source_kind' = 'document');"
    ) in sql
    # Policies change inside one transaction: no client is ever left without one.
    body = sql.split("BEGIN;\n", 1)[1].split("COMMIT;\n", 1)[0]
    assert body.count("CREATE POLICY") == 4 and "ENABLE ROW LEVEL SECURITY" in body


def sql_verifiers(sql: str) -> dict[str, str]:
    """role -> the verifier the schema SQL sets for it."""
    return dict(re.findall(r"ALTER ROLE (\w+) .*PASSWORD '([^']+)';", sql))


def verifier_checks(verifier: str, password: str) -> bool:
    """PostgreSQL's check of a password against a stored verifier, written out again."""
    method, rest = verifier.split("$", 1)
    iterations, salt = rest.split("$")[0].split(":")
    again = scram_verifier(password, base64.b64decode(salt), int(iterations))
    return method == "SCRAM-SHA-256" and again == verifier


def test_scram_verifier_passes_rfc_7677_test_vector() -> None:
    """RFC 7677 section 3: user "user", password "pencil"; the server's signature over the
    exchange's AuthMessage, computed from our ServerKey, must be the RFC's."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt, 4096)
    assert verifier.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    server_key = base64.b64decode(verifier.rsplit(":", 1)[1])
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    )
    signature = hmac.new(server_key, auth_message.encode(), "sha256").digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_each_new_verifier_gets_a_random_salt() -> None:
    one, two = scram_verifier("pencil"), scram_verifier("pencil")
    assert one != two
    assert verifier_checks(one, "pencil") and verifier_checks(two, "pencil")


def test_a_stored_verifier_is_kept_while_its_password_matches() -> None:
    stored_verifier = scram_verifier("pencil")
    iterations, salt = stored_verifier.split("$")[1].split(":")
    stored = {
        "iterations": int(iterations),
        "salt": salt,
        "digest": verifier_digest(stored_verifier),
    }
    assert kept_or_new_verifier("pencil", stored) == stored_verifier
    changed = kept_or_new_verifier("crayon", stored)
    assert verifier_checks(changed, "crayon")
    assert changed.split("$")[1] != stored_verifier.split("$")[1]  # a new salt
    assert verifier_checks(kept_or_new_verifier("pencil", {**stored, "salt": "%%"}), "pencil")


def test_state_fact_reads_salt_and_digest_not_keys() -> None:
    fact = MemoryStoreState()
    command = fact.command()
    assert "sha256(convert_to(rolpassword" in command
    assert "split_part(split_part(rolpassword, '$', 2), ':', 2)" in command
    digest = hashlib.sha256(b"x").hexdigest()
    state = fact.process(
        [
            "checksums=on",
            "schema=homelab-as-code schema 0123",
            "#homelab-memory-store",
            f"actr_engine:4096:W22ZaJ0SNY7soEsUEjb6gQ==:{digest}",
        ]
    )
    assert state == {
        "checksums": "on",
        "schema": "homelab-as-code schema 0123",
        "roles": {
            "actr_engine": {
                "iterations": 4096,
                "salt": "W22ZaJ0SNY7soEsUEjb6gQ==",
                "digest": digest,
            }
        },
    }
    assert fact.process(["checksums=on"]) is None


def _stored(verifiers: dict[str, str]) -> dict[str, dict]:
    roles = {}
    for role, verifier in verifiers.items():
        iterations, salt = verifier.split("$")[1].split(":")
        roles[role] = {
            "iterations": int(iterations),
            "salt": salt,
            "digest": verifier_digest(verifier),
        }
    return roles


def test_converged_store_keeps_its_verifiers_and_schema(plan_of, fleet) -> None:
    from tasks.ageis_node.memory_store import render_schema, schema_comment

    verifiers = {
        r: scram_verifier(PLAN_SECRETS[f"memory_store_{r}_password"])
        for r in ("actr_engine", "vector_indexer", "document_ingest", "wal_receiver")
    }
    sql = render_schema(384, verifiers)
    machine = fleet[NODE]
    machine.pg_clusters = [
        {
            "version": 16,
            "name": "main",
            "port": 5432,
            "status": "online",
            "data_directory": "/srv/ssd/postgresql/16/main",
        }
    ]
    machine.memory_store = {
        "checksums": "on",
        "schema": schema_comment(sql),
        "roles": _stored(verifiers),
    }
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    assert not [op for op in result.for_host(NODE) if "Create cluster" in op.name]
    # The stored verifiers (random salts) are recomputed, not replaced: the same SQL.
    assert result.upload(NODE, "/etc/homelab/memory-store/schema.sql") == sql
    # The schema file is uploaded (the simulated host lacks it) and so applied: a converged
    # host with the file in place and matching state runs nothing, checked in the lab.
    assert result.op(NODE, "Apply the memory store schema").conditional


def test_a_changed_password_gets_a_new_verifier(plan_of, fleet) -> None:
    old = {r: scram_verifier("the old password") for r in ("actr_engine", "vector_indexer")}
    fleet[NODE].pg_clusters = [
        {
            "version": 16,
            "name": "main",
            "port": 5432,
            "status": "online",
            "data_directory": "/srv/ssd/postgresql/16/main",
        }
    ]
    fleet[NODE].memory_store = {"checksums": "on", "schema": "", "roles": _stored(old)}
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    new = sql_verifiers(result.upload(NODE, "/etc/homelab/memory-store/schema.sql"))
    assert verifier_checks(new["actr_engine"], PASSWORD)
    assert new["actr_engine"] != old["actr_engine"]


def test_cluster_elsewhere_is_left_alone_and_stops_the_run(plan_of, fleet) -> None:
    fleet[NODE].pg_clusters = [
        {
            "version": 16,
            "name": "main",
            "port": 5432,
            "status": "online",
            "data_directory": "/var/lib/postgresql/16/main",
        }
    ]
    with pytest.raises(BaseException) as error:
        ageis_plan(plan_of, fleet, "ubuntu-24.04")
    assert "cluster 16/main exists in /var/lib/postgresql/16/main, not in" in str(cause(error))


def test_checksums_off_stops_the_run(plan_of, fleet) -> None:
    machine = fleet[NODE]
    machine.pg_clusters = [
        {
            "version": 16,
            "name": "main",
            "port": 5432,
            "status": "online",
            "data_directory": "/srv/ssd/postgresql/16/main",
        }
    ]
    machine.memory_store = {"checksums": "off", "schema": "", "roles": {}}
    with pytest.raises(BaseException) as error:
        ageis_plan(plan_of, fleet, "ubuntu-24.04")
    assert "runs without data checksums" in str(cause(error))


def test_a_rolled_back_cluster_is_checked_before_postgresql_starts(plan_of, fleet) -> None:
    """The roll-forward check runs before PostgreSQL (Requires=, so a failed check keeps it
    down); it is installed after PostgreSQL first runs (a new cluster has nothing to catch up
    with), and recovery's restore_command is the archive-then-receivers fetch."""
    result = ageis_plan(plan_of, fleet, "ubuntu-24.04")
    unit = result.upload(NODE, "/etc/systemd/system/memory-store-roll-forward.service")
    assert "Before=postgresql@16-main.service\n" in unit
    assert "ExecStart=/usr/local/sbin/memory-store-roll-forward\n" in unit
    assert "RequiresMountsFor=/srv/ssd/postgresql/16/main\n" in unit
    dropin = result.upload(
        NODE, "/etc/systemd/system/postgresql@16-main.service.d/homelab-roll-forward.conf"
    )
    assert "Requires=memory-store-roll-forward.service\n" in dropin
    assert "After=memory-store-roll-forward.service\n" in dropin
    names = [op.name for op in result.for_host(NODE)]

    def position(name: str) -> int:
        return next(i for i, n in enumerate(names) if name in n)

    assert position("postgresql@16-main.service runs and starts at boot") < position(
        "postgresql@16-main.service starts after the roll-forward check"
    )
    enable = result.op(NODE, "memory-store-roll-forward.service runs before PostgreSQL")
    assert any("enable memory-store-roll-forward.service" in c for c in enable.commands)
    conf = result.upload(NODE, "/etc/postgresql/16/main/conf.d/homelab.conf")
    assert "restore_command = '/usr/local/sbin/memory-store-wal-fetch %f \"%p\"'\n" in conf
