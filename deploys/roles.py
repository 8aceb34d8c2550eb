"""Which tasks make each role, in rollout order.

A deploy file names the roles it rolls out; every host gets the base tasks, then the tasks of
each of its roles (its inventory groups) that the deploy file names. The order across roles
follows the boot order of the system: storage (hypervisor), databases and inference
(ageis-node), then the embedder and service guests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from functools import partial

from pyinfra import host

from tasks.ageis_node.actr_engine import actr_engine
from tasks.ageis_node.inference_guard import inference
from tasks.ageis_node.memory_store import memory_store, memory_store_roll_forward
from tasks.ageis_node.openclaw_pipeline import openclaw_pipeline
from tasks.ageis_node.pgbackrest_database import memory_store_first_restore_test
from tasks.ageis_node.pytorch import pytorch
from tasks.ageis_node.storage_tier import storage_tier
from tasks.base.admin_user import admin_user
from tasks.base.apt_sources import apt_sources
from tasks.base.base_packages import base_packages
from tasks.base.cloud_init import cloud_init_handover
from tasks.base.file_integrity import file_integrity
from tasks.base.firewall import firewall
from tasks.base.hardening import hardening
from tasks.base.hostname import hostname
from tasks.base.ipmi_exporter import ipmi_exporter
from tasks.base.journald import journald
from tasks.base.node_exporter import node_exporter
from tasks.base.resolver_client import resolver_client
from tasks.base.security_updates import security_updates
from tasks.base.sensors import sensors
from tasks.base.ssh_login import ssh_login
from tasks.base.ssh_server import ssh_server
from tasks.base.tailscale import tailscale
from tasks.base.time_sync import time_sync
from tasks.base.ups import ups
from tasks.common import fact_cache, pyinfra_speedups
from tasks.common.datamodel.machine import (
    AGEIS_NODE,
    DNS,
    EMBEDDER,
    HYPERVISOR,
    MONITORING,
    SERVICE_GUESTS,
)
from tasks.common.datamodel.preflight import require_valid_data
from tasks.common.host_keys import require_trusted_host_keys
from tasks.common.ports import Port
from tasks.embedder.document_ingest import document_ingest
from tasks.embedder.embedding_server import embedding_server
from tasks.embedder.nvidia_driver import nvidia_driver
from tasks.embedder.tts import tts
from tasks.embedder.vector_indexer import vector_indexer
from tasks.hypervisor.gpu_passthrough import gpu_passthrough
from tasks.hypervisor.guest_bridge import guest_bridge
from tasks.hypervisor.guest_restore_test import guest_restore_test
from tasks.hypervisor.guest_shares import guest_shares
from tasks.hypervisor.kernel_update import kernel_update
from tasks.hypervisor.pgbackrest_repository import pgbackrest_repository, pgbackrest_stanza
from tasks.hypervisor.proxmox_api import proxmox_api_check, proxmox_api_stage
from tasks.hypervisor.proxmox_backup import proxmox_backup_job
from tasks.hypervisor.proxmox_guests import proxmox_guests
from tasks.hypervisor.proxmox_storage import proxmox_storages
from tasks.hypervisor.proxmox_ve import proxmox_ve
from tasks.hypervisor.storage_pools import storage_pools
from tasks.hypervisor.wal_receiver import wal_receiver
from tasks.services.dns_resolver import dns_resolver
from tasks.services.monitoring import monitoring

Task = Callable[[], None]


def declared_ports(groups: Iterable[str]) -> tuple[Port, ...]:
    """The ports (``PORTS``) of every task module a host in ``groups`` runs: base and roles.

    All of the host's roles count, not only those the deploy file names: running
    ``deploys/embedder.py`` must not close the ports of the host's other roles.
    """
    groups = set(groups)
    tasks = [*BASE, *(task for role, ts in ROLES.items() if role in groups for task in ts)]
    ports: list[Port] = []
    for task in tasks:
        for port in getattr(sys.modules[_function_of(task).__module__], "PORTS", ()):
            if port not in ports:
                ports.append(port)
    return tuple(sorted(ports))


def _function_of(task: Task) -> Callable[..., None]:
    """The deploy function behind ``task`` (a table entry may bind arguments with partial)."""
    return task.func if isinstance(task, partial) else task


BASE: tuple[Task, ...] = (
    cloud_init_handover,
    hostname,
    apt_sources,
    base_packages,
    time_sync,
    journald,
    admin_user,
    ssh_server,
    security_updates,
    hardening,
    file_integrity,
    resolver_client,
    ups,  # before node_exporter: its UPS collector reads upsc
    # Given the table's port lookup: it probes the host's loopback-only ports on the host.
    partial(node_exporter, ports_of=declared_ports),
    sensors,
    ipmi_exporter,
)

# Role tasks run after the base, in this order.
ROLES: dict[str, tuple[Task, ...]] = {
    HYPERVISOR: (
        guest_bridge,  # before proxmox_ve, whose reboot brings it up
        proxmox_ve,
        storage_pools,
        guest_shares,  # before the guests: a VM with a share does not start without it
        gpu_passthrough,
        # After the VFIO setup: a new kernel boots once and must pass its IOMMU/VFIO proof.
        kernel_update,
        tailscale,
        # At plan time, or after the installation on a host this run makes Proxmox VE.
        partial(
            proxmox_api_stage,
            (proxmox_api_check, proxmox_storages, proxmox_guests, proxmox_backup_job),
        ),
        pgbackrest_repository,
        wal_receiver,  # retries until the memory store answers (a first install)
        guest_restore_test,
    ),
    AGEIS_NODE: (
        tailscale,
        memory_store,
        # ROCm, Ollama and the model-ready unit in one snapshot guard that spans their proof
        # (a reboot or restart, then the GPU checks); before actr-engine and the pipeline.
        inference,
        # After ROCm (its driver) and after Ollama: gigabytes of wheels do not hold up inference.
        pytorch,
        storage_tier,
        actr_engine,
        openclaw_pipeline,
    ),
    EMBEDDER: (
        tailscale,
        nvidia_driver,
        embedding_server,
        vector_indexer,
        document_ingest,
        wal_receiver,
        tts,
    ),
    SERVICE_GUESTS: (),
    DNS: (dns_resolver,),
    # Monitoring is given the table's port lookup, so its module need not import this one.
    MONITORING: (partial(monitoring, ports_of=declared_ports),),
}

# Tasks that need the firewalls of other hosts open (their peers' ports): they run after the
# firewall, which every host reaches at the same point, so every host's role tasks are done.
AFTER_FIREWALL: dict[str, tuple[Task, ...]] = {
    HYPERVISOR: (pgbackrest_stanza,),
    # The roll-forward check once the archive and the receivers exist (a first install).
    AGEIS_NODE: (memory_store_first_restore_test, memory_store_roll_forward),
}

# Last on every host: root login goes off only once everything else (reboots included, which
# reconnect as the run's login) is done and the admin login is proven.
LAST: tuple[Task, ...] = (ssh_login,)


# Every task of the table, numbered once (a task in several roles keeps one number).
TASK_NUMBERS: dict[Task, int] = {}
for _task in (*BASE, *(t for ts in ROLES.values() for t in ts),
              *(t for ts in AFTER_FIREWALL.values() for t in ts), *LAST):  # fmt: skip
    TASK_NUMBERS.setdefault(_task, len(TASK_NUMBERS))


def run_tasks(tasks: Iterable[Task]) -> None:
    """Run ``tasks`` in order, each under its own number in pyinfra's operation identity.

    pyinfra identifies an operation across hosts by the line numbers of its call stack only.
    Tasks called from one line in a loop would make operations at equal line numbers of two
    task modules one operation (on hosts that run different tasks there), and their
    different orders on different hosts a cycle that stops the run. The task's number, added
    as pyinfra's loop position, keeps them apart; the same task on several hosts stays one.
    """
    for task in tasks:
        host.loop_position.append(TASK_NUMBERS[task])
        try:
            task()
        finally:
            host.loop_position.pop()


def roll_out(*roles: str) -> None:
    """Validate the data, then apply the base and the named roles to the current host.

    Hosts in none of ``roles`` are left alone, so ``deploys/embedder.py`` run against the full
    inventory touches the embedder only. The firewall comes last, opening the ports that the
    host's tasks declare (``declared_ports``).
    """
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"unknown roles {unknown}; known: {', '.join(ROLES)}")
    require_valid_data()
    require_trusted_host_keys()
    # The run's own State, not pyinfra's context proxy: the cache is keyed by it.
    state = host.state
    working = [h for h in state.inventory if any(r in h.groups for r in roles)]
    pyinfra_speedups.install()
    fact_cache.enable(state, fact_cache.journal_directory(), working)
    mine = [role for role in roles if role in host.groups]
    if not mine:
        host.noop(f"{host.name} has none of the roles {', '.join(roles)}")
        return
    run_tasks(BASE)
    # The hypervisor's tasks from a line of their own, before the other roles': pyinfra orders
    # operations across hosts by the line numbers they are called from, so this puts every
    # hypervisor operation (storages, the guests' creation) before any guest's role tasks (the
    # snapshot guard of ageis-node's ROCm and Ollama needs its VM to exist).
    if HYPERVISOR in mine:
        run_tasks(ROLES[HYPERVISOR])
    for role in mine:
        run_tasks(ROLES[role] if role != HYPERVISOR else ())
    # Last, so a role's service is set up before its port opens.
    firewall(declared_ports(host.groups))
    # Again from lines of their own, hypervisor first: the after-firewall tasks of all hosts
    # follow the firewall's load (one operation on every host), so pyinfra orders them by the
    # lines they are called from, and the repository's stanza and first backup must come before
    # ageis-node's first restore test, which restores that backup.
    if HYPERVISOR in mine:
        run_tasks(AFTER_FIREWALL.get(HYPERVISOR, ()))
    for role in mine:
        run_tasks(AFTER_FIREWALL.get(role, ()) if role != HYPERVISOR else ())
    run_tasks(LAST)
