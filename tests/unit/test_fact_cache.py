"""The fact cache (tasks/common/fact_cache.py) on a real pyinfra run against this machine.

The host is pyinfra's ``@local`` connector (commands run here, as the test's user). The fact
counts its own runs: each run appends a line to a file in the test's directory, so a test reads
how many commands a sequence of ``get_fact`` calls really sent.
"""

from __future__ import annotations

import json
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


def new_run() -> tuple[State, Any]:
    """A fresh pyinfra run (State) over the local connector, connected."""
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    return state, inventory.get_host("@local")


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Facts count their runs in a file of this test's; the cache is not switched off."""
    global LOG
    LOG = tmp_path / "runs"
    monkeypatch.delenv(fact_cache.ENV_SWITCH, raising=False)
    return tmp_path


@pytest.fixture
def local(counted: Path) -> Iterator[tuple[State, Any]]:
    state, host = new_run()
    with ctx_state.use(state), ctx_host.use(host):
        yield state, host


def test_this_pyinfra_has_the_internals_the_cache_wraps() -> None:
    assert fact_cache.supported() is None


def test_without_the_cache_every_ask_is_a_command(local) -> None:
    _, host = local
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


def test_any_command_an_operation_runs_clears_its_hosts_answers(local) -> None:
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


# --- facts asked in one command -------------------------------------------------------------

ODD_OUTPUTS = (
    "printf 'a\\nb\\n'",  # ends with a newline
    "printf 'a\\nb'",  # does not
    "true",  # no output at all
    "printf '\\n\\nlast\\n\\n'",  # blank lines around
    "echo '@@0123456789abcdef 9 0@@'",  # a marker, with another token
    "sleep 0.2; echo slow",  # finishes after the commands run beside it
    "echo out; echo err >&2; exit 3",  # fails, with stderr
    "exit 0; echo never",  # exit in the command ends only its subshell
    "cat",  # reads stdin: gets nothing, not the rest of the script
)


def test_one_script_gives_each_command_exactly_the_lines_it_prints_alone(tmp_path: Path) -> None:
    import subprocess

    def alone(command: str) -> tuple[int, list[str]]:
        done = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        return done.returncode, [line.rstrip("\n") for line in done.stdout.splitlines(True)]

    script = fact_cache.batch_script(ODD_OUTPUTS, "feedfacecafebeef", streams=3)
    batch = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    lines = [line.rstrip("\n") for line in batch.stdout.splitlines(True)]
    assert fact_cache.split_batch(lines, "feedfacecafebeef") == {
        index: alone(command) for index, command in enumerate(ODD_OUTPUTS)
    }


def test_output_after_the_last_marker_is_taken_for_no_fact() -> None:
    lines = ["a", "@@t0k 0 0@@", "b", "@@t0k 1 2@@", "cut short"]
    assert fact_cache.split_batch(lines, "t0k") == {0: (0, ["a"]), 1: (2, ["b"])}
    assert fact_cache.split_batch(["a", "@@other 0 0@@"], "t0k") == {}


def _run_once(local, journal: Path, *asks: dict[str, Any]) -> None:
    state, host = local
    assert fact_cache.enable(state, journal)
    for kwargs in asks:
        host.get_fact(CountedFact, **kwargs)
    fact_cache.write_journals()


def test_the_next_run_asks_the_journals_facts_in_one_command(
    counted: Path,
) -> None:
    journal = counted / "journal"

    state, host = new_run()
    with ctx_state.use(state), ctx_host.use(host):
        _run_once((state, host), journal, {"tag": "a"}, {"tag": "b"}, {"tag": "a"})
    assert runs() == 2
    (written,) = journal.glob("*.json")
    assert len(json.loads(written.read_text())) == 2
    assert written.stat().st_mode & 0o777 == 0o600

    state, host = new_run()
    with ctx_state.use(state), ctx_host.use(host):
        assert fact_cache.enable(state, journal)
        assert runs() == 4, "both facts ran, in the one batch"
        # Both from the batch, which ran them side by side (either may count the other's line).
        answers = [host.get_fact(CountedFact, tag=tag) for tag in ("a", "b")]
        assert all(answer["run"] in (3, 4) for answer in answers), answers
        assert runs() == 4
        assert host.get_fact(CountedFact, tag="c")["run"] == 5, "not in the journal: asked"
        assert runs() == 5


