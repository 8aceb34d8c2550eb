"""File integrity monitoring: AIDE's database of the system's files, checked every day.

Debian's ``aide`` with its own rules (``/etc/aide/aide.conf.d``: every file from ``/`` down,
with the package's exclusions for what changes by itself), SHA-512 checksums
instead of every hash AIDE knows, and Debian's ``dailyaidecheck.timer``,
which compares the system with the database and writes the differences to
``/var/log/aide/`` and the journal. What is data, not system, is left out
(``templates/aide-homelab.conf.j2``): the host's storage pools (VM disks, the pgBackRest
repository, the PostgreSQL data directory, Ollama's models, all under a pool path) and
``file_integrity_exclude``, so the daily check reads the system's few GB, never the pools' TB.

The database is built after the first install and again after a change of its settings, by
``homelab-aide-init.service`` (``aideinit``) started in the background at idle CPU and I/O
priority at the very end of the run (``file_integrity_baseline``), so it records the files as
the run left them: a rollout does not wait minutes for the scan, the host's services keep the
CPU, and the first daily check does not report the rollout's own changes.
The unit is enabled with ``ConditionPathExists=!`` the database, so a host whose database is
missing (a scan cut short, a file removed) builds it at the next boot.
Changes a rollout makes on purpose show in the next daily report; ``aide --update`` (or
``systemctl start homelab-aide-init``) takes them into the database.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from tasks.common.datamodel.forms import ABSOLUTE_PATH, ListOf
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import MACHINE
from tasks.common.templating import template_path

DATA = Schema(
    "file_integrity",
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
    systemd.daemon_reload(name="systemd reads the AIDE unit", _if=unit.did_change)
    # Enabled (the link `systemctl enable` makes): a host whose database is missing builds it
    # at boot. Not systemd.service(enabled=True): its fact lists loaded units only, and this
    # oneshot is unloaded once it has run, so every run would enable it again.
    files.link(
        name=f"{INIT_UNIT} at boot",
        path=f"/etc/systemd/system/multi-user.target.wants/{INIT_UNIT}",
        target=f"/etc/systemd/system/{INIT_UNIT}",
    )
    systemd.service(
        name="AIDE's daily check runs",
        service="dailyaidecheck.timer",
        running=True,
        enabled=True,
    )
    _SETTINGS_CHANGES[host.name] = [conf, checksums, unit]


# This run's operations on AIDE's settings, per host: the baseline is built after them.
_SETTINGS_CHANGES: dict[str, list[OperationMeta]] = {}


@deploy("File integrity baseline")
def file_integrity_baseline() -> None:
    """Last in a run: the database of the files as the run left them (a first install, or new
    settings), so the first daily check does not report the run's own later changes.

    Not gated on the database file: it appears only when the background scan ends, and a run
    meanwhile must not count as a change."""
    changes = _SETTINGS_CHANGES.get(host.name)
    if not changes:
        return
    server.shell(
        name="Build AIDE's database in the background (first install, or new settings)",
        commands=[f"rm -f {DATABASE}", f"systemctl start --no-block {INIT_UNIT}"],
        _if=any_changed(*changes),
    )
