"""Checking the whole inventory's data, before anything connects or changes.

``validate_hosts`` checks every declared key on every host it applies to, refuses undeclared
keys (typos), then checks what ties hosts together: addresses inside the LAN, pools that disks
and guests name, the passthrough GPU belonging to the guest's hypervisor, unique IDs, and the
secrets each role needs. It returns every problem at once so one run shows them all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.common.datamodel.forms import HOSTNAME, FormError
from tasks.common.datamodel.keys import DataError, check_key
from tasks.common.datamodel.machine import HYPERVISOR, ROLE_GROUPS
from tasks.common.datamodel.registry import all_schemas, secret_specs
from tasks.common.datamodel.secrets import Secret, hidden, secret_problem

# Keys that belong to pyinfra itself (connectors, global arguments) and are not ours to declare.
PYINFRA_KEY_PREFIXES = ("ssh_", "_", "fake_", "winrm_", "docker_", "chroot_", "local_")
# Groups that give no role but are always there: pyinfra's own "all".
PYINFRA_GROUPS = ("all",)
# Guest network addresses the hypervisor hands its guests (tasks/hypervisor/proxmox_guests.py).
GUEST_NETWORK_KEYS = ("proxmox_guest_gateway", "proxmox_guest_nameserver")
# Usable share of a ZFS pool's disks per layout (disks given): the pool is created as one vdev.
ZFS_USABLE = {
    "single": lambda sizes: sum(sizes),
    "mirror": lambda sizes: min(sizes),
    "raidz1": lambda sizes: min(sizes) * (len(sizes) - 1),
    "raidz2": lambda sizes: min(sizes) * (len(sizes) - 2),
}
PARITY_DISKS = {"raidz1": 1, "raidz2": 2}


@dataclass
class HostView:
    """One host as validation sees it: name, groups and the merged data pyinfra would use."""

    name: str
    groups: tuple[str, ...]
    data: Mapping[str, Any]
    values: dict[str, Any] = field(default_factory=dict)


def _declared_keys() -> dict[str, Any]:
    declared: dict[str, Any] = {}
    for schema in all_schemas():
        for key in schema:
            declared[key.name] = key
    return declared


def _close_match(name: str, candidates: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def gib(size: int) -> str:
    """A byte count for a message: "16 GiB", "0.5 GiB"."""
    return f"{size / 1024**3:g} GiB"


def _check_name(view: HostView) -> list[DataError]:
    """The inventory name becomes the host name, /etc/hosts and DNS entries, and file names."""
    try:
        HOSTNAME.check(view.name)
    except FormError as error:
        return [DataError(view.name, "inventory name", view.name, error.expected)]
    return []


def _check_groups(view: HostView, known: Iterable[str]) -> list[DataError]:
    """A group no role knows is a typo: the host would silently get none of its tasks."""
    known = (*ROLE_GROUPS, *PYINFRA_GROUPS, *known)
    return [
        DataError(
            view.name,
            "groups",
            group,
            f"a role group ({', '.join(ROLE_GROUPS)}); this one is unknown"
            + _close_match(group, ROLE_GROUPS),
        )
        for group in view.groups
        if group not in known
    ]


def check_host(view: HostView) -> list[DataError]:
    """Check one host's own keys; fills ``view.values`` with the normalised values."""
    errors: list[DataError] = _check_name(view)
    declared = _declared_keys()
    for name in sorted(view.data):
        if name in declared or name.startswith(PYINFRA_KEY_PREFIXES):
            continue
        errors.append(
            DataError(
                view.name,
                name,
                view.data[name],
                "a declared key; this one is unknown" + _close_match(name, declared),
            )
        )
    for schema in all_schemas():
        for key in schema:
            if not key.applies_to(view.groups):
                continue
            try:
                view.values[key.name] = check_key(view.name, key, view.data)
            except DataError as error:
                errors.append(error)
        errors.extend(schema.problems(view.name, view.values))
    return errors


