"""pgBackRest on the database host: archiving to the repository and a daily restore test.

``tasks/ageis_node/memory_store.py`` calls :func:`database_host` before its cluster exists.
PostgreSQL archives
with ``archive_command = pgbackrest archive-push`` in async mode from a local spool
(``pgbackrest_spool_path``), ``archive_timeout`` is ``pgbackrest_archive_timeout`` (the most
WAL a dead disk can take with it), and a daily restore test (``memory-store-restore-test``)
proves the newest backup plus WAL restores and holds what the live store held. The shared
parts (keys, TLS, install) are in ``tasks/common/pgbackrest.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import files, server, systemd

from tasks.common.pgbackrest import (
    CONF,
    DATA,
    METRICS_SCRIPT,
    RESTORE_TEST_SCRIPT,
    TEXTFILE_DIR,
    TLS_DIR,
    TLS_PORT,
    prepare_host,
    repository_host_name,
    run_server,
    server_unit,
)
from tasks.common.templating import file_path, template_path

RESTORE_TEST_RESULT = f"{TEXTFILE_DIR}/memory_store_restore_test.prom"


@dataclass(frozen=True)
class Archiving:
    """What PostgreSQL's settings and the memory store's scripts need from pgBackRest."""

    stanza: str
    timeout: int
    spool: str
    scratch: str


def database_host(major: int, datadir: str, pool_path: str) -> Archiving:
    """pgBackRest on the database host, before its cluster exists (a rebuilt host restores).

    Returns what PostgreSQL's settings and the memory store's scripts need.
    """
    settings = DATA.read(host)
    repo = repository_host_name(settings.pgbackrest_repository_host)
    installed = prepare_host("postgres", "postgres", settings, repo)
    conf = _configure(settings, repo, datadir)
    unit = server_unit("postgres", [datadir])
    systemd.daemon_reload(name="systemd reads pgbackrest-server", _if=unit.did_change)
    run_server([conf], unit, installed)
    scratch = settings.memory_store_restore_test_path or f"{pool_path}/restore-test"
    _restore_test(settings, major, [datadir, scratch])
    _archiving_metrics(major)
    return Archiving(
        stanza=settings.pgbackrest_stanza,
        timeout=settings.pgbackrest_archive_timeout,
        spool=settings.pgbackrest_spool_path,
        scratch=scratch,
    )


def _configure(settings: Any, repo: str, datadir: str) -> OperationMeta:
    """The async archive spool and pgbackrest.conf naming the repository host; returns the
    config's operation."""
    files.directory(
        name="pgBackRest spool",
        path=settings.pgbackrest_spool_path,
        user="postgres",
        group="postgres",
        mode="750",
    )
    return files.template(
        name="pgbackrest.conf (database host)",
        src=template_path("pgbackrest-db.conf.j2"),
        dest=CONF,
        user="root",
        group="postgres",
        mode="640",
        stanza=settings.pgbackrest_stanza,
        repo_host=repo,
        port=TLS_PORT,
        tls_dir=TLS_DIR,
        spool=settings.pgbackrest_spool_path,
        process_max=settings.pgbackrest_process_max,
        datadir=datadir,
        archive_timeout=settings.pgbackrest_archive_timeout,
    )


def _restore_test(settings: Any, major: int, mounts: list[str]) -> None:
    """The restore test's script, service (needing ``mounts``) and its daily timer, running."""
    files.put(
        name="Install the restore test",
        src=file_path("memory-store-restore-test"),
        dest=RESTORE_TEST_SCRIPT,
        mode="755",
    )
    files.template(
        name="memory-store-restore-test.service",
        src=template_path("memory-store-restore-test.service.j2"),
        dest="/etc/systemd/system/memory-store-restore-test.service",
        mode="644",
        script=RESTORE_TEST_SCRIPT,
        major=major,
        mounts=mounts,
    )
    timer = files.template(
        name="memory-store-restore-test.timer",
        src=template_path("systemd-timer.j2"),
        dest="/etc/systemd/system/memory-store-restore-test.timer",
        mode="644",
        description="Daily restore test of the memory store's newest backup",
        schedule=settings.memory_store_restore_test_schedule,
        delay="30min",
    )
    systemd.daemon_reload(name="systemd reads the restore test timer", _if=timer.did_change)
    systemd.service(
        name="Restore test timer",
        service="memory-store-restore-test.timer",
        running=True,
        enabled=True,
    )


def _archiving_metrics(major: int) -> None:
    """The WAL archiving and receiver metrics script, its service and its timer, running."""
    files.put(
        name="Install the archiving metrics script",
        src=file_path("memory-store-metrics"),
        dest=METRICS_SCRIPT,
        mode="755",
    )
    metrics_unit = files.template(
        name="memory-store-metrics.service",
        src=template_path("memory-store-metrics.service.j2"),
        dest="/etc/systemd/system/memory-store-metrics.service",
        mode="644",
        script=METRICS_SCRIPT,
        major=major,
    )
    metrics_timer = files.template(
        name="memory-store-metrics.timer",
        src=template_path("systemd-timer.j2"),
        dest="/etc/systemd/system/memory-store-metrics.timer",
        mode="644",
        description="WAL archiving and WAL receiver metrics of the memory store, every 10 s",
        # Often enough that a WAL receiver that is away is an alert within two minutes.
        schedule="*-*-* *:*:00/10",
        delay="0",
        accuracy="1s",
    )
    systemd.daemon_reload(
        name="systemd reads the metrics timer",
        _if=lambda: metrics_unit.did_change() or metrics_timer.did_change(),
    )
    systemd.service(
        name="Archiving metrics timer",
        service="memory-store-metrics.timer",
        running=True,
        enabled=True,
    )


@deploy("Memory store restore test", data_defaults=DATA.defaults())
def memory_store_first_restore_test() -> None:
    """After the firewall (and the first backup): run the restore test once if it never ran.

    A backup nobody restored is just a file: a new (or rebuilt) database host proves its
    backups at its first rollout instead of waiting for the timer. Gated on the restore test's
    result file.
    """
    if host.get_fact(File, path=RESTORE_TEST_RESULT):
        return
    server.shell(
        name="Run the restore test once (it never ran here)",
        commands=["systemctl start memory-store-restore-test.service"],
    )
