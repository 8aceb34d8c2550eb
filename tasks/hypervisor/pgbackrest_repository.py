"""pgBackRest on the repository host (the hypervisor): the repository, its backups and stanza.

The repository lives in ``<pools[pgbackrest_repository_pool].path>/pgbackrest``, served to the
database host by pgBackRest's TLS server. Full and differential backups run on systemd timers,
retention is data, a weekly ``verify`` checks the repository; each writes its outcome for
node-exporter's textfile collector (``homelab_backup_*``). After the firewall (both hosts
reachable), the deploy creates the stanza when the repository lacks it, runs ``check`` and
takes the first full backup when there is none (each gated on the repository's ``info``, so a
second run does nothing). The shared parts (keys, TLS, install) are in
``tasks/common/pgbackrest.py``.

The repository is encrypted (``pgbackrest_repository_cipher``, default ``aes-256-cbc``) with the
secret ``pgbackrest_repository_cipher_pass``, kept in a root-only drop-in
(``/etc/pgbackrest/conf.d/homelab-cipher.conf``, group pgbackrest) that ``--diff`` never shows.
Only the repository host holds the passphrase: pgBackRest keeps a per-stanza key inside the
encrypted ``archive.info`` and ``backup.info``, which the database host's archive-push, backup
and restore receive through the TLS server, never the repository's passphrase. Both the type
and the passphrase are fixed when the stanza is created; a run that would change either on an
existing repository stops before any change, saying how to keep it or start a new one.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, server, systemd

from tasks.ageis_node.memory_store import DATA as STORE
from tasks.ageis_node.memory_store import data_directory_of, major_from_data
from tasks.common.datamodel.machine import AGEIS_NODE, MACHINE
from tasks.common.datamodel.secrets import Secret, load_secrets
from tasks.common.pgbackrest import (
    BACKUP_SCRIPT,
    CIPHER_CONF,
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
from tasks.common.secret_files import secret_file
from tasks.common.templating import file_path, template_path

PORTS = (Port(TLS_PORT, "tcp", "pgbackrest-server", probe="tcp", consumers=(AGEIS_NODE,)),)
JOBS = ("full", "diff", "verify")


def _database_data_directory(name: str) -> str:
    """The data directory of the database host ``name``, from that host's data."""
    other = inventory.get_host(name)
    return data_directory_of(other, STORE.read(other).postgresql_pool, major_from_data(other))


@deploy("pgBackRest repository", data_defaults=DATA.defaults())
def pgbackrest_repository() -> None:
    settings = DATA.read(host)
    repo = repository_host_name(settings.pgbackrest_repository_host)
    if repo != host.name:
        host.noop(f"the pgBackRest repository lives on {repo}")
        return
    repo_path = _repository_path(settings)
    database = _served_database()
    cipher_text = _cipher_settings(settings, repo_path)
    _repository_user()
    installed = prepare_host(REPO_USER, REPO_USER, settings, database[0])
    conf = _configure(settings, repo_path, database)
    cipher = _cipher_file(cipher_text)
    unit = server_unit(REPO_USER, [repo_path])
    units = [unit, *_backup_units(settings, repo_path)]
    systemd.daemon_reload(
        name="systemd reads the pgBackRest units",
        _if=lambda: any(u.did_change() for u in units),
    )
    run_server([conf, cipher], unit, installed)
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


class RepositoryCipherRefused(RuntimeError):
    """The data would change the encryption of an existing repository, which pgBackRest
    cannot do."""


def cipher_drop_in(cipher: str, passphrase: str) -> str:
    """The drop-in that encrypts the repository (pgBackRest reads conf.d after its config)."""
    return (
        "# Managed by homelab-as-code (pgbackrest_repository_cipher and the secret"
        " pgbackrest_repository_cipher_pass).\n"
        f"[global]\nrepo1-cipher-type={cipher}\nrepo1-cipher-pass={passphrase}\n"
    )


def _cipher_settings(settings: Any, repo_path: str) -> Secret | None:
    """The drop-in's text (None: no encryption); the run stops, before any change, when it
    would change the encryption of the existing repository."""
    cipher = settings.pgbackrest_repository_cipher
    stanza = settings.pgbackrest_stanza
    info = host.get_fact(PgbackrestInfo, stanza=stanza, user=REPO_USER)
    # Status 1 is "missing stanza path": nothing created yet, any cipher can still be chosen.
    existing = info["cipher"] if info and info["status"] != 1 else None
    keep = (
        f"keep the repository as it is with pgbackrest_repository_cipher = {existing!r}, or"
        f" start a new one: stop archiving on the database host (or accept its WAL piling up"
        f" in pg_wal), move {repo_path} aside, and run again (the stanza and a first full"
        " backup are made anew; the old repository stays readable with its old settings)"
    )
    if existing is not None and existing != cipher:
        raise RepositoryCipherRefused(
            f"host {host.name!r}: key 'pgbackrest_repository_cipher' is {cipher!r}, but the"
            f" repository in {repo_path} holds stanza {stanza!r} with cipher {existing!r};"
            f" pgBackRest cannot change the encryption of an existing repository. Expected"
            f" {existing!r}: {keep}. Nothing was changed"
        )
    if cipher == "none":
        return None
    secrets = load_secrets()
    if "pgbackrest_repository_cipher_pass" not in secrets:
        raise RuntimeError(
            f"host {host.name!r}: the secrets file lacks pgbackrest_repository_cipher_pass"
            " (see secrets.example.toml)"
        )
    text = Secret(cipher_drop_in(cipher, secrets["pgbackrest_repository_cipher_pass"].reveal()))
    current = host.get_fact(Sha256File, path=CIPHER_CONF)
    wanted = hashlib.sha256(text.reveal().encode()).hexdigest()
    if existing is not None and current is not None and current != wanted:
        raise RepositoryCipherRefused(
            f"host {host.name!r}: secret 'pgbackrest_repository_cipher_pass' differs from the"
            f" passphrase the repository in {repo_path} was created with ({CIPHER_CONF});"
            " pgBackRest cannot change it on an existing repository. Expected the previous"
            f" passphrase back in the secrets file, or a new repository: {keep}. Nothing was"
            " changed"
        )
    return text


def _cipher_file(text: Secret | None) -> OperationMeta:
    """The encryption drop-in, readable by the repository's group only (absent: no cipher)."""
    files.directory(name="pgBackRest conf.d", path=CIPHER_CONF.rsplit("/", 1)[0], mode="755")
    if text is None:
        return files.file(
            name="No repository encryption drop-in (pgbackrest_repository_cipher is none)",
            path=CIPHER_CONF,
            present=False,
        )
    return secret_file(
        name="Repository encryption (pgBackRest drop-in, passphrase never shown)",
        content=text,
        dest=CIPHER_CONF,
        user="root",
        group=REPO_USER,
        mode="640",
    )


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
