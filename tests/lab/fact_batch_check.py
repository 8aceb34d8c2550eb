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
compared, skipped, differences, unanswered = 0, 0, [], []
for key, (fact, spec, _) in entries.items():
    is_combined = fact_combiners.combined(fact, spec) is not None
    if spec["fact"] in CHANGES_BY_ITSELF:
        skipped += 1
        continue
    if not (is_combined or every_fact):
        continue
    alone = host.get_fact(type(fact), **spec["args"], **spec["connection"])
    compared += 1
    if key not in batched:
        unanswered.append(spec["fact"])
    elif batched[key] != alone:
        differences.append(
            {
                "fact": spec["fact"],
                "args": spec["args"],
                "batch": repr(batched[key]),
                "alone": repr(alone),
            }
        )
combined = sum(1 for fact, spec, _ in entries.values() if fact_combiners.combined(fact, spec))
(out / f"{host.name}.json").write_text(
    json.dumps(
        {
            "journal": len(entries),
            "batched": len(batched),
            "combined": combined,
            "compared": compared,
            "changes_by_itself": skipped,
            "differences": differences,
            "unanswered": unanswered,
        }
    )
)