def _cross_checks(views: Sequence[HostView]) -> list[DataError]:
    errors: list[DataError] = []
    by_name = {view.name: view for view in views}
    seen_addresses: dict[Any, str] = {}
    seen_vmids: dict[int, str] = {}

    for view in views:
        values = view.values
        address, cidr = values.get("lan_address"), values.get("lan_cidr")
        if address is not None and cidr is not None:
            errors.extend(_check_in_lan(view, "lan_address", address, cidr))
            for key in GUEST_NETWORK_KEYS:
                given = values.get(key)
                if given is None:
                    continue
                if key == "proxmox_guest_nameserver" and given not in cidr:
                    errors.extend(_check_resolver_address(view, key, given, cidr))
                else:
                    errors.extend(_check_in_lan(view, key, given, cidr))
        if address is not None:
            if address in seen_addresses:
                other = seen_addresses[address]
                errors.append(
                    DataError(view.name, "lan_address", address, f"an address not used by {other}")
                )
            seen_addresses[address] = view.name

        errors.extend(_duplicate_disks(view))
        errors.extend(_duplicate_gpu_addresses(view))
        errors.extend(_duplicate_zfs_names(view))
        pools = values.get("pools") or {}
        for index, disk in enumerate(values.get("disks") or []):
            if disk["pool"] is not None and disk["pool"] not in pools:
                errors.append(
                    DataError(
                        view.name,
                        f"disks[{index}].pool",
                        disk["pool"],
                        f"one of this host's pools ({', '.join(pools) or 'none declared'})",
                    )
                )
        for pool_name, pool in pools.items():
            if pool["type"] == "zfs" and not pool["zfs_name"]:
                errors.append(
                    DataError(view.name, f"pools[{pool_name!r}].zfs_name", None, "a ZFS pool name")
                )
            if pool["create"]:
                members = [d for d in values.get("disks") or [] if d["pool"] == pool_name]
                if not members:
                    errors.append(
                        DataError(
                            view.name,
                            f"pools[{pool_name!r}].create",
                            True,
                            "false, or disks listed with this pool to create it on",
                        )
                    )

        if HYPERVISOR in view.groups and values.get("cpu") is None:
            errors.append(
                DataError(view.name, "cpu", None, "a CPU description (vendor picks IOMMU flags)")
            )
        for gpu_index, gpu in enumerate(values.get("gpus") or []):
            target = gpu["passthrough_to"]
            if target is None:
                continue
            where = f"gpus[{gpu_index}].passthrough_to"
            if target not in by_name:
                errors.append(DataError(view.name, where, target, "an inventory host"))
                continue
            guest = by_name[target].values.get("guest")
            if not guest or guest["passthrough_gpu"] != gpu["name"]:
                errors.append(
                    DataError(
                        view.name,
                        where,
                        target,
                        f"a guest whose guest.passthrough_gpu is {gpu['name']!r}",
                    )
                )
            for fn_index, function in enumerate(gpu["functions"]):
                if function["address"] is None:
                    errors.append(
                        DataError(
                            view.name,
                            f"gpus[{gpu_index}].functions[{fn_index}].address",
                            None,
                            "the PCI address of every function of a GPU passed through",
                        )
                    )

        guest = values.get("guest")
        if guest:
            errors.extend(_check_guest(view, guest, by_name, seen_vmids))
        if HYPERVISOR in view.groups:
            errors.extend(_check_guest_memory(view, views))
            errors.extend(_check_guest_nameserver(view, views))
    return errors


def _check_guest_nameserver(hypervisor: HostView, views: Sequence[HostView]) -> list[DataError]:
    """The resolver new guests get must answer on a first install, before any guest exists."""
    nameserver = hypervisor.values.get("proxmox_guest_nameserver")
    if nameserver is None:
        return []
    for view in views:
        if view.values.get("guest") and view.values.get("lan_address") == nameserver:
            return [
                DataError(
                    hypervisor.name,
                    "proxmox_guest_nameserver",
                    nameserver,
                    f"a resolver that answers before any guest exists (the router), not guest"
                    f" {view.name}'s address: on a first install {view.name} does not exist yet"
                    " when the other guests install their packages",
                )
            ]
    return []


