"""Whether an earlier operation changes the host, asked from another operation's ``_if``.

An ``_if`` callback usually runs once the operations before it have run, and then
``did_change()`` answers. The snapshot guard asks its guarded operations earlier, before any
of them has run (it snapshots only when one of them will change), and then an ``_if`` that
calls ``did_change()`` raises. ``changed`` answers in both moments.
"""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta


def changed(op: OperationMeta | None) -> bool:
    """``op`` changed the host (once it has run) or will change it (before it has run);
    None, for an operation that was not needed, never changes anything."""
    if op is None:
        return False
    return op.did_change() if op.is_complete() else op.will_change
