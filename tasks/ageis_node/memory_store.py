"""The memory store: PostgreSQL + pgvector on ageis-node, checked for integrity at every start.

The distribution's PostgreSQL (``postgresql_version``: None takes the release's own major, 16 on
Ubuntu 24.04, 17 on Debian 13, 15 on Debian 12). The cluster ``<major>/main`` is created once,
with data checksums, in ``<pools[postgresql_pool].path>/postgresql/<major>/main`` (the VM's disk
lives on the hypervisor's SSD pool): ``pg_createcluster`` runs through
``files/memory-store-bootstrap``, which restores the latest backup from the pgBackRest
repository instead when the repository has one (a rebuilt host gets its memories back). An
existing cluster is never re-created or moved: one in another directory, or without checksums,
stops the run naming what differs.

Settings are sized from the host's RAM (``postgresql_memory_percent`` of it, the rest belongs to
Ollama), passwords are ``scram-sha-256``, PostgreSQL listens on loopback and the host's
``lan_address`` (and ``postgresql_tailnet_address``), and ``pg_hba`` admits exactly the
declared clients: ``actr_engine`` locally and over loopback, ``vector_indexer`` and
``document_ingest`` from the embedder's ``lan_address`` (plus ``postgresql_extra_clients``).
Clients over the network must use TLS (``hostssl``, TLS 1.3): the server's certificate comes
from the memory store's own CA, derived on the controller from the secret
``pgbackrest_tls_seed`` (its names: the host's inventory name, its FQDN, ``lan_address`` and
the tailnet address), and the embedder's services verify it (libpq's ``verify-full``) against
that CA. Loopback and the Unix socket stay plain: their traffic never leaves the host.

The ``memory_store`` database, its roles and schema come from one SQL template
(``templates/memory-store-schema.sql.j2``, vector dimension ``memory_embedding_dimensions``),
applied by ``psql`` as postgres (reading the root-only file on stdin) when its digest (kept as
the database's comment) or the roles' password verifiers differ. Passwords are secrets; the
controller computes their SCRAM-SHA-256 verifiers, and only the verifiers travel, inside a
root-only file: no password is ever on a command line. Each verifier gets a random salt; a
later run reads the stored verifier's salt and iterations (and a digest of the verifier, never
its keys), recomputes the verifier from the secret with them, and keeps it when they match: the
same password changes nothing, a changed one gets a new random salt.

Ordering at boot: the data directory's mount, then ``postgresql@<major>-main``, then
``memory-store-integrity.service`` (oneshot: PostgreSQL ready, data checksums on and zero
checksum failures, ``amcheck`` on the memory tables and their B-tree indexes), then the clients,
each with ``Requires=`` and ``After=`` on it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import StringIO
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import FactBase, deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from tasks.ageis_node.pgbackrest_database import Archiving, database_host
from tasks.common.datamodel.forms import (
    Field,
    Int,
    IPv4Address,
    ListOf,
    Optional,
    Size,
    Str,
    Struct,
)
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE, EMBEDDER, HYPERVISOR, MACHINE, POOL_NAME
from tasks.common.datamodel.secrets import Secret, SecretSpec, load_secrets
from tasks.common.pgbackrest import HostTls, host_tls, tls_seed
from tasks.common.ports import Port
from tasks.common.secret_files import secret_file
from tasks.common.templating import file_path, template_path
from tasks.common.wal_stream import PASSWORD_SECRET as WAL_PASSWORD_SECRET
from tasks.common.wal_stream import ROLE as WAL_ROLE
from tasks.common.wal_stream import (
    SPOOL_PORT,
    application_name,
    receivers,
    spool_tls,
    standby_names,
)

# The distribution's PostgreSQL major, by (os-release ID, VERSION_ID).
DISTRIBUTION_MAJOR = {("ubuntu", "24.04"): 16, ("debian", "13"): 17, ("debian", "12"): 15}
# The same, by the inventory's guest.os (what another host knows of this one without facts).
DISTRIBUTION_MAJOR_BY_OS = {"ubuntu-24.04": 16, "debian-13": 17, "debian-12": 15}

DATABASE = "memory_store"
OWNER = "memory_owner"
CLIENT_ROLES = ("actr_engine", "vector_indexer", "document_ingest")
# The login roles of the embedder's services: each admitted from every embedder's lan_address.
EMBEDDER_ROLES = ("vector_indexer", "document_ingest")
# Login roles with REPLICATION and no database access: the WAL receivers'.
REPLICATION_ROLES = (WAL_ROLE,)
TABLES = ("memory_chunk", "memory_access")
PORT = 5432
INTEGRITY_UNIT = "memory-store-integrity.service"
INTEGRITY_SCRIPT = "/usr/local/sbin/memory-store-integrity"
WAL_FETCH_SCRIPT = "/usr/local/sbin/memory-store-wal-fetch"
ROLL_FORWARD_SCRIPT = "/usr/local/sbin/memory-store-roll-forward"
ROLL_FORWARD_UNIT = "memory-store-roll-forward.service"
BOOTSTRAP_SCRIPT = "/usr/local/sbin/memory-store-bootstrap"
CONFIG_DIR = "/etc/homelab/memory-store"
SCHEMA_FILE = f"{CONFIG_DIR}/schema.sql"
ENV_FILE = f"{CONFIG_DIR}/memory-store.env"
# What the restore's WAL fetch reads as postgres (CONFIG_DIR is root's): its settings and the
# client certificate for the WAL receivers' spools.
WAL_FETCH_DIR = "/etc/homelab/memory-store-wal-fetch"
# Under the cluster's config directory: the server's certificate, key and the clients' CA.
TLS_SUBDIR = "homelab-tls"
# node-exporter's textfile collector directory (Debian's prometheus-node-exporter reads it).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
SCRAM_ITERATIONS = 4096

CLIENT = Struct(
    {
        "role": Field(Str(choices=CLIENT_ROLES), doc="the login role"),
        "address": Field(IPv4Address(), doc="the client's address"),
    },
    what="a client",
)


DATA = Schema(
    "memory_store",
    Key(
        "postgresql_version",
        Optional(Int(13, 30)),
        None,
        "PostgreSQL major version; None: the distribution's own (16 on Ubuntu 24.04, 17 on"
        " Debian 13). A change never upgrades an existing cluster (that is pg_upgradecluster).",
        (AGEIS_NODE,),
    ),
    Key(
        "postgresql_pool",
        POOL_NAME,
        "ssd",
        "The host's pool (its `pools` key) that holds the data directory,"
        " <pool path>/postgresql/<major>/main.",
        (AGEIS_NODE,),
    ),
    Key(
        "postgresql_memory",
        Optional(Size(minimum=256 * 1024**2)),
        None,
        "RAM the host has, for sizing PostgreSQL; None reads it from the host.",
        (AGEIS_NODE,),
    ),
    Key(
        "postgresql_memory_percent",
        Int(2, 80),
        12,
        "Percent of RAM PostgreSQL may plan with (shared_buffers is half of it); the rest"
        " is Ollama's and the OS's.",
        (AGEIS_NODE,),
    ),
    Key(
        "postgresql_max_connections",
        Int(10, 1000),
        50,
        "max_connections of the cluster.",
        (AGEIS_NODE,),
    ),
    Key(
        "postgresql_tailnet_address",
        Optional(IPv4Address()),
        None,
        "The host's tailnet address PostgreSQL also listens on (None: LAN and loopback only).",
        (AGEIS_NODE,),
    ),
    Key(
        "postgresql_extra_clients",
        ListOf(CLIENT),
        [],
        'More {"role": ..., "address": ...} pg_hba entries (hostssl, scram-sha-256,'
        " memory_store only); such a client verifies the server against the memory store's CA"
        " (homelab-tls/ca.crt in the cluster's config directory).",
        (AGEIS_NODE,),
    ),
    Key(
        "memory_store_synchronous_receivers",
        Int(1, 10),
        1,
        "WAL receivers (wal_receiver hosts) that must have flushed a commit before it is"
        " acknowledged (synchronous_standby_names = 'ANY n (...)'). With none reachable,"
        " commits wait: they are never acknowledged unreplicated.",
        (AGEIS_NODE,),
    ),
    Key(
        "memory_store_slot_wal_keep",
        Size(minimum=1024**3),
        "16G",
        "At most this much WAL is kept for a receiver that is away (max_slot_wal_keep_size);"
        " past it, its slot is given up and its WAL must be re-streamed from the archive.",
        (AGEIS_NODE,),
    ),
    Key(
        "memory_embedding_dimensions",
        Int(1, 2000),
        384,
        "Dimension of memory_chunk.embedding (384 = all-MiniLM-L6-v2; HNSW allows up to 2000).",
        (AGEIS_NODE,),
    ),
)

SECRETS = (
    SecretSpec(
        "memory_store_actr_engine_password",
        (AGEIS_NODE,),
        "password of the actr_engine role of the memory store (any long random string)",
        "password",
    ),
    SecretSpec(
        "memory_store_vector_indexer_password",
        (AGEIS_NODE, EMBEDDER),
        "password of the vector_indexer role of the memory store (any long random string)",
        "password",
    ),
    SecretSpec(
        "memory_store_document_ingest_password",
        (AGEIS_NODE, EMBEDDER),
        "password of the document_ingest role of the memory store (any long random string)",
        "password",
    ),
    SecretSpec(
        WAL_PASSWORD_SECRET,
        (AGEIS_NODE, HYPERVISOR, EMBEDDER),
        "password of the wal_receiver replication role the WAL receivers log in with (any long"
        " random string)",
        "password",
    ),
)

PORTS = (
    Port(
        PORT,
        "tcp",
        "postgresql",
        probe="tcp",
        # The vector indexer and the document ingester (embedder), the WAL receivers
        # (hypervisor, embedder).
        consumers=(EMBEDDER, HYPERVISOR),
        extra_sources=lambda data: [
            f"{c['address']}/32" for c in (data.get("postgresql_extra_clients") or [])
        ],
    ),
    # pgBackRest's TLS server: the repository host reaches the data directory for backups.
    Port(8432, "tcp", "pgbackrest-server", probe="tcp", consumers=(HYPERVISOR,)),
)


class HostMemory(FactBase[int | None]):
    """The host's RAM in bytes (``MemTotal`` of /proc/meminfo); None when unreadable."""

    reads_other_hosts = False

    def command(self) -> str:
        return "awk '/^MemTotal:/ {print $2}' /proc/meminfo"

    def process(self, output: list[str]) -> int | None:
        return int(output[0]) * 1024 if output and output[0].strip().isdigit() else None


