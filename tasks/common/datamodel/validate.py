"""Checking the whole inventory's data, before anything connects or changes.

``validate_hosts`` checks every declared key on every host it applies to, refuses undeclared
keys (typos), then checks what ties hosts together: addresses inside the LAN, pools that disks
and guests name, the passthrough GPU belonging to the guest's hypervisor, unique IDs, and the
secrets each role needs. It returns every problem at once so one run shows them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.common.datamodel.keys import DataError, check_key
from tasks.common.datamodel.machine import HYPERVISOR
from tasks.common.datamodel.registry import all_schemas, secret_specs
from tasks.common.datamodel.secrets import Secret

# Keys that belong to pyinfra itself (connectors, global arguments) and are not ours to declare.
PYINFRA_KEY_PREFIXES = ("ssh_", "_", "fake_", "winrm_", "docker_", "chroot_", "local_")


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


def check_host(view: HostView) -> list[DataError]:
    """Check one host's own keys; fills ``view.values`` with the normalised values."""
    errors: list[DataError] = []
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
        if address is not None and cidr is not None and address not in cidr:
            errors.append(DataError(view.name, "lan_address", address, f"an address in {cidr}"))
        if address is not None:
            if address in seen_addresses:
                other = seen_addresses[address]
                errors.append(
                    DataError(view.name, "lan_address", address, f"an address not used by {other}")
                )
            seen_addresses[address] = view.name

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
    return errors


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


def _check_secrets(views: Sequence[HostView], secrets: Mapping[str, Secret]) -> list[DataError]:
    errors = []
    for spec in secret_specs():
        needing = [view.name for view in views if set(spec.groups) & set(view.groups)]
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
    views: Sequence[HostView], secrets: Mapping[str, Secret] | None = None
) -> list[DataError]:
    """Every problem with the inventory's data; empty when it is fine to go on."""
    errors: list[DataError] = []
    for view in views:
        errors.extend(check_host(view))
    errors.extend(_cross_checks(views))
    if secrets is not None:
        errors.extend(_check_secrets(views, secrets))
    return errors


def format_errors(errors: Sequence[DataError], source: str) -> str:
    lines = [f"The inventory data in {source} is not valid; nothing was touched:"]
    lines += [f"  - {error}" for error in errors]
    return "\n".join(lines)
