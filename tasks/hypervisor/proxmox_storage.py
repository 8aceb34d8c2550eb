"""The hypervisor's pools as Proxmox VE storages, registered through the API.

Every pool of the hypervisor's ``pools`` becomes a storage of the same ID: a ``dir`` pool a
``dir`` storage on its path, a ``zfs`` pool a ``zfspool`` storage on its ZFS pool
(``zfs_name``, or the pool's name), with the pool's ``content`` types. A directory storage that
holds backups gets ``is_mountpoint`` (``proxmox_backup_storage_is_mountpoint``): Proxmox then
treats the storage as offline while nothing is mounted at its path, so a missing HDD never
fills the root SSD with backups. Creating the pools on disks is the host side's work; this
registers them, idempotently (only what differs is changed; type and path are never changed
under a storage that exists: that is refused, naming the storage).
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from tasks.common.datamodel.forms import Bool
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR
from tasks.hypervisor.proxmox_api import ProxmoxError, api_change, diff, get_or_none, reach

DATA = Schema(
    "proxmox_storage",
    Key(
        "proxmox_backup_storage_is_mountpoint",
        Bool(),
        True,
        "A directory storage with backup content is only online while its path is a mount point.",
        (HYPERVISOR,),
    ),
)


def wanted_storage(name: str, pool: dict[str, Any], is_mountpoint: bool) -> dict[str, Any]:
    content = ",".join(pool.get("content") or []) or "none"
    if pool["type"] == "zfs":
        return {
            "type": "zfspool",
            "pool": pool.get("zfs_name") or name,
            "content": content,
            "sparse": 1,
        }
    wanted: dict[str, Any] = {"type": "dir", "path": pool["path"], "content": content}
    if is_mountpoint and "backup" in (pool.get("content") or []):
        wanted["is_mountpoint"] = "yes"
    return wanted


def _same_content(current: str, wanted: str) -> bool:
    return sorted(current.split(",")) == sorted(wanted.split(","))


@deploy("Proxmox storages", data_defaults=DATA.defaults())
def proxmox_storages() -> None:
    settings = DATA.read(host)
    api = reach("Proxmox storages")
    if api is None:
        return
    pools = host.data.get("pools") or {}
    for name, pool in sorted(pools.items()):
        wanted = wanted_storage(name, pool, settings.proxmox_backup_storage_is_mountpoint)
        current = get_or_none(api, f"storage/{name}")
        if current is None:
            api_change(
                f"Proxmox storage {name}",
                [f"create {wanted['type']} storage {name} ({wanted['content']})"],
                lambda name=name, wanted=wanted: api.call(
                    "POST", "storage", f"storage {name}", storage=name, **wanted
                ),
            )
            continue
        for fixed in ("type", "path", "pool"):
            if fixed in wanted and str(current.get(fixed)) != str(wanted[fixed]):
                raise ProxmoxError(
                    f"host {host.name!r}: Proxmox storage {name!r} exists with {fixed}"
                    f" {current.get(fixed)!r}, the data says {wanted[fixed]!r}; a storage's"
                    f" {fixed} is not changed under it: fix the data or the storage by hand"
                )
        changed = diff(
            current, {k: v for k, v in wanted.items() if k not in ("type", "path", "pool")}
        )
        if "content" in changed and _same_content(
            str(current.get("content", "")), wanted["content"]
        ):
            del changed["content"]
        api_change(
            f"Proxmox storage {name}",
            [f"{k}={v}" for k, v in sorted(changed.items())],
            lambda name=name, changed=changed: api.call(
                "PUT", f"storage/{name}", f"storage {name}", **changed
            ),
        )
