"""The vector indexer on the embedder: every memory chunk gets its embedding, none twice.

``files/embedder/homelab_embedder/indexer.py`` as a systemd service: it LISTENs on the memory
store's ``memory_chunk_added`` channel and scans for chunks ``WHERE embedding IS NULL`` (at
start, after every notification and every ``vector_indexer_scan_interval`` seconds, so nothing
stored while it or the embedding server was away is missed), embeds them in batches through
the embedding server and writes each vector with ``UPDATE ... WHERE embedding IS NULL``. The
store's HNSW index (schema, ``memory_store.py``) takes each vector as it is written.

It logs in as ``vector_indexer`` (SELECT on memory_chunk, UPDATE of the three embedding
columns, LISTEN; nothing else), with the password of secret
``memory_store_vector_indexer_password``, handed over as a root-only file that systemd passes
to the service as a credential (never on a command line). It connects over TLS and verifies
the server (libpq's ``verify-full``) against the memory store's CA, also a credential; the name
it connects to (``vector_indexer_db_host``) must be one the server's certificate carries.
Calls are retried with exponential
backoff, at most ``vector_indexer_max_attempts`` times; past that the process exits and systemd
restarts it (``Restart=on-failure``, growing delay). Before it starts, it waits (bounded) for
PostgreSQL on ageis-node. Health and metrics: port 9310.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import files

from tasks.ageis_node.memory_store import DATA as STORE
from tasks.ageis_node.memory_store import server_addresses, server_tls
from tasks.common.datamodel.forms import HOSTNAME, Int, Optional, Str
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE, EMBEDDER, MACHINE
from tasks.common.datamodel.secrets import Secret, load_secrets
from tasks.common.ports import Port
from tasks.common.secret_files import secret_file
from tasks.embedder.embedder_runtime import APP, VENV, service
from tasks.embedder.embedding_server import PORT as EMBEDDING_PORT

PORT = 9310
UNIT = "vector-indexer.service"
# Declared by the memory store (tasks/ageis_node/memory_store.py) for ageis-node and the embedder.
SECRET = "memory_store_vector_indexer_password"
CONFIG_DIR = "/etc/vector-indexer"
PASSWORD_FILE = f"{CONFIG_DIR}/db-password"
CA_FILE = f"{CONFIG_DIR}/memory-store-ca.crt"
GROUPS = (EMBEDDER,)

PORTS = (Port(PORT, "tcp", "vector-indexer", probe="http:/health", metrics_path="/metrics"),)

DATA = Schema(
    "vector_indexer",
    Key(
        "vector_indexer_db_host",
        Optional(HOSTNAME),
        None,
        "Memory store's host (name or address); None: the ageis_node host's lan_address. One"
        " of the names its TLS certificate carries: inventory name, FQDN, lan_address,"
        " postgresql_tailnet_address.",
        GROUPS,
    ),
    Key("vector_indexer_db_port", Int(1, 65535), 5432, "Memory store's port.", GROUPS),
    Key(
        "vector_indexer_db_name",
        Str(r"[a-z_][a-z0-9_]*", what='a database name such as "memory_store"'),
        "memory_store",
        "Memory store's database.",
        GROUPS,
    ),
    Key("vector_indexer_batch_size", Int(1, 1024), 64, "Chunks per embedding call.", GROUPS),
    Key(
        "vector_indexer_scan_interval",
        Int(1, 3600),
        30,
        "Seconds between catch-up scans when no notification comes.",
        GROUPS,
    ),
    Key(
        "vector_indexer_max_attempts",
        Int(1, 100),
        10,
        "Tries of a failing call (backoff 0.5 s doubling to 30 s) before the process exits"
        " for systemd to restart it.",
        GROUPS,
    ),
    Key(
        "vector_indexer_db_wait_seconds",
        Int(0, 3600),
        120,
        "At start, how long to wait for PostgreSQL on ageis-node before failing.",
        GROUPS,
    ),
)


def memory_store_host() -> Any:
    """The ageis_node inventory host whose memory store the indexer serves."""
    nodes = inventory.get_group(AGEIS_NODE, [])
    if not nodes:
        raise RuntimeError(
            f"host {host.name!r}: the inventory has no {AGEIS_NODE} host, whose memory store the"
            " vector indexer serves"
        )
    return nodes[0]


def database_host(settings: Any, store: Any) -> str:
    """Where the indexer connects: ``vector_indexer_db_host``, else the store's lan_address;
    a name the store's certificate lacks stops the run (TLS verify-full would refuse it)."""
    names = [
        store.name,
        f"{store.name}.{MACHINE.read(store).domain}",
        *server_addresses(store, STORE.read(store).postgresql_tailnet_address),
    ]
    chosen = settings.vector_indexer_db_host or str(MACHINE.read(store).lan_address)
    if chosen not in names:
        raise DataError(
            host.name,
            "vector_indexer_db_host",
            chosen,
            f"a name the memory store's TLS certificate carries ({', '.join(names)}): the"
            " indexer verifies the server's name",
        )
    return chosen


@deploy("Vector indexer", data_defaults=DATA.defaults())
def vector_indexer() -> None:
    settings = DATA.read(host)
    store = memory_store_host()
    db_host = database_host(settings, store)
    secrets = load_secrets()
    if SECRET not in secrets:
        raise RuntimeError(
            f"host {host.name!r}: secret {SECRET} is missing (the vector_indexer role's password"
            " of the memory store), in the secrets file or HOMELAB_SECRET_"
            f"{SECRET.upper()}"
        )
    files.directory(
        name="Vector indexer config directory", path=CONFIG_DIR, user="root", group="root",
        mode="700",
    )  # fmt: skip
    password = secret_file(
        name="Memory store password of vector_indexer (root-only file)",
        content=Secret(secrets[SECRET].reveal() + "\n"),
        dest=PASSWORD_FILE,
    )
    ca = files.put(
        name="The memory store's CA (the indexer verifies the server against it)",
        src=StringIO(server_tls(store).ca_cert),
        dest=CA_FILE,
        mode="644",
    )
    service(
        UNIT,
        "vector-indexer.service.j2",
        restart_on=[password, ca],
        wait=False,
        venv=VENV,
        app=APP,
        password_file=PASSWORD_FILE,
        ca_file=CA_FILE,
        db_host=db_host,
        db_port=settings.vector_indexer_db_port,
        db_name=settings.vector_indexer_db_name,
        embed_url=f"http://127.0.0.1:{EMBEDDING_PORT}",
        batch_size=settings.vector_indexer_batch_size,
        scan_interval=settings.vector_indexer_scan_interval,
        max_attempts=settings.vector_indexer_max_attempts,
        db_wait=settings.vector_indexer_db_wait_seconds,
        port=PORT,
    )
