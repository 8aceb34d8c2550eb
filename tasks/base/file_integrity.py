"""File integrity monitoring: AIDE's database of the system's files, checked every day.

Debian's ``aide`` with its own rules (``/etc/aide/aide.conf.d``: every file from ``/`` down,
with the package's exclusions for what changes by itself), SHA-512 checksums
instead of every hash AIDE knows, and Debian's ``dailyaidecheck.timer``,
which compares the system with the database and writes the differences to
``/var/log/aide/`` and the journal. What is data, not system, is left out
(``templates/aide-homelab.conf.j2``): the host's storage pools (VM disks, the pgBackRest
repository, the PostgreSQL data directory, Ollama's models, all under a pool path) and
``file_integrity_exclude``, so the daily check reads the system's few GB, never the pools' TB.

The database (the baseline) is built by ``homelab-aide-init.service`` (``aideinit``, at idle
CPU and I/O priority) from a nightly timer (``file_integrity_baseline_time``, before Debian's
daily check at 01:50) whenever there is none: after the first install, and after a run that
changed AIDE's settings (it removes the old one). A rollout never waits for the scan and never
shares the machine with it; ``systemctl start homelab-aide-init`` builds it at once. Until
there is one, Debian's daily check is skipped (a unit condition), not failed: a fresh host
is not left ``degraded`` by a check that has nothing to compare with. Changes a
rollout makes on purpose show in the next daily report; ``aide --update`` takes them in.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from tasks.common.datamodel.forms import ABSOLUTE_PATH, CALENDAR, ListOf
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import MACHINE
from tasks.common.templating import template_path

DATA = Schema(
    "file_integrity",
    Key(
        "file_integrity_baseline_time",
        CALENDAR,
        "*-*-* 00:30:00",
        "When AIDE's database is built if there is none (a quiet hour before Debian's daily"
        " check at 01:50).",
    ),
    Key(
        "file_integrity_exclude",
        ListOf(ABSOLUTE_PATH, unique=True),
        [],
        "More directories AIDE leaves out (data that changes by design); the host's storage"
        " pools are always left out.",
    ),
)

MAIN_CONF = "/etc/aide/aide.conf"
CONF = "/etc/aide/aide.conf.d/99_homelab_data"
CHECKSUMS = "sha512"
DATABASE = "/var/lib/aide/aide.db"
INIT_UNIT = "homelab-aide-init.service"
INIT_TIMER = "homelab-aide-init.timer"
CHECK_DROP_IN = "/etc/systemd/system/dailyaidecheck.service.d/homelab.conf"


def excluded(pool_paths: list[str], extra: list[str]) -> list[str]:
    """The directories AIDE leaves out, normalised, each once, sorted."""
    paths = {p.rstrip("/") or "/" for p in (*pool_paths, *extra)}
    return sorted(p for p in paths if p != "/")


def aide_pattern(path: str) -> str:
    """AIDE's rule that leaves ``path`` and everything below it out (a regex: dots escaped)."""
    escaped = "".join(f"\\{c}" if c in ".+*?()[]{}|^$\\@" else c for c in path)
    return f"!{escaped}(/|$)"


@deploy("File integrity (AIDE)", data_defaults=DATA.defaults())
def file_integrity() -> None:
    settings = DATA.read(host)
    pools = [pool["path"] for pool in MACHINE.read(host).pools.values()]
    apt.packages(
        name="Install AIDE (file integrity database)",
        packages=["aide", "aide-common"],
        no_recommends=True,
    )
    conf = files.template(
        name="AIDE leaves the storage pools and declared data out",
        src=template_path("aide-homelab.conf.j2"),
        dest=CONF,
        mode="644",
        patterns=[aide_pattern(p) for p in excluded(pools, settings.file_integrity_exclude)],
    )
    # Debian's "H" is every hash AIDE knows (MD5, SHA-1, RIPEMD, Tiger, ... each per file);
    # one strong hash detects the same changes at a fraction of the scan's CPU.
    checksums = files.line(
        name="AIDE checksums: SHA-512",
        path=MAIN_CONF,
        line=r"^Checksums\s*=.*$",
        replace=f"Checksums = {CHECKSUMS}",
    )
    unit = files.template(
        name=f"{INIT_UNIT}: builds AIDE's database at idle priority",
        src=template_path("homelab-aide-init.service.j2"),
        dest=f"/etc/systemd/system/{INIT_UNIT}",
        mode="644",
        database=DATABASE,
    )
    timer = files.template(
        name=f"{INIT_TIMER}: nightly, while there is no database",
        src=template_path("systemd-timer.j2"),
        dest=f"/etc/systemd/system/{INIT_TIMER}",
        mode="644",
        description="Build AIDE's database when there is none",
        schedule=settings.file_integrity_baseline_time,
        delay="10min",
    )
    check = files.template(
        name="dailyaidecheck.service: skipped, not failed, while there is no database",
        src=template_path("dailyaidecheck-homelab.conf.j2"),
        dest=CHECK_DROP_IN,
        mode="644",
        database=DATABASE,
    )
    systemd.daemon_reload(name="systemd reads the AIDE units", _if=any_changed(unit, timer, check))
    for timer_unit, what in ((INIT_TIMER, "baseline"), ("dailyaidecheck.timer", "daily check")):
        systemd.service(
            name=f"AIDE's {what} timer runs",
            service=timer_unit,
            running=True,
            enabled=True,
        )
    # New settings make a new baseline, the next night.
    server.shell(
        name="New AIDE settings: the old database goes (the next baseline is built tonight)",
        commands=[f"rm -f {DATABASE}"],
        _if=any_changed(conf, checksums),
    )
