"""A pyinfra deploy file for the lab test of the fact batch (tests/lab/test_fact_batch.py).

On each host it asks the facts of the host's journal twice: once the way the fact cache asks
them (one batch, the facts of a kind combined: tasks/common/fact_combiners.py) and once as
pyinfra asks each alone, then writes the differences to ``$HOMELAB_FACT_CHECK_OUT/<host>.json``.
It changes nothing on the hosts. Which facts are compared one by one: every combined fact on
every host, and every fact on the hosts named in ``HOMELAB_FACT_CHECK_ALL`` (comma-separated).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyinfra.context import ctx_host, ctx_state

from tasks.common import fact_cache, fact_combiners

# The run's own objects, not pyinfra's context proxies: the batch hands them to greenlets.
host, state = ctx_host.get(), ctx_state.get()
# Answers that differ from one second to the next: not compared.
CHANGES_BY_ITSELF = {"pyinfra.facts.server:Date"}
out = Path(os.environ["HOMELAB_FACT_CHECK_OUT"])
every_fact = host.name in os.environ.get("HOMELAB_FACT_CHECK_ALL", "").split(",")
entries = fact_cache._journal_entries(state, host, fact_cache.journal_directory())
batched: dict[tuple[str, ...], object] = {}
fact_cache._ask_entries(state, host, batched, entries)


def alone(spec: dict) -> object:
    """The fact as pyinfra asks it, in a command of its own."""
    cls = fact_cache._fact_class(spec["fact"])
    return host.get_fact(cls, **spec["args"], **spec["connection"])


compared, skipped, pending, unanswered = 0, 0, [], []
for key, (fact, spec, _) in entries.items():
    if spec["fact"] in CHANGES_BY_ITSELF:
        skipped += 1
        continue
    if not (fact_combiners.combined(fact, spec) is not None or every_fact):
        continue
    compared += 1
    if key not in batched:
        unanswered.append(spec["fact"])
    elif batched[key] != alone(spec):
        pending.append(key)
# A difference may be a live file changing between the asks (a directory a collector writes
# every few seconds): ask those alone, the whole batch again (so each kind is still combined
# with all the others), alone once more; where the two lone answers agree, the batch must too.
differences = []
for _ in range(3):
    if not pending:
        break
    before = {key: alone(entries[key][1]) for key in pending}
    again: dict[tuple[str, ...], object] = {}
    fact_cache._ask_entries(state, host, again, entries)
    still = []
    for key in pending:
        if alone(entries[key][1]) != before[key]:
            still.append(key)  # it moved meanwhile: once more
        elif again.get(key) != before[key]:
            spec = entries[key][1]
            differences.append(
                {
                    "fact": spec["fact"],
                    "args": spec["args"],
                    "batch": repr(again.get(key, "(not answered)")),
                    "alone": repr(before[key]),
                }
            )
    pending = still
moving = [{"fact": entries[key][1]["fact"], "args": entries[key][1]["args"]} for key in pending]
combined = sum(1 for fact, spec, _ in entries.values() if fact_combiners.combined(fact, spec))
(out / f"{host.name}.json").write_text(
    json.dumps(
        {
            "journal": len(entries),
            "batched": len(batched),
            "combined": combined,
            "compared": compared,
            "changes_by_itself": skipped,
            "never_held_still": moving,
            "differences": differences,
            "unanswered": unanswered,
        }
    )
)
