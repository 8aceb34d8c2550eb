"""The pgBackRest repository on the hypervisor: server, timers, a recent verified backup.

Checks a real repository host must pass too: the TLS server runs, full/diff/verify timers are
active, ``pgbackrest info`` reports the stanza ok with a backup younger than two days (full
weekly, differential daily), and no backup job's last run failed.
"""

from __future__ import annotations

import json
import time

import pytest

from tasks.common.pgbackrest import DATA as PGBACKREST
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "hypervisor"
TEXTFILE = "/var/lib/prometheus/node-exporter"
NEWEST_BACKUP_MAX_AGE = 2 * 86400


def stanza(host_in: InventoryHost) -> str:
    return host_in.data.get("pgbackrest_stanza", "memory")


def test_server_and_timers_run(host_in: InventoryHost) -> None:
    server = host_in.testinfra.service("pgbackrest-server")
    assert server.is_running and server.is_enabled
    for job in ("full", "diff", "verify"):
        timer = host_in.testinfra.service(f"pgbackrest-run@{job}.timer")
        assert timer.is_running and timer.is_enabled, job


def test_database_hosts_run_the_same_pgbackrest(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    """pgBackRest refuses a mixed pair: the repository host and the database host run one
    version, from PGDG exactly pgbackrest_version (pgbackrest_source "pgdg")."""
    settings = {**PGBACKREST.defaults(), **host_in.data}
    mine = host_in.testinfra.check_output("pgbackrest version").strip()
    databases = [h for h in inventory_hosts if "ageis_node" in h.groups]
    assert databases, "the inventory has no database host"
    for other in databases:
        theirs = other.testinfra.check_output("pgbackrest version").strip()
        assert theirs == mine, f"{host_in.name}: {mine}; {other.name}: {theirs}"
    if settings["pgbackrest_source"] == "pgdg":
        assert mine == f"pgBackRest {settings['pgbackrest_version']}"


def test_stanza_ok_with_a_recent_backup(host_in: InventoryHost) -> None:
    info = json.loads(
        host_in.testinfra.check_output(
            f"runuser -u pgbackrest -- pgbackrest --stanza={stanza(host_in)} --output=json info"
        )
    )[0]
    assert info["status"]["code"] == 0, info["status"]
    backups = info["backup"]
    assert backups, "the repository holds no backup"
    age = time.time() - backups[-1]["timestamp"]["stop"]
    assert age < NEWEST_BACKUP_MAX_AGE, f"newest backup is {age / 3600:.1f} h old"
    repo = host_in.testinfra.check_output(
        "sed -n 's/^repo1-path=//p' /etc/pgbackrest/pgbackrest.conf"
    )
    pool = host_in.data["pools"][host_in.data.get("pgbackrest_repository_pool", "hdd")]["path"]
    assert repo.startswith(pool.rstrip("/") + "/")
    # Encrypted as the data says; its files on disk carry the cipher's header, not plain text.
    cipher = host_in.data.get("pgbackrest_repository_cipher", "aes-256-cbc")
    assert info["cipher"] == cipher
    if cipher != "none":
        head = host_in.testinfra.check_output(
            f"head -c 8 {repo.strip()}/archive/{stanza(host_in)}/archive.info"
        )
        assert head == "Salted__", head


def test_no_backup_job_failed_last_time(host_in: InventoryHost) -> None:
    listing = host_in.testinfra.check_output(f"ls {TEXTFILE}")
    failed = []
    for name in listing.split():
        if not name.startswith("pgbackrest_") or name == "pgbackrest_info.prom":
            continue
        text = host_in.testinfra.file(f"{TEXTFILE}/{name}").content_string
        failed += [
            line
            for line in text.splitlines()
            if line.startswith("homelab_backup_last_run_success") and line.endswith(" 0")
        ]
    assert "pgbackrest_full.prom" in listing.split()
    assert failed == []
