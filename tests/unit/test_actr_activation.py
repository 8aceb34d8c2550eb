"""The reference actr-engine's activation maths (files/actr-engine/actr_engine/activation.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "files" / "actr-engine"))

from actr_engine.activation import MIN_AGE, activation, base_level, rank


def test_one_access_is_minus_d_times_log_age() -> None:
    # ln(t^-d) = -d ln t: one access an hour ago, d = 0.5.
    assert base_level([3600.0], 0.5) == pytest.approx(-0.5 * math.log(3600.0))


def test_sum_over_the_access_history() -> None:
    ages = [10.0, 100.0, 1000.0]
    expected = math.log(sum(t**-0.5 for t in ages))
    assert base_level(ages, 0.5) == pytest.approx(expected)


def test_more_and_more_recent_accesses_raise_the_base_level() -> None:
    once = base_level([1000.0], 0.5)
    assert base_level([1000.0, 2000.0], 0.5) > once  # frequency
    assert base_level([10.0], 0.5) > once  # recency


def test_higher_decay_forgets_faster() -> None:
    assert base_level([1000.0], 0.8) < base_level([1000.0], 0.5)


def test_never_accessed_is_minus_infinity_and_age_zero_is_finite() -> None:
    assert base_level([], 0.5) == -math.inf
    assert base_level([0.0], 0.5) == pytest.approx(-0.5 * math.log(MIN_AGE))


def test_decay_must_be_positive() -> None:
    with pytest.raises(ValueError, match="decay"):
        base_level([1.0], 0.0)


def test_similarity_term_is_the_mismatch_penalty_times_sim_minus_one() -> None:
    assert activation(-1.0, 1.0, 2.0) == pytest.approx(-1.0)
    assert activation(-1.0, 0.5, 2.0) == pytest.approx(-2.0)
    assert activation(-1.0, -1.0, 1.0) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="similarity"):
        activation(0.0, 1.5, 1.0)


def test_rank_orders_by_activation_not_by_similarity_alone() -> None:
    # Chunk 1 is the closer match but old; chunk 2 slightly less similar, used often lately.
    candidates = [(1, 0.95, [86400.0]), (2, 0.90, [5.0, 60.0, 300.0]), (3, 0.2, [1.0])]
    best = rank(candidates, decay=0.5, mismatch_penalty=1.0, threshold=None, limit=2)
    assert [chunk for chunk, *_ in best] == [2, 3]
    by_similarity = rank(candidates, decay=0.5, mismatch_penalty=1000.0, threshold=None, limit=1)
    assert by_similarity[0][0] == 1


def test_threshold_drops_weak_chunks_and_limit_caps() -> None:
    candidates = [(1, 1.0, [1.0]), (2, 1.0, [1e6])]
    # B(1 s) = 0, B(1e6 s) = -6.9: a threshold of -1 keeps only the first.
    assert [c for c, *_ in rank(candidates, decay=0.5, mismatch_penalty=1.0,
                                threshold=-1.0, limit=5)] == [1]  # fmt: skip
    assert len(rank(candidates, decay=0.5, mismatch_penalty=1.0, threshold=None, limit=1)) == 1