def test_a_fact_asked_with_a_password_is_never_written_down(local, tmp_path: Path) -> None:
    state, host = local
    journal = tmp_path / "journal"
    fact_cache.enable(state, journal)
    host.get_fact(CountedFact, tag="a", _sudo_password="hunter2-very-secret")
    host.get_fact(CountedFact, tag="b")
    fact_cache.write_journals()
    (written,) = journal.glob("*.json")
    assert "hunter2" not in written.read_text()
    assert [e["spec"]["args"]["tag"] for e in json.loads(written.read_text())] == ["b"]


class StatefulFact(FactBase[str]):
    """Test fact shaped like pyinfra's Sha1File: ``process`` reads what ``command`` kept; and
    like SystemdStatus: it requires a command (``needs``), guarded the way pyinfra guards it."""

    def requires_command(self, tag: str = "a", needs: str = "sh") -> str:
        return needs

    def command(self, tag: str = "a", needs: str = "sh") -> str:
        self.tag = tag
        return f"echo {tag} >> {LOG}; echo {tag}"

    def process(self, output: list[str]) -> str:
        return f"{self.tag}:{output[0]}"


def test_facts_that_keep_their_arguments_or_require_a_command_come_from_the_batch(
    counted: Path,
) -> None:
    journal = counted / "journal"
    answers = []
    for _ in range(2):  # the first run writes the journal, the second asks it in one batch
        state, host = new_run()
        with ctx_state.use(state), ctx_host.use(host):
            before = runs()
            fact_cache.enable(state, journal)
            answers.append(
                (
                    host.get_fact(StatefulFact, tag="x"),
                    host.get_fact(StatefulFact, tag="y", needs="no-such-command-here"),
                )
            )
            fact_cache.write_journals()
        if len(answers) == 2:
            # x came from the batch; y's command is missing: pyinfra asked it (and skipped it)
            assert runs() - before == 1, "x ran once, in the batch"
    assert answers[0] == answers[1] == ("x:x", None)


def test_a_run_of_another_role_keeps_the_journal_until_its_facts_age_out(
    counted: Path,
) -> None:
    journal = counted / "journal"

    alive: list[State] = []  # earlier runs' states are not written again at a later exit

    def run(tags: tuple[str, ...], now: float, **connection: Any) -> list[str]:
        state, host = new_run()
        alive.append(state)
        with ctx_state.use(state), ctx_host.use(host):
            fact_cache.enable(state, journal)
            for tag in tags:
                host.get_fact(CountedFact, tag=tag, **connection)
            fact_cache.write_journals(now=now)
        (written,) = journal.glob("*.json")
        return sorted(e["spec"]["args"]["tag"] for e in json.loads(written.read_text()))

    assert run(("a", "b"), now=1000.0) == ["a", "b"]
    assert run(("c",), now=2000.0) == ["a", "b", "c"], "another role's run keeps a and b"
    later = 2000.0 + fact_cache.JOURNAL_KEEP_S
    assert run(("c",), now=later) == ["c"], "a and b were last asked too long ago"
    # A run that connects another way (the first install as root, then the admin with sudo):
    # what was asked the old way is never asked again, so it goes at once.
    assert run(("d",), now=later + 1, _chdir="/") == ["d"]


class OtherHostsFact(CountedFact):
    """Test fact: counts its runs like CountedFact, declared as reading another host."""

    reads_other_hosts = True


