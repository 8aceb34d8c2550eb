"""pgBackRest on the repository host (the hypervisor): the repository, its backups and stanza.

The repository lives in ``<pools[pgbackrest_repository_pool].path>/pgbackrest``, served to the
database host by pgBackRest's TLS server. Full and differential backups run on systemd timers,
retention is data, a weekly ``verify`` checks the repository; each writes its outcome for
node-exporter's textfile collector (``homelab_backup_*``). After the firewall (both hosts
reachable), the deploy creates the stanza when the repository lacks it, runs ``check`` and
takes the first full backup when there is none (each gated on the repository's ``info``, so a
second run does nothing). The shared parts (keys, TLS, install) are in
``tasks/common/pgbackrest.py``.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server, systemd

from tasks.ageis_node.memory_store import DATA as STORE
from tasks.ageis_node.memory_store import DISTRIBUTION_MAJOR_BY_OS, data_directory_of
from tasks.common.datamodel.machine import AGEIS_NODE, MACHINE
from tasks.common.pgbackrest import (
    BACKUP_SCRIPT,
    CONF,
    DATA,
    REPO_USER,
    STANZA_SCRIPT,
    TLS_DIR,
    TLS_PORT,
    PgbackrestInfo,
    database_host_names,
    in_run,
    prepare_host,
    repository_host_name,
    run_server,
    server_unit,
)
from tasks.common.ports import Port
from tasks.common.templating import file_path, template_path

PORTS = (Port(TLS_PORT, "tcp", "pgbackrest-server", probe="tcp", consumers=(AGEIS_NODE,)),)
JOBS = ("full", "diff", "verify")


def _database_data_directory(name: str) -> str:
    """The data directory of the database host ``name``, from that host's data."""
    other = inventory.get_host(name)
    store = STORE.read(other)
    major = store.postgresql_version
    guest = MACHINE.read(other).guest
    if major is None and guest:
        major = DISTRIBUTION_MAJOR_BY_OS.get(guest["os"])
    if major is None:
        raise RuntimeError(
            f"host {host.name!r}: cannot tell the PostgreSQL major of {name!r} from the data:"
            f" set postgresql_version for {name} (or its guest.os)"
        )
    return data_directory_of(other, store.postgresql_pool, major)


@deploy("pgBackRest repository", data_defaults=DATA.defaults())
def pgbackrest_repository() -> None:
    settings = DATA.read(host)
    repo = repository_host_name(settings.pgbackrest_repository_host)
    if repo != host.name:
        host.noop(f"the pgBackRest repository lives on {repo}")
        return
    repo_path = _repository_path(settings)
    database = _served_database()
    _repository_user()
    installed = prepare_host(REPO_USER, REPO_USER, settings, database[0])
    conf = _configure(settings, repo_path, database)
    unit = server_unit(REPO_USER, [repo_path])
    units = [unit, *_backup_units(settings, repo_path)]
    systemd.daemon_reload(
        name="systemd reads the pgBackRest units",
        _if=lambda: any(u.did_change() for u in units),
    )
    run_server(conf, unit, installed)
    for job in JOBS:
        systemd.service(
            name=f"pgbackrest-run@{job}.timer",
            service=f"pgbackrest-run@{job}.timer",
            running=True,
            enabled=True,
        )


def _repository_path(settings: Any) -> str:
    """``<pool path>/pgbackrest`` of this host's ``pgbackrest_repository_pool``; an unknown
    pool stops the run."""
    pools = MACHINE.read(host).pools
    pool = settings.pgbackrest_repository_pool
    if pool not in pools:
        raise RuntimeError(
            f"host {host.name!r}: key 'pgbackrest_repository_pool' is {pool!r}; expected one of"
            f" this host's pools ({', '.join(pools) or 'none'})"
        )
    return f"{pools[pool]['path'].rstrip('/')}/pgbackrest"


def _served_database() -> tuple[str, str]:
    """The one database host (name, data directory) the repository serves; the run stops
    unless the inventory has exactly one."""
    databases = [(name, _database_data_directory(name)) for name in database_host_names()]
    if len(databases) != 1:
        raise RuntimeError(
            f"host {host.name!r}: the pgBackRest repository serves exactly one database host;"
            f" the inventory's ageis_node group has {len(databases)}"
        )
    return databases[0]


