"""Which tasks make each role, in rollout order.

A deploy file names the roles it rolls out; every host gets the base tasks, then the tasks of
each of its roles (its inventory groups) that the deploy file names. The order across roles
follows the boot order of the system: storage (hypervisor), databases and inference
(ageis-node), then the embedder and service guests.
"""

from __future__ import annotations

from collections.abc import Callable

from pyinfra import host

from tasks.admin_user import admin_user
from tasks.apt_sources import apt_sources
from tasks.base_packages import base_packages
from tasks.datamodel.machine import AGEIS_NODE, EMBEDDER, HYPERVISOR, SERVICE_GUESTS
from tasks.datamodel.preflight import require_valid_data
from tasks.hostname import hostname
from tasks.journald import journald
from tasks.security_updates import security_updates
from tasks.ssh_server import ssh_server
from tasks.time_sync import time_sync

BASE: tuple[Callable[[], None], ...] = (
    hostname,
    apt_sources,
    base_packages,
    time_sync,
    journald,
    admin_user,
    ssh_server,
    security_updates,
)

# Role tasks run after the base; each issue that builds a role adds its tasks here.
ROLES: dict[str, tuple[Callable[[], None], ...]] = {
    HYPERVISOR: (),
    AGEIS_NODE: (),
    EMBEDDER: (),
    SERVICE_GUESTS: (),
}


def roll_out(*roles: str) -> None:
    """Validate the data, then apply the base and the named roles to the current host.

    Hosts in none of ``roles`` are left alone, so ``deploys/embedder.py`` run against the full
    inventory touches the embedder only.
    """
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"unknown roles {unknown}; known: {', '.join(ROLES)}")
    require_valid_data()
    mine = [role for role in roles if role in host.groups]
    if not mine:
        host.noop(f"{host.name} has none of the roles {', '.join(roles)}")
        return
    for task in BASE:
        task()
    for role in mine:
        for task in ROLES[role]:
            task()