class PostgresqlClusters(FactBase[list[dict[str, Any]]]):
    """The clusters ``pg_lsclusters`` lists: version, name, port, status, data directory."""

    reads_other_hosts = False

    def command(self) -> str:
        return "command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h || true"

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        clusters = []
        for line in output:
            fields = line.split()
            if len(fields) >= 6 and fields[0].isdigit():
                clusters.append(
                    {
                        "version": int(fields[0]),
                        "name": fields[1],
                        "port": int(fields[2]) if fields[2].isdigit() else None,
                        "status": fields[3],
                        "data_directory": fields[5],
                    }
                )
        return clusters


_STATE_MARK = "#homelab-memory-store"


class MemoryStoreState(FactBase[dict[str, Any] | None]):
    """What the running cluster holds: data checksums, the schema digest, the roles' verifiers.

    ``roles`` maps each client role with a SCRAM verifier to its ``iterations``, ``salt``
    (base64) and ``digest`` (SHA-256 of the whole verifier): enough to check a password
    without reading the verifier's keys. None when PostgreSQL does not answer.
    """

    reads_other_hosts = False

    def command(self) -> str:
        sql = (
            "SELECT 'checksums=' || current_setting('data_checksums');"
            "SELECT 'schema=' || coalesce(shobj_description(oid, 'pg_database'), '')"
            f" FROM pg_database WHERE datname = '{DATABASE}';"
        )
        scram = "split_part(rolpassword, '$', 2)"
        roles_sql = (
            f"SELECT rolname || ':' || split_part({scram}, ':', 1) || ':'"
            f" || split_part({scram}, ':', 2) || ':'"
            " || encode(sha256(convert_to(rolpassword, 'UTF8')), 'hex') FROM pg_authid"
            f" WHERE rolname IN ({', '.join(repr(r) for r in CLIENT_ROLES + REPLICATION_ROLES)})"
            " AND rolpassword LIKE 'SCRAM-SHA-256$%' ORDER BY 1"
        )
        return (
            "command -v psql >/dev/null 2>&1 || exit 0; "
            f'runuser -u postgres -- psql -XAtq -c "{sql}" 2>/dev/null || exit 0; '
            f"echo '{_STATE_MARK}'; "
            f'runuser -u postgres -- psql -XAtq -c "{roles_sql}" 2>/dev/null || true'
        )

    def process(self, output: list[str]) -> dict[str, Any] | None:
        if _STATE_MARK not in output:
            return None
        values: dict[str, Any] = {"checksums": None, "schema": None}
        for line in output[: output.index(_STATE_MARK)]:
            key, _, value = line.partition("=")
            values[key] = value
        roles: dict[str, dict[str, Any]] = {}
        for line in output[output.index(_STATE_MARK) + 1 :]:
            parts = line.strip().split(":")
            if len(parts) == 4 and parts[1].isdigit():
                role, iterations, salt, digest = parts
                roles[role] = {"iterations": int(iterations), "salt": salt, "digest": digest}
        values["roles"] = roles
        return values