def _check_resolver_address(
    view: HostView, key: str, address: ipaddress.IPv4Address, cidr: ipaddress.IPv4Network
) -> list[DataError]:
    """A resolver outside the LAN (an upstream or public one) must be a routable unicast
    address: guests reach it through the gateway."""
    if (
        address.is_loopback
        or address.is_multicast
        or address.is_unspecified
        or address.is_link_local
        or address.is_reserved
    ):
        return [
            DataError(
                view.name,
                key,
                address,
                f"a resolver's unicast address, in {cidr} (the router) or beyond the gateway",
            )
        ]
    return []


def _check_in_lan(
    view: HostView, key: str, address: ipaddress.IPv4Address, cidr: ipaddress.IPv4Network
) -> list[DataError]:
    """An address a host uses on the LAN: inside it, and neither its network nor its
    broadcast address (neither can be given to a host)."""
    if address not in cidr:
        return [DataError(view.name, key, address, f"an address in {cidr}")]
    if address in (cidr.network_address, cidr.broadcast_address):
        return [
            DataError(
                view.name,
                key,
                address,
                f"a host address in {cidr}, not its network ({cidr.network_address}) or"
                f" broadcast ({cidr.broadcast_address}) address",
            )
        ]
    return []


def _duplicate_disks(view: HostView) -> list[DataError]:
    """One disk listed twice is one disk given two pools: creating one wipes the other.

    Within a host only: pyinfra's ``--data disks=...`` sets the same list on every host.
    """
    errors = []
    seen: dict[str, int] = {}
    for index, disk in enumerate(view.values.get("disks") or []):
        if disk["device"] in seen:
            errors.append(
                DataError(
                    view.name,
                    f"disks[{index}].device",
                    disk["device"],
                    f"a disk listed once; {view.name} disks[{seen[disk['device']]}] is the same"
                    " device",
                )
            )
        else:
            seen[disk["device"]] = index
    return errors


def _duplicate_gpu_addresses(view: HostView) -> list[DataError]:
    """PCI addresses within one machine (other machines have buses of their own)."""
    errors = []
    seen: dict[str, str] = {}
    for gpu_index, gpu in enumerate(view.values.get("gpus") or []):
        for fn_index, function in enumerate(gpu["functions"]):
            address, where = function["address"], f"gpus[{gpu_index}].functions[{fn_index}]"
            if address is None:
                continue
            if address in seen:
                errors.append(
                    DataError(
                        view.name,
                        f"{where}.address",
                        address,
                        f"a PCI address not used by {seen[address]} of {view.name}",
                    )
                )
            else:
                seen[address] = where
    return errors


def _duplicate_zfs_names(view: HostView) -> list[DataError]:
    """Two pools on one ZFS pool would share (and fight over) its datasets; compared
    case-folded, as people read them."""
    errors = []
    seen: dict[str, str] = {}
    for pool_name, pool in (view.values.get("pools") or {}).items():
        zfs_name = pool["zfs_name"]
        if not zfs_name:
            continue
        if zfs_name.casefold() in seen:
            errors.append(
                DataError(
                    view.name,
                    f"pools[{pool_name!r}].zfs_name",
                    zfs_name,
                    f"a ZFS pool name not used by pools[{seen[zfs_name.casefold()]!r}]",
                )
            )
        else:
            seen[zfs_name.casefold()] = pool_name
    return errors


