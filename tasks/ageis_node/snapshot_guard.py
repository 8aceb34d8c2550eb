"""Snapshot guard: snapshot the current host's VM before a risky change, undo it on failure.

Usage, in a task of a host that is a Proxmox VM (its inventory data has ``guest`` with
``kind: qemu``)::

    from tasks.ageis_node.snapshot_guard import open_span, snapshot_guard

    snapshot_guard("ROCm 7.1", install_rocm)   # install_rocm: a function that adds operations

    span = open_span("a change to ROCm")       # or: a span with its proof inside it
    span.watch("ROCm 7.1 install", install_rocm)
    server.reboot(..., _if=span.changed)      # the proof: reboot, then check what matters
    python.call(..., _if=span.changed)
    span.close()

How it fits pyinfra 3's two phases (plan, then execute):

- While planning, ``open_span`` adds the *snapshot* operation; ``watch(reason, add)`` runs
  ``add`` and counts the operations it adds as the span's *triggers*; every operation added
  until ``close()`` is *inside* the span (the proof after the change: a reboot, the checks);
  ``close()`` adds *remove the snapshot*. The snapshot is taken only when a trigger changes
  something (``changed()``, asked at run time, before any trigger has run:
  ``tasks/common/changes.py``), so a converged host takes no snapshot and reports no change,
  and ``--dry`` shows where the snapshot would be taken. ``planned()`` answers the same from
  the plan, for the triggers without an ``_if`` of their own (pyinfra evaluates an ``_if`` only
  at run time): a task decides with it which proof operations to plan at all.
- While executing, the snapshot is taken through the hypervisor's Proxmox API (the
  hypervisor is ``guest.hypervisor``; its API settings are those of
  ``tasks/hypervisor/proxmox_api.py``)
  and waited on. When an operation inside the span fails (a trigger, the reboot, a proof),
  pyinfra skips the rest of the host's operations, so the clean-up operation never runs;
  instead a state callback (pyinfra's ``operation_host_error``, which fires at execute time for
  exactly that failure) applies ``snapshot_guard_on_failure``: ``rollback`` rolls the VM back
  to the snapshot (restarting it when it ran when the snapshot was taken), removes the
  snapshot and logs what it did and which operation failed; ``keep`` leaves the VM as the
  failure left it and the snapshot in place for an operator (``qm rollback VMID NAME``). The
  run still fails for that host, as it should.
- After every operation inside the span has succeeded, the proof included, the snapshot is
  removed: nothing is left behind.

On a host that is not a Proxmox VM (no ``guest`` data, or an LXC guest) the operations run
unguarded, the proof included, and the plan says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.api.state import BaseStateCallback
from pyinfra.operations import python

from tasks.common.changes import changed
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

    def take(self, reason: str | None = None) -> None:
        """Snapshot the VM; ``reason``: what is about to change (known once the plan ran)."""
        self.reason = reason or self.reason
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
        """An operation inside the span failed: apply the policy and report (never raises)."""
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
    """Execute-time hook: a failed operation inside a span triggers its guard's policy."""

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


def _has_if(op: OperationMeta) -> bool:
    return bool(state.get_op_data_for_host(host, op._hash).global_arguments.get("_if"))


@dataclass(repr=False)
class Span:
    """The operations of the current host between a snapshot and its removal (see the module).

    ``triggers``: (reason, operations) as ``watch`` recorded them. ``guard`` is None where the
    host is not a Proxmox VM: then nothing is snapshotted and the operations run unguarded.
    """

    title: str
    guard: Guard | None
    start: int
    triggers: list[tuple[str, list[OperationMeta]]] = field(default_factory=list)
    closed: bool = False

    def __repr__(self) -> str:
        # Short: pyinfra shows the arguments of a Python step (the proofs take the span).
        return f"Span({self.title!r})"

    def watch(self, reason: str, add: Callable[[], Any]) -> list[OperationMeta]:
        """Run ``add`` (a function adding operations); its operations are triggers."""
        before = set(host.op_hash_order)
        add()
        added = [state.ops[host][h].operation_meta for h in host.op_hash_order if h not in before]
        self.triggers.append((reason, added))
        return added

    def trigger(self, reason: str, *ops: OperationMeta) -> None:
        """Count operations added already (inside the span) as triggers."""
        self.triggers.append((reason, list(ops)))

    def changed(self) -> bool:
        """A trigger changes the host (before it ran) or changed it (after): run time."""
        return any(changed(op) for _, ops in self.triggers for op in ops)

    def planned(self) -> bool:
        """A trigger without an ``_if`` plans a change (plan time: the plan's own answer)."""
        return any(op.will_change for _, ops in self.triggers for op in ops if not _has_if(op))

    def reason(self) -> str:
        """What changes, for the snapshot's name and the messages (the planned reasons)."""
        reasons = [r for r, ops in self.triggers if any(changed(op) for op in ops)]
        return ", ".join(dict.fromkeys(reasons)) or self.title

    def close(self) -> None:
        """Everything added since ``open_span`` is inside; then the snapshot's removal."""
        if self.closed:
            raise RuntimeError(f"{host.name}: the span for {self.title} is closed already")
        self.closed = True
        if self.guard is None:
            return
        guard = self.guard
        guard.op_hashes.update(host.op_hash_order[self.start :])
        _callbacks().guards.append(guard)
        python.call(name=f"Remove the snapshot taken before {self.title}", function=guard.remove,
                    _if=lambda: guard.snapshot is not None)  # fmt: skip


def open_span(title: str) -> Span:
    """Begin a span on the current host: the snapshot operation, when the host is a VM."""
    spec = host.data.get("guest")
    if not spec or spec.get("kind") != "qemu":
        host.noop(
            f"{title}: {host.name} is not a Proxmox VM in the inventory; no snapshot: the"
            " change and its proof run unguarded"
        )
        return Span(title, None, len(host.op_hash_order))
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
        reason=title,
        vmid=int(spec["vmid"]),
        hypervisor=hypervisor_named(spec["hypervisor"]),
        on_failure=settings.snapshot_guard_on_failure,
        vmstate=settings.snapshot_guard_vmstate,
    )
    span = Span(title, guard, 0)
    # pyinfra orders a deploy's operations by where they are called: the snapshot first.
    python.call(name=f"Snapshot VM {guard.vmid} before {title}",
                function=lambda: guard.take(span.reason()), _if=span.changed)  # fmt: skip
    span.start = len(host.op_hash_order)
    return span


@deploy("Snapshot guard", data_defaults=DATA.defaults())
def snapshot_guard(reason: str, guarded: Callable[[], Any]) -> None:
    """Run ``guarded()`` (a function adding operations) with the host's VM snapshotted first,
    the snapshot removed after success, and the failure policy applied if one fails."""
    span = open_span(reason)
    span.watch(reason, guarded)
    span.close()