def scram_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    ``salt`` None draws a random 16-byte salt, as PostgreSQL does.
    """
    secret = password.encode()
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def verifier_digest(verifier: str) -> str:
    """What ``MemoryStoreState`` reports of a stored verifier (SHA-256, hex)."""
    return hashlib.sha256(verifier.encode()).hexdigest()


def kept_or_new_verifier(password: str, stored: Mapping[str, Any] | None) -> str:
    """The stored verifier when ``password`` still matches it (recomputed with its salt and
    iterations), else a new one with a random salt."""
    if stored:
        try:
            salt = base64.b64decode(stored["salt"], validate=True)
        except (ValueError, binascii.Error):
            salt = b""
        if salt:
            again = scram_verifier(password, salt, int(stored["iterations"]))
            if hmac.compare_digest(verifier_digest(again), str(stored["digest"])):
                return again
    return scram_verifier(password)


def postgresql_major(configured: int | None) -> int:
    """``postgresql_version`` or the distribution's own major version."""
    if configured is not None:
        return configured
    meta = host.get_fact(LinuxDistribution).get("release_meta") or {}
    key = (meta.get("ID", "").lower(), meta.get("VERSION_ID", ""))
    guest = MACHINE.read(host).guest
    expected = DISTRIBUTION_MAJOR_BY_OS.get(guest["os"]) if guest else None
    if key in DISTRIBUTION_MAJOR and expected and expected != DISTRIBUTION_MAJOR[key]:
        raise RuntimeError(
            f"host {host.name!r}: key 'guest.os' is {guest['os']!r} but the host runs"
            f" {meta.get('PRETTY_NAME')}; fix guest.os (the repository host reads the"
            " PostgreSQL major from it) or set postgresql_version"
        )
    if key not in DISTRIBUTION_MAJOR:
        known = ", ".join(f"{d} {v}: {m}" for (d, v), m in DISTRIBUTION_MAJOR.items())
        raise RuntimeError(
            f"host {host.name!r}: key 'postgresql_version' is None and the distribution's"
            f" PostgreSQL major is not known for {meta.get('PRETTY_NAME') or key}; set"
            f" postgresql_version (known: {known})"
        )
    return DISTRIBUTION_MAJOR[key]


