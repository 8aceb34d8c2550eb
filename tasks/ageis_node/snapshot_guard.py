"""Snapshot guard: snapshot the current host's VM before a risky change, undo it on failure.

Usage, in a task of a host that is a Proxmox VM (its inventory data has ``guest`` with
``kind: qemu``)::

    from tasks.ageis_node.snapshot_guard import snapshot_guard

    snapshot_guard("ROCm 7.1", install_rocm)   # install_rocm: a function that adds operations

How it fits pyinfra 3's two phases (plan, then execute):

- While planning, ``guarded()`` is called and adds its operations as usual; the guard notes
  which operations those are. Around them it adds two operations: *snapshot* before and
  *remove the snapshot* after, each with an ``_if`` that is true only when one of the guarded
  operations planned a change. A converged host therefore takes no snapshot and reports no
  change, and ``--dry`` shows where the snapshot would be taken.
- While executing, the snapshot is taken through the hypervisor's Proxmox API (the
  hypervisor is ``guest.hypervisor``; its API settings are those of
  ``tasks/hypervisor/proxmox_api.py``)
  and waited on. When a guarded operation fails, pyinfra skips the rest of the host's
  operations, so the clean-up operation never runs; instead a state callback (pyinfra's
  ``operation_host_error``, which fires at execute time for exactly that failure) applies
  ``snapshot_guard_on_failure``: ``rollback`` rolls the VM back to the snapshot (restarting it
  when it ran when the snapshot was taken), removes the snapshot and logs what it did;
  ``keep`` leaves the VM as the failure left it and the snapshot in place for an operator
  (``qm rollback VMID NAME``). The run still fails for that host, as it should.
- After the guarded operations all succeed, the snapshot is removed: nothing is left behind.

On a host that is not a Proxmox VM (no ``guest`` data, or an LXC guest) the guarded
operations run unguarded, and the plan says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import deploy
from pyinfra.api.state import BaseStateCallback
from pyinfra.operations import python

from tasks.common.datamodel.forms import Bool, Str
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.hypervisor.proxmox_api import Proxmox, ProxmoxError, connect, hypervisor_named

DATA = Schema(
    "snapshot_guard",
    Key(
        "snapshot_guard_on_failure",
        Str(choices=("rollback", "keep")),
        "rollback",
        "When a guarded change fails: roll the VM back to its snapshot (and remove it), or keep"
        " the VM as it is and the snapshot for an operator.",
    ),
    Key(
        "snapshot_guard_vmstate",
        Bool(),
        False,
        "Include the VM's RAM in the snapshot (slower, larger; a rollback resumes it running).",
    ),
)

PREFIX = "guard"


def snapshot_name(reason: str, now: float | None = None) -> str:
    """A Proxmox snapshot name (``[a-z][a-z0-9_-]+``, at most 40) for ``reason`` and now."""
    slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:18].strip("-") or "change"
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{PREFIX}-{slug}-{stamp}"


@dataclass
class Guard:
    """One guarded change on one host, as planned and as executed."""

    host_name: str
    reason: str
    vmid: int
    hypervisor: Any
    on_failure: str
    vmstate: bool
    op_hashes: set[str] = field(default_factory=set)
    snapshot: str | None = None
    was_running: bool = False
    settled: bool = False

    def client(self) -> Proxmox:
        return connect(self.hypervisor)

    def path(self) -> str:
        return f"nodes/{self.client().node}/qemu/{self.vmid}"

    def take(self) -> None:
        api = self.client()
        status = api.get(f"{self.path()}/status/current")
        self.was_running = status.get("status") == "running"
        name = snapshot_name(self.reason)
        api.call(
            "POST",
            f"{self.path()}/snapshot",
            f"snapshot of VM {self.vmid} before {self.reason}",
            snapname=name,
            description=f"homelab-as-code snapshot guard: before {self.reason}",
            vmstate=self.vmstate,
        )
        self.snapshot = name
        logger.info(
            f"{self.host_name}: VM {self.vmid} snapshot {name!r} taken before {self.reason}"
        )

    def remove(self) -> None:
        if self.snapshot is None:
            return
        self.client().call(
            "DELETE",
            f"{self.path()}/snapshot/{self.snapshot}",
            f"removing snapshot {self.snapshot} of VM {self.vmid}",
        )
        logger.info(f"{self.host_name}: {self.reason} done; snapshot {self.snapshot!r} removed")
        self.snapshot = None
        self.settled = True

    def failed(self, operation: str) -> None:
        """A guarded operation failed: apply the policy and report (never raises)."""
        if self.settled or self.snapshot is None:
            return
        self.settled = True
        name = self.snapshot
        if self.on_failure == "keep":
            logger.error(
                f"{self.host_name}: {self.reason} failed in {operation!r}; VM {self.vmid} is left"
                f" as the failure left it and its snapshot {name!r} is kept"
                f" (snapshot_guard_on_failure = keep): roll back with `qm rollback {self.vmid}"
                f" {name}` on {self.hypervisor.name}, or remove it with `qm delsnapshot"
                f" {self.vmid} {name}`"
            )
            return
        try:
            api = self.client()
            api.call(
                "POST",
                f"{self.path()}/snapshot/{name}/rollback",
                f"rollback of VM {self.vmid} to {name}",
                start=self.was_running and not self.vmstate,
            )
            api.call(
                "DELETE",
                f"{self.path()}/snapshot/{name}",
                f"removing snapshot {name} of VM {self.vmid} after the rollback",
            )
        except ProxmoxError as error:
            logger.error(
                f"{self.host_name}: {self.reason} failed in {operation!r} AND the rollback of"
                f" VM {self.vmid} to snapshot {name!r} failed: {error}. The snapshot is still"
                f" there: roll back by hand (`qm rollback {self.vmid} {name}`)"
            )
            return
        self.snapshot = None
        logger.error(
            f"{self.host_name}: {self.reason} failed in {operation!r}; VM {self.vmid} was rolled"
            f" back to snapshot {name!r} taken just before (snapshot_guard_on_failure ="
            f" rollback), {'restarted, ' if self.was_running else ''}and the snapshot removed"
        )


class _GuardCallbacks(BaseStateCallback):
    """Execute-time hook: a failed guarded operation triggers its guard's failure policy."""

    def __init__(self) -> None:
        self.guards: list[Guard] = []

    def operation_host_error(  # type: ignore[override]
        self, state: Any, host: Any, op_hash: str, retry_count: int = 0, max_retries: int = 0
    ) -> None:
        for guard in self.guards:
            if guard.host_name == host.name and op_hash in guard.op_hashes:
                names = state.get_op_meta(op_hash).names
                guard.failed(", ".join(sorted(names)) or op_hash)


