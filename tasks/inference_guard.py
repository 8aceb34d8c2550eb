"""The snapshot guard around ageis-node's risky changes (ROCm, Ollama installs and upgrades).

``guarded(change)`` is the one place the inference tasks enter the hypervisor's snapshot guard
(``tasks/snapshot_guard.py``): the operations made inside the ``with`` block run after a
snapshot of the host's VM, and the snapshot is there to roll back to if they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def guarded(change: str) -> Iterator[None]:
    # Wired to tasks.snapshot_guard once main has it (milestone main-has-snapshot-guard).
    yield