def _check_guest_memory(hypervisor: HostView, views: Sequence[HostView]) -> list[DataError]:
    """Guests' RAM is not overcommitted: a VM with a GPU passed through pins all of its RAM,
    and an out-of-memory hypervisor kills a guest. No reserve is declared in the data, so the
    guests may take all of it."""
    memory = hypervisor.values.get("memory")
    guests = [
        (view.name, view.values["guest"]["memory"])
        for view in views
        if view.values.get("guest") and view.values["guest"]["hypervisor"] == hypervisor.name
    ]
    total = sum(size for _, size in guests)
    if memory is None or total <= memory:
        return []
    shares = ", ".join(f"{name} {gib(size)}" for name, size in guests)
    return [
        DataError(
            hypervisor.name,
            "memory",
            hypervisor.data.get("memory"),
            f"at least the {gib(total)} of guest memory it runs ({shares}); it has {gib(memory)}",
        )
    ]


def pool_capacity(host: HostView, pool_name: str) -> tuple[int, str] | None:
    """Usable bytes of ``host``'s pool from the disks listed with it, and how they were
    counted; None when no disk is listed (the size is not known)."""
    pool = (host.values.get("pools") or {}).get(pool_name)
    sizes = [d["size"] for d in host.values.get("disks") or [] if d["pool"] == pool_name]
    if pool is None or not sizes:
        return None
    layout = pool["layout"] if pool["type"] == "zfs" else "single"
    if len(sizes) <= PARITY_DISKS.get(layout, 0):
        return None  # a layout that cannot be built is not this check's to judge
    return ZFS_USABLE[layout](sizes), f"{layout} of {len(sizes)} disk(s)"


def _check_guest(
    view: HostView,
    guest: Mapping[str, Any],
    by_name: Mapping[str, HostView],
    seen_vmids: dict[int, str],
) -> list[DataError]:
    errors: list[DataError] = []
    if guest["vmid"] in seen_vmids:
        errors.append(
            DataError(
                view.name,
                "guest.vmid",
                guest["vmid"],
                f"an ID not used by {seen_vmids[guest['vmid']]}",
            )
        )
    seen_vmids[guest["vmid"]] = view.name
    parent = by_name.get(guest["hypervisor"])
    if parent is None or HYPERVISOR not in parent.groups:
        hypervisors = [v.name for v in by_name.values() if HYPERVISOR in v.groups]
        errors.append(
            DataError(
                view.name,
                "guest.hypervisor",
                guest["hypervisor"],
                f"a host of the hypervisor group ({', '.join(hypervisors) or 'none'})",
            )
        )
        return errors
    pools = parent.values.get("pools") or {}
    if guest["storage"] not in pools:
        errors.append(
            DataError(
                view.name,
                "guest.storage",
                guest["storage"],
                f"a pool of {parent.name} ({', '.join(pools) or 'none declared'})",
            )
        )
    else:
        errors.extend(_check_guest_disk(view, guest, parent))
    errors.extend(_check_share_pool(view, guest, parent))
    wanted = guest["passthrough_gpu"]
    if wanted is not None:
        parent_gpus = {gpu["name"]: gpu for gpu in parent.values.get("gpus") or []}
        if guest["kind"] != "qemu":
            errors.append(
                DataError(view.name, "guest.kind", guest["kind"], "qemu for GPU passthrough")
            )
        if wanted not in parent_gpus:
            errors.append(
                DataError(
                    view.name,
                    "guest.passthrough_gpu",
                    wanted,
                    f"a GPU of {parent.name} ({', '.join(parent_gpus) or 'none declared'})",
                )
            )
        else:
            if parent_gpus[wanted]["passthrough_to"] != view.name:
                errors.append(
                    DataError(
                        view.name,
                        "guest.passthrough_gpu",
                        wanted,
                        f"a GPU whose passthrough_to on {parent.name} names {view.name!r} "
                        f"(it names {parent_gpus[wanted]['passthrough_to']!r})",
                    )
                )
            host_ids = sorted(f["id"] for f in parent_gpus[wanted]["functions"])
            for index, gpu in enumerate(view.values.get("gpus") or []):
                if gpu["name"] == wanted:
                    ids = sorted(f["id"] for f in gpu["functions"])
                    if ids != host_ids:
                        errors.append(
                            DataError(
                                view.name,
                                f"gpus[{index}].functions",
                                ids,
                                f"the same PCI IDs as {parent.name}'s {wanted}: {host_ids}",
                            )
                        )
    cpu = parent.values.get("cpu")
    if cpu and guest["cores"] > (cpu["threads"] or cpu["cores"]):
        errors.append(
            DataError(
                view.name,
                "guest.cores",
                guest["cores"],
                f"at most the {cpu['threads'] or cpu['cores']} threads of {parent.name}",
            )
        )
    return errors


