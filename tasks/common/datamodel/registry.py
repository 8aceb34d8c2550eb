"""Every declared key and secret, gathered from the task modules that read them.

A task module declares ``DATA`` (its :class:`~tasks.common.datamodel.keys.Schema`) and,
when it needs any, ``SECRETS`` (a tuple of :class:`~tasks.common.datamodel.secrets.SecretSpec`).
Listing the module
here is what makes validation, docs/data-keys.md and ``secrets.example.toml`` know about it.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

from tasks.common.datamodel.keys import Schema
from tasks.common.datamodel.machine import MACHINE
from tasks.common.datamodel.secrets import SecretSpec

TASK_MODULES = (
    "tasks.common.host_keys",
    "tasks.common.logins",
    "tasks.base.hostname",
    "tasks.base.apt_sources",
    "tasks.base.base_packages",
    "tasks.base.time_sync",
    "tasks.base.admin_user",
    "tasks.base.ssh_server",
    "tasks.base.ssh_login",
    "tasks.base.security_updates",
    "tasks.base.hardening",
    "tasks.base.file_integrity",
    "tasks.base.journald",
    "tasks.base.ups",
    "tasks.base.ipmi_exporter",
    "tasks.base.firewall",
    "tasks.base.resolver_client",
    "tasks.services.dns_resolver",
    "tasks.base.tailscale",
    "tasks.hypervisor.proxmox_api",
    "tasks.base.node_exporter",
    "tasks.base.sensors",
    "tasks.services.monitoring",
    "tasks.embedder.nvidia_driver",
    "tasks.embedder.embedder_runtime",
    "tasks.embedder.embedding_server",
    "tasks.embedder.vector_indexer",
    "tasks.embedder.document_ingest",
    "tasks.embedder.tts",
    "tasks.ageis_node.snapshot_guard",
    "tasks.ageis_node.memory_store",
    "tasks.common.pgbackrest",
    "tasks.common.wal_stream",
    "tasks.hypervisor.proxmox_storage",
    "tasks.hypervisor.proxmox_guests",
    "tasks.hypervisor.proxmox_backup",
    "tasks.hypervisor.guest_restore_test",
    "tasks.hypervisor.proxmox_ve",
    "tasks.hypervisor.gpu_passthrough",
    "tasks.hypervisor.kernel_update",
    "tasks.ageis_node.rocm",
    "tasks.ageis_node.ollama",
    "tasks.ageis_node.pytorch",
    "tasks.ageis_node.model_ready",
    "tasks.ageis_node.storage_tier",
    "tasks.ageis_node.actr_engine",
    "tasks.ageis_node.openclaw_pipeline",
)


@cache
def _modules() -> tuple[ModuleType, ...]:
    return tuple(importlib.import_module(name) for name in TASK_MODULES)


def all_schemas() -> tuple[Schema, ...]:
    return (MACHINE, *tuple(m.DATA for m in _modules() if getattr(m, "DATA", None)))


def secret_specs() -> tuple[SecretSpec, ...]:
    return tuple(spec for m in _modules() for spec in getattr(m, "SECRETS", ()))
