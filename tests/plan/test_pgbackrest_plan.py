"""Plans of pgBackRest: the repository on pve's HDD pool, archiving from ageis-node, over TLS."""

from __future__ import annotations

import pytest
from cryptography import x509

from tasks.pgbackrest import host_tls
from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import Plan

SEED = PLAN_SECRETS["pgbackrest_tls_seed"]


@pytest.fixture
def full(plan_of) -> Plan:
    return plan_of("deploys/full.py", limit=["pve", "ageis-node"])


def upload(result: Plan, name: str, path: str) -> str:
    for command in result.commands(name):
        if command.startswith(f"upload {path}\n"):
            return command.split("\n", 1)[1]
    raise AssertionError(f"{name}: no upload of {path}")


def settings(text: str) -> dict[str, str]:
    """key=value lines of a pgbackrest.conf, sections flattened (later sections win)."""
    pairs = [line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"]
    return {key: value for key, value in pairs}


def test_repository_on_the_hdd_pool_backs_up_the_ssd_cluster_over_tls(full: Plan) -> None:
    conf = settings(upload(full, "pve", "/etc/pgbackrest/pgbackrest.conf"))
    assert conf["repo1-path"] == "/mnt/hdd/pgbackrest"
    assert conf["pg1-host"] == "ageis-node"
    assert conf["pg1-host-type"] == "tls"
    # ageis-node is an Ubuntu 24.04 guest (guest.os): PostgreSQL 16 on its SSD pool.
    assert conf["pg1-path"] == "/srv/ssd/postgresql/16/main"
    assert conf["tls-server-auth"] == "ageis-node=memory"
    assert conf["repo1-retention-full"] == "2"
    assert conf["repo1-retention-diff"] == "6"
    full_timer = upload(full, "pve", "/etc/systemd/system/pgbackrest-run@full.timer")
    assert "OnCalendar=Sun *-*-* 01:30:00" in full_timer
    verify_timer = upload(full, "pve", "/etc/systemd/system/pgbackrest-run@verify.timer")
    assert "OnCalendar=Sun *-*-* 05:00:00" in verify_timer
    stanza = full.op("pve", "Stanza create, check and a first full backup")
    assert stanza.commands == ["/usr/local/sbin/pgbackrest-stanza-ready memory"]


def test_a_repository_with_a_backup_needs_no_stanza_step(plan_of, fleet) -> None:
    fleet["pve"].pgbackrest_info = {"status": 0, "backups": 3}
    result = plan_of("deploys/full.py", limit=["pve"])
    assert not [op for op in result.for_host("pve") if "Stanza create" in op.name]


def test_database_host_archives_async_to_the_repository(full: Plan) -> None:
    conf = settings(upload(full, "ageis-node", "/etc/pgbackrest/pgbackrest.conf"))
    assert conf["repo1-host"] == "pve"
    assert conf["repo1-host-type"] == "tls"
    assert conf["archive-async"] == "y"
    assert conf["spool-path"] == "/var/spool/pgbackrest"
    assert conf["tls-server-auth"] == "pve=memory"
    assert conf["pg1-path"] == "/srv/ssd/postgresql/16/main"
    pg = upload(full, "ageis-node", "/etc/postgresql/16/main/conf.d/homelab.conf")
    assert "archive_mode = on" in pg
    assert "archive_command = 'pgbackrest --stanza=memory archive-push %p'" in pg
    assert "archive_timeout = 60" in pg
    mounts = upload(
        full,
        "ageis-node",
        "/etc/systemd/system/postgresql@16-main.service.d/homelab-mounts.conf",
    )
    assert "RequiresMountsFor=/srv/ssd/postgresql/16/main /var/spool/pgbackrest" in mounts
    timer = upload(full, "ageis-node", "/etc/systemd/system/memory-store-restore-test.timer")
    assert "OnCalendar=*-*-* 03:30:00" in timer


def test_tls_files_are_derived_from_the_seed_and_stable(full: Plan) -> None:
    key = upload(full, "ageis-node", "/etc/pgbackrest/tls/host.key")
    cert = upload(full, "ageis-node", "/etc/pgbackrest/tls/host.crt")
    ca = upload(full, "pve", "/etc/pgbackrest/tls/ca.crt")
    assert key.splitlines()[0].endswith(" PRIVATE KEY-----")  # a PEM key, derived on the controller
    assert SEED not in key + cert
    again = host_tls(SEED, "ageis-node", "home.arpa")
    assert (again.cert, again.key, again.ca_cert) == (cert, key, ca)
    parsed = x509.load_pem_x509_certificate(cert.encode())
    issuer = x509.load_pem_x509_certificate(ca.encode())
    parsed.verify_directly_issued_by(issuer)
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ageis-node", "ageis-node.home.arpa"]
    other = host_tls("another-seed", "ageis-node", "home.arpa")
    assert other.key != key and other.ca_cert != ca
    key_op = [
        op for op in full.for_host("ageis-node") if op.name.endswith("pgBackRest TLS host.key")
    ]
    assert len(key_op) == 1