def _repository_user() -> None:
    """The system user and group that own the repository."""
    server.group(name="pgbackrest group", group=REPO_USER, system=True)
    server.user(
        name="pgbackrest user (owns the repository)",
        user=REPO_USER,
        group=REPO_USER,
        system=True,
        home="/var/lib/pgbackrest",
        shell="/usr/sbin/nologin",
    )


def _configure(settings: Any, repo_path: str, database: tuple[str, str]) -> OperationMeta:
    """The repository directory and pgbackrest.conf naming the database host; returns the
    config's operation."""
    files.directory(
        name="pgBackRest repository on the HDD pool",
        path=repo_path,
        user=REPO_USER,
        group=REPO_USER,
        mode="750",
    )
    return files.template(
        name="pgbackrest.conf (repository host)",
        src=template_path("pgbackrest-repo.conf.j2"),
        dest=CONF,
        user="root",
        group=REPO_USER,
        mode="640",
        stanza=settings.pgbackrest_stanza,
        repo_path=repo_path,
        port=TLS_PORT,
        tls_dir=TLS_DIR,
        process_max=settings.pgbackrest_process_max,
        retention_full=settings.pgbackrest_retention_full,
        retention_diff=settings.pgbackrest_retention_diff,
        db_host=database[0],
        db_path=database[1],
    )


def _backup_units(settings: Any, repo_path: str) -> list[OperationMeta]:
    """The backup and stanza scripts, ``pgbackrest-run@.service`` and its full, diff and verify
    timers; returns the unit files' operations."""
    files.put(
        name="Install pgbackrest-run",
        src=file_path("pgbackrest-run"),
        dest=BACKUP_SCRIPT,
        mode="755",
    )
    files.put(
        name="Install pgbackrest-stanza-ready",
        src=file_path("pgbackrest-stanza-ready"),
        dest=STANZA_SCRIPT,
        mode="755",
    )
    service = files.template(
        name="pgbackrest-run@.service (backup full/diff, verify)",
        src=template_path("pgbackrest-run@.service.j2"),
        dest="/etc/systemd/system/pgbackrest-run@.service",
        mode="644",
        script=BACKUP_SCRIPT,
        stanza=settings.pgbackrest_stanza,
        mounts=[repo_path],
    )
    units = [service]
    for job, schedule, what in (
        ("full", settings.pgbackrest_full_schedule, "Full backup of the memory store"),
        ("diff", settings.pgbackrest_diff_schedule, "Differential backup of the memory store"),
        ("verify", settings.pgbackrest_verify_schedule, "Verify the pgBackRest repository"),
    ):
        units.append(
            files.template(
                name=f"pgbackrest-run@{job}.timer",
                src=template_path("systemd-timer.j2"),
                dest=f"/etc/systemd/system/pgbackrest-run@{job}.timer",
                mode="644",
                description=what,
                schedule=schedule,
                delay="10min",
            )
        )
    return units


@deploy("pgBackRest stanza", data_defaults=DATA.defaults())
def pgbackrest_stanza() -> None:
    """After the firewall (both hosts reachable): stanza-create, check, a first full backup.

    Gated on the repository's ``info``: an existing stanza with a backup does nothing.
    """
    settings = DATA.read(host)
    if repository_host_name(settings.pgbackrest_repository_host) != host.name:
        return
    info = host.get_fact(PgbackrestInfo, stanza=settings.pgbackrest_stanza, user=REPO_USER)
    if info and info["status"] == 0 and info["backups"] > 0:
        return
    absent = [name for name in database_host_names() if in_run(name) is None]
    if absent:
        # A first install: the memory store's VM is created in this run and reached in the next.
        host.noop(
            f"pgBackRest stanza and first backup: {', '.join(absent)} is not in this run (not"
            " created yet, or not reachable): they come with the run that reaches it"
        )
        return
    databases = [in_run(name) for name in database_host_names()]
    server.shell(
        name="Stanza create, check and a first full backup (the repository has none)",
        commands=[f"{STANZA_SCRIPT} {settings.pgbackrest_stanza}"],
        # Not when a database host failed earlier in this run: the stanza would wait for it.
        _if=lambda: not any(db in host.state.failed_hosts for db in databases),
    )