def major_from_data(target: Any) -> int:
    """``target``'s PostgreSQL major from its data alone (``postgresql_version``, else its
    ``guest.os``): what another host knows of the memory store without its facts."""
    major = DATA.read(target).postgresql_version
    guest = MACHINE.read(target).guest
    if major is None and guest:
        major = DISTRIBUTION_MAJOR_BY_OS.get(guest["os"])
    if major is None:
        raise RuntimeError(
            f"host {host.name!r}: cannot tell the PostgreSQL major of {target.name!r} from the"
            f" data: set postgresql_version for {target.name} (or its guest.os)"
        )
    return major


def pool_path_of(target: Any, pool: str) -> str:
    """The path of ``target``'s pool ``pool`` (``target``: a pyinfra host)."""
    pools = MACHINE.read(target).pools
    if pool not in pools:
        raise RuntimeError(
            f"host {target.name!r}: key 'postgresql_pool' is {pool!r}; expected one of this"
            f" host's pools ({', '.join(pools) or 'it has none: add it to pools'})"
        )
    return pools[pool]["path"].rstrip("/")


def data_directory_of(target: Any, pool: str, major: int) -> str:
    """``<pool path>/postgresql/<major>/main`` of ``target``'s ``pool``."""
    return f"{pool_path_of(target, pool)}/postgresql/{major}/main"


