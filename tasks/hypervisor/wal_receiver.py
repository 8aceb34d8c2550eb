"""A synchronous WAL receiver of the memory store, and the spool it serves to the restore.

Runs on every host with ``wal_receiver`` (by default the hypervisor, into its HDD pool, and the
embedder): ``pg_receivewal --synchronous`` with its own physical replication slot streams the
memory store's WAL from ageis-node into ``<pool>/wal-stream/<database host>`` and reports each
flush at once, so PostgreSQL (``synchronous_standby_names = 'ANY n (...)'``) acknowledges a
commit only once it is on disk here. The slot keeps the WAL a receiver has not taken yet
(capped by ``memory_store_slot_wal_keep``); ``--no-loop`` and ``Restart=always`` make every
lost connection a visible restart. Before each start, ``homelab-wal-receiver`` moves
the received WAL aside (kept, never deleted) when it belongs to another cluster or to a
timeline the server has left (after a restore or a rollback), since pg_receivewal could not
continue it; partial segments are never deleted here: they are the last acknowledged commits.

The client is PostgreSQL's own of the server's major (Debian's package when the release ships
a new enough one, else PGDG's, which the pgBackRest install configures on the repository
host). It logs in as the replication role ``wal_receiver`` (secret
``memory_store_wal_receiver_password``, a systemd credential read through libpq's passfile)
over TLS, verifying the server against the memory store's CA (``verify-full``).

``homelab-wal-spool`` serves the received files (complete segments, the ``.partial`` one, the
timeline histories) read-only on port 8433, TLS 1.3 with client certificates of the WAL spool
CA: only the database host's name is admitted, only WAL file names are served.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from tasks.ageis_node.memory_store import (
    DISTRIBUTION_MAJOR,
    PORT,
    major_from_data,
    server_tls,
)
from tasks.common.datamodel.machine import AGEIS_NODE, MACHINE
from tasks.common.datamodel.secrets import Secret, load_secrets
from tasks.common.pgbackrest import DATA as PGBACKREST
from tasks.common.ports import Port
from tasks.common.secret_files import secret_file
from tasks.common.templating import file_path, template_path
from tasks.common.wal_stream import (
    DATA,
    PASSWORD_SECRET,
    ROLE,
    SPOOL_PORT,
    application_name,
    spool_directory,
    spool_tls,
)

USER = "walreceiver"
CONFIG_DIR = "/etc/homelab/wal-receiver"
RUNNER = "/usr/local/sbin/homelab-wal-receiver"
SPOOL_SERVER = "/usr/local/sbin/homelab-wal-spool"
RECEIVER_UNIT = "homelab-wal-receiver.service"
SPOOL_UNIT = "homelab-wal-spool.service"

PORTS = (
    Port(
        SPOOL_PORT,
        "tcp",
        "wal-spool",
        probe="tcp",
        consumers=(AGEIS_NODE,),
        when=lambda data: bool(data.get("wal_receiver", True)),
    ),
)


def database_host() -> Any | None:
    """The inventory's memory store host (the first ageis_node host), or None."""
    nodes = inventory.get_group(AGEIS_NODE, [])
    return nodes[0] if nodes else None


def client_major(store_major: int) -> int:
    """The client major to install: the release's own when it is at least the server's
    (pg_receivewal refuses a newer server), else the server's, from PGDG."""
    meta = host.get_fact(LinuxDistribution).get("release_meta") or {}
    own = DISTRIBUTION_MAJOR.get((meta.get("ID", "").lower(), meta.get("VERSION_ID", "")))
    if own is not None and own >= store_major:
        return own
    if PGBACKREST.read(host).pgbackrest_source != "pgdg" or host.name not in _pgdg_hosts():
        raise RuntimeError(
            f"host {host.name!r}: the memory store runs PostgreSQL {store_major}, this host's"
            f" release ships the client of {own or 'no known major'}, and PGDG's repository is"
            f" not configured here; set wal_receiver = False for {host.name}, or make it the"
            " pgBackRest repository host with pgbackrest_source = 'pgdg'"
        )
    return store_major


def _pgdg_hosts() -> set[str]:
    from tasks.common.pgbackrest import repository_host_name

    return {repository_host_name(PGBACKREST.read(host).pgbackrest_repository_host)}