def test_a_command_clears_its_own_hosts_answers_and_what_reads_other_hosts(
    local, tmp_path: Path
) -> None:
    """A command changes the host it runs on: another host's answer stays, unless its fact
    reads other hosts (then a shell command anywhere may change it; a file copied to a host
    changes that host only). A callback may change any host: every answer goes."""
    from io import BytesIO

    from pyinfra.api.command import FileUploadCommand

    state, host = local
    fact_cache.enable(state)
    cache = fact_cache._caches[state]
    other_local = ("other-host", "some.Fact", "[]", "[]")
    host.get_fact(OtherHostsFact)  # makes its class known as one that reads other hosts
    name = f"{OtherHostsFact.__module__}.{OtherHostsFact.__qualname__}"
    other_remote = ("other-host", name, "[]", "[]")
    cache[other_local] = cache[other_remote] = {"answer": 1}
    host.get_fact(CountedFact)
    FileUploadCommand(BytesIO(b"x"), str(tmp_path / "uploaded")).execute(state, host, {})
    assert other_local in cache and other_remote in cache, "another host's answers stay"
    assert host.get_fact(CountedFact)["run"] == 3, "this host's is asked again"
    StringCommand("true").execute(state, host, {})
    assert other_local in cache, "a fact of another host's own state stays"
    assert other_remote not in cache, "a fact reading other hosts goes"
    FunctionCommand(lambda: None, (), {}).execute(state, host, {})
    assert other_local not in cache, "a callback clears every answer"


def test_every_fact_of_the_project_says_whether_it_reads_other_hosts() -> None:
    """The cache keeps another host's answers across a command unless the fact says it reads
    other hosts: each fact class the project defines has to say it, one way or the other."""
    import importlib
    import inspect
    import pkgutil

    import tasks

    undeclared, remote = [], set()
    for module_info in pkgutil.walk_packages(tasks.__path__, "tasks."):
        module = importlib.import_module(module_info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, FactBase):
                continue
            if "reads_other_hosts" not in cls.__dict__:
                undeclared.append(f"{module.__name__}.{name}")
            elif cls.reads_other_hosts:
                remote.add(name)
    assert not undeclared, f"say reads_other_hosts = True or False on: {undeclared}"
    assert remote == {"PgbackrestInfo", "TailscaleState"}, remote


def test_after_a_change_the_journals_missing_facts_come_in_one_command(counted: Path) -> None:
    journal = counted / "journal"
    state, host = new_run()
    with ctx_state.use(state), ctx_host.use(host):
        _run_once((state, host), journal, {"tag": "a"}, {"tag": "b"}, {"tag": "c"})
    assert runs() == 3

    state, host = new_run()
    with ctx_state.use(state), ctx_host.use(host):
        fact_cache.enable(state, journal)
        assert runs() == 6, "the three in the first batch"
        for _ in range(fact_cache.REFETCH_LIMIT):
            StringCommand("true").execute(state, host, {})  # something changed
            before = runs()
            host.get_fact(CountedFact, tag="b")
            assert runs() == before + 3, "the missed fact brought the journal's others along"
            host.get_fact(CountedFact, tag="a")
            host.get_fact(CountedFact, tag="c")
            assert runs() == before + 3, "...so they are not asked again"
        StringCommand("true").execute(state, host, {})
        before = runs()
        host.get_fact(CountedFact, tag="a")
        host.get_fact(CountedFact, tag="c")
        assert runs() == before + 2, "past the limit, one command per fact as pyinfra asks"
        host.get_fact(CountedFact, tag="z")
        assert runs() == before + 3, "a fact not in the journal is asked alone"


class FailingFact(FactBase[str]):
    """Test fact: records each run, then fails (exit 1), as a fact of a missing thing may."""

    def command(self) -> str:
        return f"echo f >> {LOG}; exit 1"

    def process(self, output: list[str]) -> str:
        return "never"


def test_a_fact_the_batch_cannot_answer_never_sets_off_another_batch(counted: Path) -> None:
    journal = counted / "journal"
    state, host = new_run()
    with ctx_state.use(state), ctx_host.use(host):
        fact_cache.enable(state, journal)
        host.get_fact(CountedFact, tag="a")
        with pytest.raises(Exception):  # noqa: B017 - pyinfra's error for a failing fact
            host.get_fact(FailingFact)
        fact_cache.write_journals()
    state, host = new_run()
    with ctx_state.use(state), ctx_host.use(host):
        fact_cache.enable(state, journal)
        before = runs()
        for _ in range(3):
            with pytest.raises(Exception):  # noqa: B017
                host.get_fact(FailingFact)
        assert runs() == before + 3, "asked alone each time, no batch of the others"
        assert host.get_fact(CountedFact, tag="a")["run"] <= before, "still the batch's answer"
