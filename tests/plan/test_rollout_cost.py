"""The rollout's cost in remote commands: a budget per host that a new task cannot pass silently.

Each fact a deploy asks is one command over SSH in a real run (pyinfra 3 keeps no fact cache
between operations), and the commands, not the operations, are what a no-change rollout waits
for. This plans ``deploys/full.py`` over the modelled fleet and counts the facts each host's
table answered. The budgets are today's counts: a change that asks more raises the budget here,
in the same commit, where a reviewer sees it; one that asks fewer lowers it.
"""

from __future__ import annotations

import pytest

from tests.plan.harness import Plan

# Facts answered per host while planning the full rollout of the modelled fleet.
# Raised for AIDE and chkrootkit on every host (about 33 asked, 15 distinct), PostgreSQL's TLS
# files and the local probe on ageis-node, the CA file on the embedder, the repository's
# encryption on pve.
# Then the sensor chip drivers on the hosts with hardware of their own (pve, embedder: +10).
# Then the UPS (NUT on pve with its metrics timer, the embedder as its secondary) and the
# guests' weekly restore test on pve.
# Then the storage tiers: the VM's share (virtiofsd, its directories) on pve, its mount unit,
# work areas, tier script and timer on ageis-node (+14 and +47; +6 and +20 different).
# Then the drop-in that skips AIDE's daily check until there is a database (+6, +3 different).
# Then PyTorch's venv on ageis-node (its torch version, its package and directory) and the GPU
# proof's look at the ROCm packages (+6, +2 different; the proof's journal read adds one more
# on a converged node, where the modelled fresh one skips it until the driver's reboot).
# Then ollama-model-ready on ageis-node: its script and unit files, and whether the GPU driver
# is loaded (+9, +3 different).
# Then the synchronous WAL streaming: on pve and the embedder the receiver (client package,
# user, directories, CA, passfile, spool certificates and key, two scripts, two units and their
# states: +66 and +72; +20 and +24 different), on ageis-node the restore's WAL fetch (script,
# directory, settings, client certificate and key) and the replication settings (+36, +12).
# Then OpenClaw's actr-memory plugin on ageis-node: its two directories and three files, each
# put checking the file and its directory (+22, +8 different).
# Then document ingestion on the embedder: its inbox, group, credentials and unit, and the
# four modules of its code, each uploaded file by file, the inbox's parent (+55, +19 different).
# Then the kernel update on pve (the running kernel, the kernels in /boot with the pins and the
# rollout's marker: +4, +2 different), and on ageis-node whether it is a container, asked when
# the inference span plans its reboot or restart (+1, none different).
# Then the memory store's roll-forward check on ageis-node: its script, unit and PostgreSQL's
# drop-in, the unit's state, after the firewall (+22, +7 different).
FACT_BUDGET = {"pve": 726, "ageis-node": 936, "embedder": 619, "monitoring": 419, "dns": 327}
# The different facts (fact and arguments) among them: with the fact cache, what a no-change run
# really asks, each a line of the host's one batched command (tasks/common/fact_cache.py).
DISTINCT_FACT_BUDGET = {
    "pve": 289,
    "ageis-node": 358,
    "embedder": 249,
    "monitoring": 163,
    "dns": 133,
}


@pytest.mark.parametrize("name", sorted(FACT_BUDGET))
def test_facts_asked_stay_within_the_budget(full: Plan, name: str) -> None:
    asked = full.facts_asked[name]
    print(f"\n{name}: {asked} facts for {len(full.for_host(name))} operations")
    assert asked <= FACT_BUDGET[name], (
        f"{name}: the full rollout now asks {asked} facts, over its budget of "
        f"{FACT_BUDGET[name]}: each is an SSH command in every run. Ask fewer (one fact for "
        "many files, a fact only where an operation needs it) or raise the budget here."
    )
    assert asked >= FACT_BUDGET[name] * 0.9, (
        f"{name}: {asked} facts, well under the budget of {FACT_BUDGET[name]}: lower it"
    )


@pytest.mark.parametrize("name", sorted(DISTINCT_FACT_BUDGET))
def test_distinct_facts_stay_within_the_budget(full: Plan, name: str) -> None:
    distinct = full.distinct_facts_asked[name]
    budget = DISTINCT_FACT_BUDGET[name]
    print(f"\n{name}: {distinct} different facts of {full.facts_asked[name]} asked")
    assert distinct <= budget, (
        f"{name}: the full rollout now asks {distinct} different facts, over its budget of "
        f"{budget}: each is a command in the host's batch (and one of its own on the first "
        "run). Ask fewer or raise the budget here."
    )
    assert distinct >= budget * 0.9, f"{name}: {distinct}, well under {budget}: lower it"
