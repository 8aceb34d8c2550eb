"""The fact cache (tasks/common/fact_cache.py) on a real pyinfra run against this machine.

The host is pyinfra's ``@local`` connector (commands run here, as the test's user). The fact
counts its own runs: each run appends a line to a file in the test's directory, so a test reads
how many commands a sequence of ``get_fact`` calls really sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, FactBase, Inventory, State
from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.connect import connect_all
from pyinfra.context import ctx_host, ctx_state

from tasks.common import fact_cache

LOG: Path


class CountedFact(FactBase[dict[str, Any]]):
    """Test fact: records each time it runs, answers with the run's number."""

    def command(self, tag: str = "a") -> str:
        return f"echo {tag} >> {LOG}; wc -l < {LOG}"

    def process(self, output: list[str]) -> dict[str, Any]:
        return {"run": int(output[0]), "items": [1, 2]}


def runs() -> int:
    return len(LOG.read_text().splitlines()) if LOG.exists() else 0


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[State, Any]]:
    global LOG
    LOG = tmp_path / "runs"
    monkeypatch.delenv(fact_cache.ENV_SWITCH, raising=False)
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    host = inventory.get_host("@local")
    with ctx_state.use(state), ctx_host.use(host):
        yield state, host


def test_this_pyinfra_has_the_internals_the_cache_wraps() -> None:
    assert fact_cache.supported() is None


def test_without_the_cache_every_ask_is_a_command(local) -> None:
    state, host = local
    host.get_fact(CountedFact)
    host.get_fact(CountedFact)
    assert runs() == 2


def test_the_same_fact_is_asked_once_until_something_runs(local) -> None:
    state, host = local
    assert fact_cache.enable(state)
    first = host.get_fact(CountedFact)
    again = host.get_fact(CountedFact)
    assert runs() == 1 and first == again == {"run": 1, "items": [1, 2]}


def test_other_arguments_or_connection_arguments_are_another_answer(local) -> None:
    state, host = local
    fact_cache.enable(state)
    host.get_fact(CountedFact, tag="a")
    host.get_fact(CountedFact, tag="b")
    host.get_fact(CountedFact, tag="a", _chdir="/")
    host.get_fact(CountedFact, tag="a")
    assert runs() == 3


def test_a_caller_that_changes_its_answer_does_not_change_the_next_one(local) -> None:
    state, host = local
    fact_cache.enable(state)
    answer = host.get_fact(CountedFact)
    answer["items"].append(3)
    answer["run"] = 99
    assert host.get_fact(CountedFact) == {"run": 1, "items": [1, 2]}


def test_any_command_an_operation_runs_clears_every_answer(local) -> None:
    state, host = local
    fact_cache.enable(state)
    host.get_fact(CountedFact)
    assert StringCommand("true").execute(state, host, {})[0] is True
    assert host.get_fact(CountedFact)["run"] == 2
    assert runs() == 2


def test_nothing_is_cached_or_reused_while_a_callback_runs(local) -> None:
    state, host = local
    fact_cache.enable(state)
    host.get_fact(CountedFact)
    seen: list[int] = []

    def callback() -> None:  # a python.call may change a host without any command
        seen.append(host.get_fact(CountedFact)["run"])
        seen.append(host.get_fact(CountedFact)["run"])

    FunctionCommand(callback, (), {}).execute(state, host, {})
    assert seen == [2, 3]
    assert host.get_fact(CountedFact)["run"] == 4, "the callback's end clears the cache too"
    assert host.get_fact(CountedFact)["run"] == 4


def test_switched_off_by_the_environment(local, monkeypatch: pytest.MonkeyPatch) -> None:
    state, host = local
    monkeypatch.setenv(fact_cache.ENV_SWITCH, "0")
    assert fact_cache.enable(state) is False
    host.get_fact(CountedFact)
    host.get_fact(CountedFact)
    assert runs() == 2
