"""Plans of the synchronous WAL streaming: receivers on pve and the embedder, the store's side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import Plan, inventory_copy
from tests.plan.test_hypervisor_plan import DEBIAN_12, make_proxmox_ve_8

NODE = "ageis-node"
UNIT = "/etc/systemd/system/homelab-wal-receiver.service"
SPOOL_UNIT = "/etc/systemd/system/homelab-wal-spool.service"


@pytest.fixture
def full(plan_of) -> Plan:
    return plan_of("deploys/full.py", limit=["pve", NODE, "embedder"])


def exec_start(unit: str) -> str:
    return next(line for line in unit.splitlines() if line.startswith("ExecStart="))


@pytest.mark.parametrize(
    "receiver, directory, client",
    [
        ("pve", "/mnt/hdd/wal-stream/ageis-node", 17),
        ("embedder", "/srv/ssd/wal-stream/ageis-node", 17),
    ],
)
def test_each_receiver_streams_synchronously_with_its_own_slot(
    full: Plan, receiver: str, directory: str, client: int
) -> None:
    unit = full.upload(receiver, UNIT)
    slot = f"walrcv_{receiver}"
    assert exec_start(unit) == (
        f"ExecStart=/usr/local/sbin/homelab-wal-receiver /usr/lib/postgresql/{client}/bin"
        ' "host=192.168.1.20 port=5432 user=wal_receiver sslmode=verify-full'
        " sslrootcert=/etc/homelab/wal-receiver/postgresql-ca.crt"
        f' application_name={slot}" {directory} {slot}'
    )
    assert "Restart=always" in unit and f"RequiresMountsFor={directory}" in unit
    assert "LoadCredential=pgpass:/etc/homelab/wal-receiver/pgpass" in unit
    assert "PrivateTmp=yes" in unit  # the runner's private copy of the passfile
    # The release's own client is new enough for ageis-node's PostgreSQL 16 (Debian 13: 17).
    packages = full.op(receiver, f"PostgreSQL {client} client").commands
    assert any(f"postgresql-client-{client}" in c for c in packages), packages
    # The script pg_receivewal runs from: --synchronous with the slot, never deleting.
    runner = full.upload(receiver, "/usr/local/sbin/homelab-wal-receiver")
    assert '--slot=$slot" \\\n    --synchronous --no-loop' in runner
    assert "rm " not in runner and "-delete" not in runner
    passfile = full.upload(receiver, "/etc/homelab/wal-receiver/pgpass")
    password = PLAN_SECRETS["memory_store_wal_receiver_password"]
    assert passfile == f"192.168.1.20:5432:*:wal_receiver:{password}\n"
    # The receiver verifies the server against the memory store's CA, the one the store serves.
    ca = full.upload(NODE, "/etc/postgresql/16/main/homelab-tls/ca.crt")
    assert full.upload(receiver, "/etc/homelab/wal-receiver/postgresql-ca.crt") == ca


def test_the_spool_is_served_to_the_store_only(full: Plan) -> None:
    unit = full.upload("pve", SPOOL_UNIT)
    line = exec_start(unit)
    assert "--listen 192.168.1.10 --port 8433" in line
    assert line.endswith("--allow ageis-node")
    assert "ReadOnlyPaths=/mnt/hdd/wal-stream/ageis-node" in unit
    # The store's client certificate and the receiver's CA come from the same WAL spool CA,
    # not the memory store's or pgBackRest's.
    ca = full.upload("pve", "/etc/homelab/wal-receiver/spool-ca.crt")
    assert full.upload(NODE, "/etc/homelab/memory-store-wal-fetch/ca.crt") == ca
    assert ca != full.upload(NODE, "/etc/postgresql/16/main/homelab-tls/ca.crt")
    assert ca != full.upload(NODE, "/etc/pgbackrest/tls/ca.crt")


def test_the_store_restores_through_the_receivers(full: Plan) -> None:
    env = full.upload(NODE, "/etc/homelab/memory-store/memory-store.env")
    assert "WAL_RECEIVERS='walrcv_embedder=192.168.1.30 walrcv_pve=192.168.1.10'" in env
    # The fetch runs as postgres: its own settings, out of the root-only directory.
    fetch_env = full.upload(NODE, "/etc/homelab/memory-store-wal-fetch/fetch.env")
    assert "WAL_RECEIVERS='walrcv_embedder=192.168.1.30 walrcv_pve=192.168.1.10'" in fetch_env
    assert "PGBACKREST_STANZA=memory" in fetch_env and "WAL_SPOOL_PORT=8433" in fetch_env
    fetch = full.upload(NODE, "/usr/local/sbin/memory-store-wal-fetch")
    assert "archive-get" in fetch and ".partial" in fetch
    bootstrap = full.upload(NODE, "/usr/local/sbin/memory-store-bootstrap")
    assert '--recovery-option="restore_command=$WAL_FETCH %f \\"%p\\""' in bootstrap


def test_a_proxmox_ve_8_hypervisor_takes_the_servers_client_from_pgdg(plan_of, fleet) -> None:
    make_proxmox_ve_8(fleet["pve"])
    result = plan_of("deploys/hypervisor.py", limit=["pve"])
    # Debian 12 ships PostgreSQL 15's client; pg_receivewal refuses a newer server (16).
    packages = result.op("pve", "PostgreSQL 16 client").commands
    assert any("postgresql-client-16" in c for c in packages), packages
    assert "/usr/lib/postgresql/16/bin" in exec_start(result.upload("pve", UNIT))


def test_a_receiver_without_a_new_enough_client_stops_the_run(plan_of, fleet) -> None:
    fleet["embedder"].os_release = DEBIAN_12  # PostgreSQL 15's client, no PGDG there
    with pytest.raises(Exception) as caught:
        plan_of("deploys/embedder.py", limit=["embedder"])
    error = str(getattr(caught.value, "exception", caught.value))
    assert "host 'embedder': the memory store runs PostgreSQL 16" in error
    assert "ships the client of 15" in error and "set wal_receiver = False for embedder" in error


def with_embedder_data(tmp_path: Path, **overrides: Any) -> str:
    change = f"for _name, _data in embedder:\n    _data.update({overrides!r})\n\n"
    return inventory_copy(tmp_path, change)


def test_a_host_can_stay_out_of_the_receivers(plan_of, tmp_path: Path) -> None:
    inventory_file = with_embedder_data(tmp_path, wal_receiver=False)
    result = plan_of(
        "deploys/full.py", limit=["pve", NODE, "embedder"], inventory_file=inventory_file
    )
    assert result.upload_or_none("embedder", UNIT) is None
    conf = result.upload(NODE, "/etc/postgresql/16/main/conf.d/homelab.conf")
    assert "synchronous_standby_names = 'ANY 1 (\"walrcv_pve\")'" in conf
    hba = result.upload(NODE, "/etc/postgresql/16/main/pg_hba.conf")
    assert "192.168.1.30/32" not in hba.split("replication", 1)[1]
    nft = result.upload("embedder", "/etc/homelab/staged/etc_nftables.conf")
    assert " 8433 " not in nft
    pve_nft = result.upload("pve", "/etc/homelab/staged/etc_nftables.conf")
    spool = [line for line in pve_nft.splitlines() if " 8433 " in line]
    assert spool and all("192.168.1.20" in line for line in spool), spool
    assert not [line for line in spool if "192.168.1.30" in line], spool


def test_a_receiver_pool_the_host_lacks_stops_the_run(plan_of, tmp_path: Path) -> None:
    inventory_file = with_embedder_data(tmp_path, wal_receiver_pool="hdd")
    with pytest.raises(Exception) as caught:
        plan_of("deploys/embedder.py", limit=["embedder"], inventory_file=inventory_file)
    error = getattr(caught.value, "exception", caught.value)
    assert "host 'embedder': key 'wal_receiver_pool' is 'hdd'; expected one of this host's" in str(
        error
    )