def _check_share_pool(
    view: HostView, guest: Mapping[str, Any], parent: HostView
) -> list[DataError]:
    """``share_pool``: only a VM mounts one (virtiofs), and only a pool of its hypervisor."""
    share = guest.get("share_pool")
    if share is None:
        return []
    if guest["kind"] != "qemu":
        return [DataError(view.name, "guest.kind", guest["kind"], "qemu for a virtiofs share_pool")]
    pools = parent.values.get("pools") or {}
    if share not in pools:
        return [
            DataError(
                view.name,
                "guest.share_pool",
                share,
                f"a pool of {parent.name} ({', '.join(pools) or 'none declared'})",
            )
        ]
    return []


def _check_guest_disk(
    view: HostView, guest: Mapping[str, Any], parent: HostView
) -> list[DataError]:
    """The guest's disk fits the pool it is created on, when the pool's disks are listed."""
    capacity = pool_capacity(parent, guest["storage"])
    if capacity is None or guest["disk_size"] <= capacity[0]:
        return []
    size, counted = capacity
    return [
        DataError(
            view.name,
            "guest.disk_size",
            view.data["guest"]["disk_size"],
            f"at most the {gib(size)} of {parent.name}'s pool {guest['storage']!r} ({counted})",
        )
    ]


def _check_secrets(views: Sequence[HostView], secrets: Mapping[str, Secret]) -> list[DataError]:
    errors = []
    for spec in secret_specs():
        needing = [
            view.name
            for view in views
            if set(spec.groups) & set(view.groups)
            and (spec.needed is None or spec.needed(view.data))
        ]
        if needing and spec.name in secrets:
            problem = secret_problem(spec, secrets[spec.name])
            if problem:
                errors.append(
                    DataError(
                        needing[0],
                        f"secret {spec.name}",
                        hidden(secrets[spec.name]),
                        f"{problem} (in the secrets file or HOMELAB_SECRET_{spec.name.upper()})",
                    )
                )
        if needing and spec.name not in secrets:
            errors.append(
                DataError(
                    needing[0],
                    f"secret {spec.name}",
                    None,
                    f"{spec.doc}, in the secrets file or HOMELAB_SECRET_{spec.name.upper()} "
                    f"(needed by {', '.join(needing)})",
                )
            )
    return errors


def validate_hosts(
    views: Sequence[HostView],
    secrets: Mapping[str, Secret] | None = None,
    file_groups: Iterable[str] = (),
) -> list[DataError]:
    """Every problem with the inventory's data; empty when it is fine to go on.

    ``file_groups`` are groups pyinfra makes itself (the inventory file's name), not roles.
    """
    errors: list[DataError] = []
    file_groups = tuple(file_groups)
    for view in views:
        errors.extend(check_host(view))
        errors.extend(_check_groups(view, file_groups))
    errors.extend(_cross_checks(views))
    if secrets is not None:
        errors.extend(_check_secrets(views, secrets))
    return errors


def format_errors(errors: Sequence[DataError], source: str) -> str:
    lines = [f"The inventory data in {source} is not valid; nothing was touched:"]
    lines += [f"  - {error}" for error in errors]
    return "\n".join(lines)
