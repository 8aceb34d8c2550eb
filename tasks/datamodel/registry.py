"""Every declared key and secret, gathered from the task modules that read them.

A task module declares ``DATA`` (its :class:`~tasks.datamodel.keys.Schema`) and, when it needs
any, ``SECRETS`` (a tuple of :class:`~tasks.datamodel.secrets.SecretSpec`). Listing the module
here is what makes validation, the README's table and ``secrets.example.toml`` know about it.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

from tasks.datamodel.keys import Schema
from tasks.datamodel.machine import MACHINE
from tasks.datamodel.secrets import SecretSpec

TASK_MODULES = (
    "tasks.hostname",
    "tasks.apt_sources",
    "tasks.base_packages",
    "tasks.time_sync",
    "tasks.admin_user",
    "tasks.ssh_server",
    "tasks.security_updates",
    "tasks.hardening",
    "tasks.journald",
    "tasks.firewall",
    "tasks.resolver_client",
    "tasks.dns_resolver",
    "tasks.tailscale",
    "tasks.proxmox_api",
    "tasks.node_exporter",
    "tasks.monitoring",
    "tasks.nvidia_driver",
    "tasks.embedder_runtime",
    "tasks.embedding_server",
    "tasks.vector_indexer",
    "tasks.tts",
    "tasks.snapshot_guard",
    "tasks.memory_store",
    "tasks.pgbackrest",
    "tasks.proxmox_storage",
    "tasks.proxmox_guests",
    "tasks.proxmox_backup",
    "tasks.proxmox_ve",
    "tasks.gpu_passthrough",
    "tasks.rocm",
    "tasks.ollama",
    "tasks.actr_engine",
    "tasks.openclaw_pipeline",
)


@cache
def _modules() -> tuple[ModuleType, ...]:
    return tuple(importlib.import_module(name) for name in TASK_MODULES)


def all_schemas() -> tuple[Schema, ...]:
    return (MACHINE, *tuple(m.DATA for m in _modules() if getattr(m, "DATA", None)))


def secret_specs() -> tuple[SecretSpec, ...]:
    return tuple(spec for m in _modules() for spec in getattr(m, "SECRETS", ()))
