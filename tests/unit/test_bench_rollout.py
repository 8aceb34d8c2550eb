"""bench-rollout's reading of pyinfra's output (tests/bench/rollout.py), without a lab."""

from __future__ import annotations

from tests.bench import rollout


def test_the_batches_count_once_where_hosts_ran_them_side_by_side() -> None:
    assert rollout.covered([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0
    assert rollout.covered([(0.0, 5.0), (1.0, 2.0)]) == 5.0
    assert rollout.covered([]) == 0.0


def test_a_batch_line_is_read_as_the_fact_cache_prints_it() -> None:
    line = "    [ageis-node] Loaded 383 facts in one command (1.27s)"
    match = rollout._BATCH.match(line)
    assert match and match["host"] == "ageis-node" and float(match["seconds"]) == 1.27
    assert not rollout._FACT.match(line), "not counted as one fact as well"