@deploy("WAL receiver (synchronous)", data_defaults=DATA.defaults())
def wal_receiver() -> None:
    store = database_host()
    if not DATA.read(host).wal_receiver or store is None:
        host.noop(f"{host.name} receives no WAL (wal_receiver is off, or no memory store)")
        return
    name = application_name(host.name)
    directory = spool_directory(host, store.name)
    major = client_major(major_from_data(store))
    apt.packages(
        name=f"PostgreSQL {major} client (pg_receivewal)",
        packages=[f"postgresql-client-{major}", "python3"],
    )
    server.user(
        name="The WAL receiver's system user",
        user=USER,
        system=True,
        home=f"/var/lib/{USER}",
        shell="/usr/sbin/nologin",
    )
    for path, mode in ((directory.rsplit("/", 1)[0], "750"), (directory, "700")):
        files.directory(
            name=f"Received WAL directory {path}", path=path, user=USER, group=USER, mode=mode
        )
    files.directory(name="WAL receiver configuration", path=CONFIG_DIR, mode="755")
    receiver_inputs = _receiver_files(store)
    spool_inputs = _spool_files()
    receiver_unit, spool_unit = _units(store, name, directory, major)
    systemd.daemon_reload(
        name="systemd reads the WAL receiver's units",
        _if=lambda: receiver_unit.did_change() or spool_unit.did_change(),
    )
    for unit, inputs in (
        (RECEIVER_UNIT, [*receiver_inputs, receiver_unit]),
        (SPOOL_UNIT, [*spool_inputs, spool_unit]),
    ):
        systemd.service(
            name=f"{unit} runs and starts at boot",
            service=unit,
            running=True,
            enabled=True,
            restarted=any(op.will_change for op in inputs),
        )


def _receiver_files(store: Any) -> list[OperationMeta]:
    """The memory store's CA, the replication password (as libpq's passfile, root's, a
    systemd credential) and the receiver's script."""
    secrets = load_secrets()
    if PASSWORD_SECRET not in secrets:
        raise RuntimeError(
            f"host {host.name!r}: the secrets file lacks {PASSWORD_SECRET}"
            " (see secrets.example.toml)"
        )
    address = str(MACHINE.read(store).lan_address)
    password = _passfile_escaped(secrets[PASSWORD_SECRET].reveal())
    return [
        files.put(
            name="The memory store's CA (the receiver verifies the server)",
            src=StringIO(server_tls(store).ca_cert),
            dest=f"{CONFIG_DIR}/postgresql-ca.crt",
            mode="644",
        ),
        secret_file(
            name="The replication login (libpq passfile, root-only, a systemd credential)",
            content=Secret(f"{address}:{PORT}:*:{ROLE}:{password}\n"),
            dest=f"{CONFIG_DIR}/pgpass",
        ),
        files.put(
            name="Install the WAL receiver (checks, slot, pg_receivewal)",
            src=file_path("homelab-wal-receiver"),
            dest=RUNNER,
            mode="755",
        ),
    ]


def _spool_files() -> list[OperationMeta]:
    """The spool's CA, certificate, key (root's, a systemd credential) and server."""
    spool = spool_tls(host)
    return [
        files.put(
            name="The WAL spool's CA (the restore's client certificate is checked against it)",
            src=StringIO(spool.ca_cert),
            dest=f"{CONFIG_DIR}/spool-ca.crt",
            mode="644",
        ),
        files.put(
            name="The WAL spool's certificate",
            src=StringIO(spool.cert),
            dest=f"{CONFIG_DIR}/spool.crt",
            mode="644",
        ),
        secret_file(
            name="The WAL spool's key (root-only, a systemd credential)",
            content=Secret(spool.key),
            dest=f"{CONFIG_DIR}/spool.key",
        ),
        files.put(
            name="Install the WAL spool server",
            src=file_path("homelab-wal-spool"),
            dest=SPOOL_SERVER,
            mode="755",
        ),
    ]


def _passfile_escaped(value: str) -> str:
    """A passfile field: ``:`` and ``\\`` escaped with a backslash (libpq's format)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _units(
    store: Any, name: str, directory: str, major: int
) -> tuple[OperationMeta, OperationMeta]:
    address = str(MACHINE.read(store).lan_address)
    conninfo = (
        f"host={address} port={PORT} user={ROLE} sslmode=verify-full"
        f" sslrootcert={CONFIG_DIR}/postgresql-ca.crt application_name={name}"
    )
    receiver = files.template(
        name=f"{RECEIVER_UNIT}: pg_receivewal --synchronous from {store.name}",
        src=template_path("homelab-wal-receiver.service.j2"),
        dest=f"/etc/systemd/system/{RECEIVER_UNIT}",
        mode="644",
        service_user=USER,
        source=store.name,
        conninfo=conninfo,
        slot=name,
        directory=directory,
        bin=f"/usr/lib/postgresql/{major}/bin",
        runner=RUNNER,
        config_dir=CONFIG_DIR,
    )
    spool = files.template(
        name=f"{SPOOL_UNIT}: the received WAL, read-only, to {store.name}'s restore",
        src=template_path("homelab-wal-spool.service.j2"),
        dest=f"/etc/systemd/system/{SPOOL_UNIT}",
        mode="644",
        service_user=USER,
        server=SPOOL_SERVER,
        directory=directory,
        listen=str(MACHINE.read(host).lan_address),
        port=SPOOL_PORT,
        client=store.name,
        config_dir=CONFIG_DIR,
    )
    return receiver, spool
