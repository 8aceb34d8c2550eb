"""The hypervisor's storage pools (``pools`` in the inventory): ZFS pools or directories, mounted.

Per pool:

- ``type: zfs``: the pool ``zfs_name`` is imported with its root dataset mounted at ``path``.
- ``type: dir`` with disks (``disks[].pool``): one disk with a filesystem, mounted at ``path``
  from ``/etc/fstab`` (by its ``/dev/disk/by-id`` path, ``nofail``: a missing disk never stops
  the boot, and Proxmox's ``is_mountpoint`` keeps backups off the root disk meanwhile).
- ``type: dir`` without disks: a directory on the root filesystem.

Creating a pool is opt-in per pool (``create: true``) and happens only when the pool is not
there yet and every one of its disks is blank: any partition table, filesystem, RAID, LVM or
ZFS signature (``wipefs --no-act``, ``blkid -p``) or partition (``lsblk``) on any of them stops
the run before anything changes, naming what was found. Without ``create`` a missing pool
stops the run with what to do. Registering the pools as Proxmox storages (with their
``content`` types) is the Proxmox API task's work.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.server import Mounts
from pyinfra.operations import apt, files, server

from tasks.common.datamodel.machine import MACHINE
from tasks.common.hardware_facts import DiskSignatures, ZfsPoolRoots

FSTAB_OPTIONS = "defaults,nofail,x-systemd.device-timeout=30s"
ZFS_PACKAGE = "zfsutils-linux"


class PoolRefused(RuntimeError):
    """A pool cannot be created or used as the data says; nothing was changed."""


def _say(message: str) -> None:
    logger.info(f"{host.print_prefix}{message}")


def pool_disks(machine: Mapping[str, Any], name: str) -> list[str]:
    return [disk["device"] for disk in machine["disks"] or [] if disk["pool"] == name]


def zpool_create_command(name: str, pool: Mapping[str, Any], disks: list[str]) -> str:
    """``zpool create`` for the layout; ashift=12 (4 KiB sectors), lz4, no atime."""
    vdev = [] if pool["layout"] == "single" else [pool["layout"]]
    words = [
        "zpool",
        "create",
        "-o",
        "ashift=12",
        "-O",
        "compression=lz4",
        "-O",
        "atime=off",
        "-O",
        "xattr=sa",
        "-O",
        "acltype=posixacl",
        "-m",
        pool["path"],
        pool["zfs_name"],
        *vdev,
        *disks,
    ]
    return " ".join(shlex.quote(word) for word in words)


def _blank_or_refuse(name: str, disks: list[str]) -> None:
    problems = []
    for device in disks:
        state = host.get_fact(DiskSignatures, device=device)
        if not state["exists"]:
            problems.append(f"{device}: no such block device")
        elif state["signatures"] or state["partitions"]:
            found = state["signatures"] + [f"partition {p}" for p in state["partitions"]]
            problems.append(f"{device} is not blank: {', '.join(found)}")
    if problems:
        raise PoolRefused(
            f"host {host.name!r}: key 'pools[{name!r}].create' is true, but the pool is not"
            " created on disks that hold data; nothing was changed:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
            + "\n  Check with `wipefs --no-act DEVICE` and `lsblk DEVICE`. If that data is to"
            " go, wipe the disk yourself (wipefs --all DEVICE) and run again."
        )


def _zfs_pool(name: str, pool: Mapping[str, Any], disks: list[str]) -> None:
    imported = host.get_fact(ZfsPoolRoots)
    dataset = (imported or {}).get(pool["zfs_name"])
    if dataset is not None:
        if dataset["mountpoint"] != pool["path"]:
            raise PoolRefused(
                f"host {host.name!r}: key 'pools[{name!r}].path' is {pool['path']!r}, but ZFS"
                f" pool {pool['zfs_name']!r} is mounted at {dataset['mountpoint']!r}; set the"
                f" path to it, or `zfs set mountpoint={pool['path']} {pool['zfs_name']}`"
            )
        server.shell(
            name=f"Pool {name}: mount ZFS {pool['zfs_name']} at {pool['path']}",
            commands=[] if dataset["mounted"] else [f"zfs mount {shlex.quote(pool['zfs_name'])}"],
        )
        return
    if not pool["create"]:
        raise PoolRefused(
            f"host {host.name!r}: pool {name!r}: ZFS pool {pool['zfs_name']!r} is not imported;"
            f" import it (zpool import {pool['zfs_name']}), or set pools[{name!r}].create to"
            " true to create it on its blank disks"
        )
    if not disks:
        raise PoolRefused(f"host {host.name!r}: pool {name!r} has no disks to be created on")
    _blank_or_refuse(name, disks)
    apt.packages(name="ZFS tools", packages=[ZFS_PACKAGE], no_recommends=True)
    server.shell(
        name=f"Pool {name}: create ZFS pool {pool['zfs_name']} ({pool['layout']})",
        commands=[zpool_create_command(name, pool, disks)],
    )


def _dir_pool(name: str, pool: Mapping[str, Any], disks: list[str]) -> None:
    path = pool["path"]
    mounts = host.get_fact(Mounts) or {}
    if not disks:
        files.directory(name=f"Pool {name}: directory {path}", path=path)
        return
    if len(disks) != 1:
        raise PoolRefused(
            f"host {host.name!r}: pool {name!r} is type dir with {len(disks)} disks; a dir pool"
            " is one disk (use type zfs for several)"
        )
    device = disks[0]
    if path in mounts:
        _say(f"pool {name}: {path} is mounted ({mounts[path]['device']})")
        return
    # Not mounted: an fstab line for the disk (created here when opted in and blank).
    if pool["create"]:
        state = host.get_fact(DiskSignatures, device=device)
        if state["exists"] and state["signatures"] == ["ext4"] and not state["partitions"]:
            _say(f"pool {name}: {device} already holds the pool's ext4 filesystem")
        else:
            _blank_or_refuse(name, disks)
            server.shell(
                name=f"Pool {name}: ext4 on {device}",
                commands=[f"mkfs.ext4 -q -L {shlex.quote(name)} {shlex.quote(device)}"],
            )
    elif not host.get_fact(DiskSignatures, device=device)["signatures"]:
        raise PoolRefused(
            f"host {host.name!r}: pool {name!r}: {device} holds no filesystem and"
            f" pools[{name!r}].create is false; set it to true to format the blank disk"
        )
    files.directory(name=f"Pool {name}: mount point {path}", path=path)
    files.line(
        name=f"Pool {name}: {device} on {path} in /etc/fstab",
        path="/etc/fstab",
        line=rf"^\S+\s+{re.escape(path)}\s",
        replace=f"{device} {path} auto {FSTAB_OPTIONS} 0 2",
    )
    server.shell(
        name=f"Pool {name}: mount {path}",
        commands=["systemctl daemon-reload", f"mount {shlex.quote(path)}"],
    )


@deploy("Storage pools")
def storage_pools() -> None:
    machine = MACHINE.read(host)
    for name, pool in sorted(machine["pools"].items()):
        disks = pool_disks(machine, name)
        if pool["type"] == "zfs":
            _zfs_pool(name, pool, disks)
        else:
            _dir_pool(name, pool, disks)
