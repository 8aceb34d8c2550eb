"""The snapshot guard around ageis-node's risky changes (ROCm, Ollama installs and upgrades).

``guarded(change, operations)`` is the one place the inference tasks enter the hypervisor's
snapshot guard (``snapshot_guard.py``): the operations ``operations()`` adds run after a
snapshot of the host's VM, which is rolled back to if they fail and removed once they succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.ageis_node.snapshot_guard import snapshot_guard


def guarded(change: str, operations: Callable[[], Any]) -> None:
    """Run ``operations`` inside the snapshot guard; it snapshots only when they change."""
    snapshot_guard(change, operations)
