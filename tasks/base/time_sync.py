"""Time zone and time sync with chrony.

Reads ``timezone`` and ``ntp_servers``. With no servers given, chrony keeps the distribution's
default pool. In a container (the lab) chronyd does not run: it lacks CAP_SYS_TIME, and
chrony's unit says so by its start condition; the host's clock is the container's.
"""

from __future__ import annotations

import zoneinfo
from functools import cache

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from tasks.common.datamodel.forms import HOSTNAME, ListOf, Predicate, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.facts import ContainerVirt
from tasks.common.templating import template_path


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _known_zone(zone: str) -> bool:
    # A controller without tz data cannot judge; the host's timedatectl will.
    return not _zones() or zone in _zones()


DATA = Schema(
    "time_sync",
    Key(
        "timezone",
        Predicate(Str(), _known_zone, 'an IANA time zone such as "Etc/UTC" or "Europe/Berlin"'),
        "Etc/UTC",
        "Time zone of the host.",
    ),
    Key(
        "ntp_servers",
        ListOf(HOSTNAME, unique=True),
        [],
        "NTP servers for chrony; [] keeps the distribution's default pool.",
    ),
)

SOURCES_FILE = "/etc/chrony/sources.d/homelab.sources"


@deploy("Time zone and time sync", data_defaults=DATA.defaults())
def time_sync() -> None:
    settings = DATA.read(host)
    server.timezone(name=f"Set the time zone to {settings.timezone}", timezone=settings.timezone)
    apt.packages(name="Install chrony", packages=["chrony"], no_recommends=True)
    if settings.ntp_servers:
        sources = files.template(
            name="Configure chrony's NTP servers",
            src=template_path("chrony-homelab.sources.j2"),
            dest=SOURCES_FILE,
            mode="644",
            servers=settings.ntp_servers,
        )
        default_pool = files.replace(
            name="Turn off the distribution's default pool",
            path="/etc/chrony/chrony.conf",
            text=r"^pool ",
            replace="# replaced by sources.d/homelab.sources: pool ",
        )
        changed = any_changed(sources, default_pool)
    else:
        removed = files.file(
            name="Keep the distribution's default pool", path=SOURCES_FILE, present=False
        )
        changed = any_changed(removed)
    # chronyd's unit only starts where it may set the clock (not in a container).
    can_set_clock = host.get_fact(ContainerVirt) in ("none", "")
    systemd.service(
        name="Enable chrony",
        service="chrony",
        enabled=True,
        running=True if can_set_clock else None,
    )
    systemd.service(
        name="Restart chrony for its new sources",
        service="chrony",
        running=None,
        restarted=True,
        _if=changed,
    )
