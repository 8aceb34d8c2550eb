"""Synchronous WAL streaming of the memory store: the names both sides agree on.

PostgreSQL on ageis-node acknowledges a commit only once its WAL is flushed on at least
``memory_store_synchronous_receivers`` of the WAL receivers (``synchronous_standby_names =
'ANY n (...)'``): ``pg_receivewal --synchronous`` with a replication slot on the hosts that set
``wal_receiver`` (by default the hypervisor, writing to its HDD pool, and the embedder). Each
receiver also serves what it received, read-only over mutually authenticated TLS, to the
memory store's restore (``files/memory-store-wal-fetch``), which takes the newest WAL from
there when the pgBackRest archive does not have it yet: the tail, the partial segment
included. This module holds what both sides read: the receivers, their names, the port, the
TLS material. The receiver's side is ``tasks/hypervisor/wal_receiver.py``; the database's is
``tasks/ageis_node/memory_store.py``.
"""

from __future__ import annotations

import re
from typing import Any

from pyinfra import inventory

from tasks.common.datamodel.forms import Bool, Optional
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import EMBEDDER, HYPERVISOR, MACHINE, POOL_NAME
from tasks.common.pgbackrest import HostTls, host_tls, tls_seed

RECEIVER_GROUPS = (HYPERVISOR, EMBEDDER)
# The receivers serve their spool here (to the database host's restore only).
SPOOL_PORT = 8433
ROLE = "wal_receiver"
PASSWORD_SECRET = "memory_store_wal_receiver_password"

DATA = Schema(
    "wal_stream",
    Key(
        "wal_receiver",
        Bool(),
        True,
        "This host receives the memory store's WAL synchronously (pg_receivewal) and serves it"
        " to the store's restore; a commit is acknowledged once it is on enough receivers.",
        RECEIVER_GROUPS,
    ),
    Key(
        "wal_receiver_pool",
        Optional(POOL_NAME),
        None,
        "The host's pool (its `pools` key) the received WAL is written to,"
        " <pool path>/wal-stream/<database host>; None: hdd if the host has it, else ssd.",
        RECEIVER_GROUPS,
    ),
)


def application_name(receiver: str) -> str:
    """The receiver's application and replication slot name: ``walrcv_`` + its host name with
    every character a slot name may not hold (``[a-z0-9_]``) as ``_``."""
    return "walrcv_" + re.sub(r"[^a-z0-9_]", "_", receiver.lower())


def receivers() -> list[Any]:
    """The inventory's WAL receivers (pyinfra hosts), by name."""
    found = {
        target.name: target
        for group in RECEIVER_GROUPS
        for target in inventory.get_group(group, [])
        if DATA.read(target).wal_receiver
    }
    return [found[name] for name in sorted(found)]


def standby_names(names: list[str], count: int) -> str:
    """``synchronous_standby_names`` for ``names``: empty when there is none (commits then wait
    for no receiver), else ``ANY count (...)`` with every name quoted."""
    if not names:
        return ""
    quoted = ", ".join(f'"{name}"' for name in names)
    return f"ANY {min(count, len(names))} ({quoted})"


def spool_tls(target: Any) -> HostTls:
    """The WAL spool's CA, ``target``'s certificate (server on a receiver, client on the
    database host) and key, from the seed."""
    return host_tls(
        tls_seed(),
        target.name,
        str(MACHINE.read(target).domain),
        purpose="wal-spool",
        addresses=(str(MACHINE.read(target).lan_address),),
    )


def receiver_pool(target: Any) -> str:
    """The pool name ``target`` writes received WAL to (``wal_receiver_pool``, else hdd/ssd)."""
    configured = DATA.read(target).wal_receiver_pool
    pools = MACHINE.read(target).pools
    chosen = configured or next((p for p in ("hdd", "ssd") if p in pools), None)
    if chosen is None or chosen not in pools:
        raise RuntimeError(
            f"host {target.name!r}: key 'wal_receiver_pool' is {configured!r}; expected one of"
            f" this host's pools ({', '.join(pools) or 'it has none: add it to pools'})"
        )
    return chosen


def spool_directory(target: Any, database_host: str) -> str:
    """Where ``target`` keeps the WAL it receives from ``database_host``."""
    path = MACHINE.read(target).pools[receiver_pool(target)]["path"].rstrip("/")
    return f"{path}/wal-stream/{database_host}"