def sizing(ram_bytes: int, percent: int, max_connections: int) -> dict[str, str]:
    """postgresql.conf memory settings for a host with ``ram_bytes`` of RAM (in MB units)."""
    mb = ram_bytes // 1024**2
    budget = mb * percent // 100
    shared = max(128, budget // 2)
    return {
        "shared_buffers": f"{shared}MB",
        "effective_cache_size": f"{max(256, min(mb // 2, budget * 3))}MB",
        "maintenance_work_mem": f"{max(64, min(1024, budget // 8))}MB",
        "work_mem": f"{max(4, min(64, budget // 4 // max_connections))}MB",
        "wal_buffers": "16MB",
    }


def _ram(configured: int | None) -> int:
    if configured is not None:
        return configured
    ram = host.get_fact(HostMemory)
    if not ram:
        raise RuntimeError(
            f"host {host.name!r}: cannot read the host's RAM; set key 'postgresql_memory'"
        )
    return ram


def hba_clients(extra: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(role, CIDR) pairs pg_hba admits over the network, beyond local and loopback."""
    clients = [
        (role, f"{MACHINE.read(other).lan_address}/32")
        for other in inventory.get_group(EMBEDDER, [])
        for role in EMBEDDER_ROLES
    ]
    clients += [(c["role"], f"{ipaddress.IPv4Address(c['address'])}/32") for c in extra]
    return sorted(set(clients))


def wal_receivers() -> list[tuple[str, str]]:
    """(application name, LAN address) of each of the inventory's WAL receivers."""
    return [
        (application_name(target.name), str(MACHINE.read(target).lan_address))
        for target in receivers()
    ]


def replication_clients() -> list[tuple[str, str]]:
    """(role, CIDR) pg_hba admits to streaming replication: the receivers' addresses."""
    return sorted({(WAL_ROLE, f"{address}/32") for _, address in wal_receivers()})


def synchronous_settings(settings: Any) -> dict[str, Any] | None:
    """synchronous_standby_names and the slots' WAL cap, or None without receivers."""
    names = [name for name, _ in wal_receivers()]
    if not names:
        return None
    return {
        "names": standby_names(names, settings.memory_store_synchronous_receivers),
        "keep": settings.memory_store_slot_wal_keep // 1024**2,
    }


def verifiers(stored: Mapping[str, Any]) -> dict[str, str]:
    """Each login role's verifier: the stored one while its password matches, else new."""
    secrets = load_secrets()
    roles = CLIENT_ROLES + REPLICATION_ROLES
    missing = [
        f"memory_store_{role}_password"
        for role in roles
        if f"memory_store_{role}_password" not in secrets
    ]
    if missing:
        raise RuntimeError(
            f"host {host.name!r}: the secrets file lacks {', '.join(missing)}"
            " (see secrets.example.toml)"
        )
    return {
        role: kept_or_new_verifier(
            secrets[f"memory_store_{role}_password"].reveal(), stored.get(role)
        )
        for role in roles
    }


def render_schema(dimensions: int, role_verifiers: Mapping[str, str]) -> str:
    """The schema SQL (template) with its digest in the database comment."""
    from pyinfra.api.util import get_template

    body = get_template(template_path("memory-store-schema.sql.j2")).render(
        database=DATABASE,
        owner=OWNER,
        dimensions=dimensions,
        verifiers={r: v for r, v in role_verifiers.items() if r in CLIENT_ROLES},
        replication={r: v for r, v in role_verifiers.items() if r in REPLICATION_ROLES},
        digest="@DIGEST@",
    )
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return body.replace("@DIGEST@", f"homelab-as-code schema {digest}")


def schema_comment(sql: str) -> str:
    return next(
        line.split("'")[1]
        for line in sql.splitlines()
        if line.startswith("COMMENT ON DATABASE") and "homelab-as-code schema" in line
    )


@dataclass(frozen=True)
class Cluster:
    """Where the store's cluster lives and what it should hold, worked out before any change."""

    major: int
    datadir: str
    unit: str
    conf_dir: str
    exists: bool
    verifiers: dict[str, str]
    sql: str
    listen: list[str]


@deploy("Memory store (PostgreSQL + pgvector)", data_defaults=DATA.defaults())
def memory_store() -> None:
    settings = DATA.read(host)
    cluster = _plan_cluster(settings)
    _install_packages(cluster)
    # Before the cluster exists: a rebuilt host restores from the repository instead.
    backup = database_host(
        cluster.major, cluster.datadir, pool_path_of(host, settings.postgresql_pool)
    )
    _bootstrap(cluster, backup)
    _configure_and_run(settings, cluster, backup)
    _apply_schema(cluster)


def _plan_cluster(settings: Any) -> Cluster:
    """The cluster's major, directories and unit, its schema and listen addresses; an existing
    cluster in another directory stops the run."""
    major = postgresql_major(settings.postgresql_version)
    datadir = data_directory_of(host, settings.postgresql_pool, major)
    clusters = host.get_fact(PostgresqlClusters) or []
    ours = next((c for c in clusters if c["version"] == major and c["name"] == "main"), None)
    if ours and ours["data_directory"].rstrip("/") != datadir:
        raise RuntimeError(
            f"host {host.name!r}: cluster {major}/main exists in {ours['data_directory']},"
            f" not in {datadir} (key 'postgresql_pool'); it is left alone: move it by hand"
            " (or set postgresql_pool) and run again"
        )
    state = host.get_fact(MemoryStoreState) or {}
    role_verifiers = verifiers(state.get("roles") or {})
    sql = render_schema(settings.memory_embedding_dimensions, role_verifiers)
    lan = str(MACHINE.read(host).lan_address)
    listen = ["127.0.0.1", "::1", lan]
    if settings.postgresql_tailnet_address:
        listen.append(str(settings.postgresql_tailnet_address))
    return Cluster(
        major=major,
        datadir=datadir,
        unit=f"postgresql@{major}-main.service",
        conf_dir=f"/etc/postgresql/{major}/main",
        exists=ours is not None,
        verifiers=role_verifiers,
        sql=sql,
        listen=listen,
    )


def _install_packages(cluster: Cluster) -> None:
    """postgresql-common told how to create clusters, then PostgreSQL, pgvector and the
    cluster's parent directory on the pool."""
    major, datadir = cluster.major, cluster.datadir
    apt.packages(name="Install postgresql-common", packages=["postgresql-common"])
    files.directory(name="createcluster.d", path="/etc/postgresql-common/createcluster.d")
    files.template(
        name="New clusters: data checksums, data on the SSD pool, no automatic main cluster",
        src=template_path("createcluster-homelab.conf.j2"),
        dest="/etc/postgresql-common/createcluster.d/homelab.conf",
        mode="644",
        pool_path=datadir.rsplit("/", 3)[0],
    )
    apt.packages(
        name=f"Install PostgreSQL {major} and pgvector",
        packages=[f"postgresql-{major}", f"postgresql-{major}-pgvector"],
    )
    files.directory(
        name="PostgreSQL's directory on the pool",
        path=datadir.rsplit("/", 2)[0],
        user="postgres",
        group="postgres",
        mode="700",
    )


def _bootstrap(cluster: Cluster, backup: Archiving) -> None:
    """The store's scripts and their settings; the cluster created (or restored) when it does
    not exist yet."""
    major = cluster.major
    files.directory(name="Memory store config directory", path=CONFIG_DIR, mode="700")
    files.put(
        name="Install the memory store bootstrap script",
        src=file_path("memory-store-bootstrap"),
        dest=BOOTSTRAP_SCRIPT,
        mode="755",
    )
    files.put(
        name="Install the memory store integrity check",
        src=file_path("memory-store-integrity"),
        dest=INTEGRITY_SCRIPT,
        mode="755",
    )
    files.template(
        name="Memory store settings for its scripts",
        src=template_path("memory-store.env.j2"),
        dest=ENV_FILE,
        mode="644",
        major=major,
        datadir=cluster.datadir,
        database=DATABASE,
        tables=" ".join(TABLES),
        textfile_dir=TEXTFILE_DIR,
        extra={
            "PGBACKREST_STANZA": backup.stanza,
            "RESTORE_SCRATCH": backup.scratch,
            # name=address of each WAL receiver (the restore's WAL after the archive's).
            "WAL_RECEIVERS": shlex.quote(" ".join(f"{n}={a}" for n, a in wal_receivers())),
            "WAL_SPOOL_PORT": SPOOL_PORT,
            "WAL_FETCH": WAL_FETCH_SCRIPT,
        },
    )
    files.put(
        name="Install the restore's WAL fetch (the archive, then the WAL receivers)",
        src=file_path("memory-store-wal-fetch"),
        dest=WAL_FETCH_SCRIPT,
        mode="755",
    )
    _wal_fetch_files(backup.stanza)
    files.directory(name="node-exporter textfile directory", path=TEXTFILE_DIR, mode="755")
    if not cluster.exists:
        server.shell(
            name=f"Create cluster {major}/main with checksums (or restore it from the backups)",
            commands=[BOOTSTRAP_SCRIPT],
        )


def _wal_fetch_files(stanza: str) -> None:
    """The restore's WAL fetch: its settings and client certificate, postgres' only."""
    tls = spool_tls(host)
    files.directory(
        name="WAL fetch directory (settings, client TLS)", path=WAL_FETCH_DIR, user="postgres",
        group="postgres", mode="700",
    )  # fmt: skip
    receivers_words = " ".join(f"{n}={a}" for n, a in wal_receivers())
    settings = (
        "# Managed by homelab-as-code (memory_store.py): local changes are overwritten.\n"
        "# Read by memory-store-wal-fetch, the restore's restore_command.\n"
        f"PGBACKREST_STANZA={stanza}\nWAL_RECEIVERS='{receivers_words}'\n"
        f"WAL_SPOOL_PORT={SPOOL_PORT}\n"
    )
    for name, text in (("fetch.env", settings), ("ca.crt", tls.ca_cert), ("client.crt", tls.cert)):
        files.put(
            name=f"WAL fetch {name}",
            src=StringIO(text),
            dest=f"{WAL_FETCH_DIR}/{name}",
            user="postgres",
            group="postgres",
            mode="644",
        )
    secret_file(
        name="WAL fetch client.key",
        content=Secret(tls.key),
        dest=f"{WAL_FETCH_DIR}/client.key",
        user="postgres",
        group="postgres",
        mode="600",
    )


def server_addresses(target: Any, tailnet: Any) -> tuple[str, ...]:
    """The addresses clients reach ``target``'s PostgreSQL at: its certificate's IP names."""
    addresses = [str(MACHINE.read(target).lan_address)]
    if tailnet:
        addresses.append(str(tailnet))
    return tuple(addresses)


def server_tls(target: Any) -> HostTls:
    """The memory store's CA, ``target``'s PostgreSQL certificate and key (from the seed)."""
    return host_tls(
        tls_seed(),
        target.name,
        str(MACHINE.read(target).domain),
        purpose="postgresql",
        addresses=server_addresses(target, DATA.read(target).postgresql_tailnet_address),
    )


def _tls_files(conf_dir: str) -> list[OperationMeta]:
    """The server's certificate, key and CA, readable by postgres only; their operations."""
    tls = server_tls(host)
    directory = f"{conf_dir}/{TLS_SUBDIR}"
    files.directory(
        name="PostgreSQL TLS directory", path=directory, user="postgres", group="postgres",
        mode="700",
    )  # fmt: skip
    changes = [
        files.put(
            name=f"PostgreSQL TLS {name}",
            src=StringIO(text),
            dest=f"{directory}/{name}",
            user="postgres",
            group="postgres",
            mode="644",
        )
        for name, text in (("ca.crt", tls.ca_cert), ("server.crt", tls.cert))
    ]
    changes.append(
        secret_file(
            name="PostgreSQL TLS server.key",
            content=Secret(tls.key),
            dest=f"{directory}/server.key",
            user="postgres",
            group="postgres",
            mode="600",
        )
    )
    return changes


def _configure_and_run(settings: Any, cluster: Cluster, backup: Archiving) -> None:
    """PostgreSQL's settings and pg_hba, the units' mount and integrity ordering; the cluster
    runs and takes changed settings (reload, restart only when one needs it)."""
    unit, datadir, conf_dir = cluster.unit, cluster.datadir, cluster.conf_dir
    tls = _tls_files(conf_dir)
    conf = files.template(
        name="PostgreSQL settings (listen, scram-sha-256, sized from RAM)",
        src=template_path("postgresql-homelab.conf.j2"),
        dest=f"{conf_dir}/conf.d/homelab.conf",
        user="postgres",
        group="postgres",
        mode="644",
        listen=cluster.listen,
        port=PORT,
        tls_dir=f"{conf_dir}/{TLS_SUBDIR}",
        max_connections=settings.postgresql_max_connections,
        archive={"stanza": backup.stanza, "timeout": backup.timeout, "fetch": WAL_FETCH_SCRIPT},
        synchronous=synchronous_settings(settings),
        sizes=sizing(
            _ram(settings.postgresql_memory),
            settings.postgresql_memory_percent,
            settings.postgresql_max_connections,
        ),
    )
    hba = files.template(
        name="pg_hba: declared clients only, scram-sha-256, TLS over the network",
        src=template_path("pg_hba.conf.j2"),
        dest=f"{conf_dir}/pg_hba.conf",
        user="postgres",
        group="postgres",
        mode="640",
        database=DATABASE,
        clients=hba_clients(settings.postgresql_extra_clients),
        replication_clients=replication_clients(),
    )
    mounts = files.template(
        name=f"{unit} needs its data directory's mount",
        src=template_path("postgresql-homelab-mounts.conf.j2"),
        dest=f"/etc/systemd/system/postgresql@{cluster.major}-main.service.d/homelab-mounts.conf",
        mode="644",
        paths=[datadir, backup.spool],
    )
    integrity_unit = files.template(
        name=f"{INTEGRITY_UNIT}: the store's check before any client",
        src=template_path("memory-store-integrity.service.j2"),
        dest=f"/etc/systemd/system/{INTEGRITY_UNIT}",
        mode="644",
        postgresql_unit=unit,
        paths=[datadir],
        script=INTEGRITY_SCRIPT,
    )
    systemd.daemon_reload(
        name="systemd reads the memory store units",
        _if=lambda: mounts.did_change() or integrity_unit.did_change(),
    )
    systemd.service(
        name=f"{unit} runs and starts at boot", service=unit, running=True, enabled=True
    )
    server.shell(
        name="PostgreSQL takes the new settings (reload; restart only when one needs it)",
        commands=[
            f"systemctl reload {unit}",
            "if runuser -u postgres -- psql -XAtq -c"
            ' "SELECT 1 FROM pg_settings WHERE pending_restart LIMIT 1" | grep -q 1;'
            f" then systemctl restart {unit}; fi",
        ],
        _if=lambda: conf.did_change() or hba.did_change() or any(t.did_change() for t in tls),
    )


@deploy("Memory store roll-forward check", data_defaults=DATA.defaults())
def memory_store_roll_forward() -> None:
    """The check before every start of PostgreSQL that brings a rolled-back cluster forward.

    Runs after the firewalls (deploys/roles.py: AFTER_FIREWALL), once the repository's stanza
    and first backup exist and the WAL receivers are set up: a reboot earlier in a first
    install (the ROCm driver's) starts a new cluster that has nothing to catch up with, and
    the check could not ask an archive that does not exist yet."""
    settings = DATA.read(host)
    major = postgresql_major(settings.postgresql_version)
    datadir = data_directory_of(host, settings.postgresql_pool, major)
    _roll_forward(f"postgresql@{major}-main.service", datadir)


def _roll_forward(postgresql_unit: str, datadir: str) -> None:
    files.put(
        name="Install the memory store's roll-forward check",
        src=file_path("memory-store-roll-forward"),
        dest=ROLL_FORWARD_SCRIPT,
        mode="755",
    )
    unit = files.template(
        name=f"{ROLL_FORWARD_UNIT}: before PostgreSQL, catch up after a rollback",
        src=template_path("memory-store-roll-forward.service.j2"),
        dest=f"/etc/systemd/system/{ROLL_FORWARD_UNIT}",
        mode="644",
        postgresql_unit=postgresql_unit,
        paths=[datadir],
        script=ROLL_FORWARD_SCRIPT,
    )
    dropin = files.template(
        name=f"{postgresql_unit} starts after the roll-forward check",
        src=template_path("postgresql-homelab-roll-forward.conf.j2"),
        dest=f"/etc/systemd/system/{postgresql_unit}.d/homelab-roll-forward.conf",
        mode="644",
        unit=ROLL_FORWARD_UNIT,
    )
    systemd.daemon_reload(
        name="systemd reads the roll-forward check",
        _if=lambda: unit.did_change() or dropin.did_change(),
    )
    systemd.service(
        name=f"{ROLL_FORWARD_UNIT} runs before PostgreSQL at every boot",
        service=ROLL_FORWARD_UNIT,
        running=True,
        enabled=True,
    )


def _apply_schema(cluster: Cluster) -> None:
    """The database, roles and schema applied when they differ from the running cluster's
    (a cluster without data checksums stops the run); the integrity check runs."""
    state = host.get_fact(MemoryStoreState)
    if state and state.get("checksums") == "off":
        raise RuntimeError(
            f"host {host.name!r}: cluster {cluster.major}/main runs without data checksums; the"
            f" store needs them (enable with pg_checksums --enable while it is stopped)"
        )
    # Not files.put: the file holds the roles' password verifiers, which --diff would print.
    schema = secret_file(
        name="Memory store schema and roles (root-only SQL file)",
        content=Secret(cluster.sql),
        dest=SCHEMA_FILE,
    )
    current = (
        state is not None
        and state.get("schema") == schema_comment(cluster.sql)
        and all(
            (state["roles"].get(role) or {}).get("digest") == verifier_digest(verifier)
            for role, verifier in cluster.verifiers.items()
        )
    )
    server.shell(
        name="Apply the memory store schema and roles (psql -f as postgres)",
        # Committed locally, not waiting for a WAL receiver: the schema comes from the repository
        # (no memory is in it), and a rollout must not hang while the receivers are away.
        commands=[
            "runuser -u postgres -- env PGOPTIONS='-c synchronous_commit=local'"
            f" psql -X -q -v ON_ERROR_STOP=1 -f - < {SCHEMA_FILE}"
        ],
        _if=lambda: schema.did_change() or not current,
    )
    systemd.service(
        name=f"{INTEGRITY_UNIT} passes and runs at every start",
        service=INTEGRITY_UNIT,
        running=True,
        enabled=True,
    )
