"""The embedding server's batching rule (files/embedder/homelab_embedder/batching.py): when a
model call stops waiting for more requests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "files" / "embedder"))

from homelab_embedder.batching import RECENT_CALLS, RECENT_SECONDS, Gathering

WAIT = 0.005


def test_an_idle_server_runs_a_lone_request_at_once() -> None:
    gathering = Gathering(WAIT)
    assert gathering.start(100.0, queued=False) == (1, 100.0)


def test_after_a_call_of_32_the_next_expects_32_and_waits_at_most_the_wait() -> None:
    gathering = Gathering(WAIT)
    gathering.record(32, now=100.0)
    expected, deadline = gathering.start(100.01, queued=False)
    assert expected == 32
    assert deadline == pytest.approx(100.01 + WAIT)


def test_queued_requests_mean_busy_even_after_single_calls() -> None:
    gathering = Gathering(WAIT)
    gathering.record(1, now=100.0)
    assert gathering.start(100.01, queued=True) == (1, pytest.approx(100.01 + WAIT))


def test_two_groups_that_drifted_apart_are_waited_for_together() -> None:
    # 32 clients split 20 + 12 by one late call: the next call expects all 32 again.
    gathering = Gathering(WAIT)
    for size in (32, 20, 12):
        gathering.record(size, now=100.0)
    assert gathering.start(100.01, queued=False)[0] == 32


def test_clients_that_left_are_forgotten_after_a_few_calls() -> None:
    gathering = Gathering(WAIT)
    gathering.record(32, now=100.0)
    for i in range(RECENT_CALLS):
        gathering.record(8, now=100.01 + i * 0.01)
    assert gathering.start(100.1, queued=False)[0] == 8


def test_calls_older_than_the_horizon_say_nothing() -> None:
    gathering = Gathering(WAIT)
    gathering.record(32, now=100.0)
    now = 100.0 + RECENT_SECONDS + 0.01
    assert gathering.start(now, queued=False) == (1, now)


def test_a_zero_wait_never_waits() -> None:
    gathering = Gathering(0.0)
    gathering.record(32, now=100.0)
    assert gathering.start(100.01, queued=True) == (32, 100.01)


def test_a_negative_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="wait_s -1"):
        Gathering(-1)