def _callbacks() -> _GuardCallbacks:
    for handler in state.callback_handlers:
        if isinstance(handler, _GuardCallbacks):
            return handler
    handler = _GuardCallbacks()
    state.add_callback_handler(handler)
    return handler


@deploy("Snapshot guard", data_defaults=DATA.defaults())
def snapshot_guard(reason: str, guarded: Callable[[], Any]) -> None:
    """Run ``guarded()`` (a function adding operations) with the host's VM snapshotted first,
    the snapshot removed after success, and the failure policy applied if one fails."""
    spec = host.data.get("guest")
    if not spec or spec.get("kind") != "qemu":
        host.noop(f"{reason}: {host.name} is not a Proxmox VM in the inventory; no snapshot")
        guarded()
        return
    settings = DATA.read(host)
    if settings.snapshot_guard_vmstate and spec.get("share_pool"):
        raise DataError(
            host.name,
            "snapshot_guard_vmstate",
            True,
            "false for a VM with a virtiofs share (guest.share_pool): QEMU cannot save the"
            " RAM of a VM with a VirtIO-FS device, so every guarded snapshot would fail",
        )
    guard = Guard(
        host_name=host.name,
        reason=reason,
        vmid=int(spec["vmid"]),
        hypervisor=hypervisor_named(spec["hypervisor"]),
        on_failure=settings.snapshot_guard_on_failure,
        vmstate=settings.snapshot_guard_vmstate,
    )
    planned: list[Any] = []

    def changes() -> bool:
        return any(meta.will_change for meta in planned)

    # The three parts in this order, one line after another: pyinfra orders a deploy's
    # operations by where they are called.
    python.call(name=f"Snapshot VM {guard.vmid} before {reason}", function=guard.take, _if=changes)
    _run_guarded(guarded, planned, guard)
    python.call(name=f"Remove the snapshot taken before {reason}", function=guard.remove,
                _if=lambda: guard.snapshot is not None)  # fmt: skip


def _run_guarded(guarded: Callable[[], Any], planned: list[Any], guard: Guard) -> None:
    before = set(host.op_hash_order)
    guarded()
    added = [op_hash for op_hash in host.op_hash_order if op_hash not in before]
    guard.op_hashes.update(added)
    planned.extend(state.ops[host][op_hash].operation_meta for op_hash in added)
    _callbacks().guards.append(guard)
