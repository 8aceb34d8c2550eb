"""The fact batch's combiners (tasks/common/fact_combiners.py): each cuts one command's output
into the lines each fact's own command prints. Files and checksums are compared here with
pyinfra's own fact commands on this machine's files; systemd's units, which this machine does
not run, on canned ``systemctl show`` output (and in the lab: tests/lab/test_fact_batch.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyinfra.api.facts import _make_command
from pyinfra.facts.files import Directory, File, Link, Sha1File, Sha256File

from tasks.common import fact_combiners


def sh(command: str) -> list[str]:
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture
def paths(tmp_path: Path) -> list[str]:
    (tmp_path / "file").write_text("x\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "it's a name").write_text("y")
    names = ["file", "dir", "link", "dangling", "missing", "it's a name"]
    return [str(tmp_path / name) for name in names]


@pytest.mark.parametrize("fact_class", [File, Directory, Link, Sha1File, Sha256File])
def test_each_path_gets_the_answer_its_own_command_gives(fact_class: type, paths) -> None:
    found = fact_combiners.combined(fact_class(), {"args": {"path": paths[0]}})
    assert found is not None
    combiner = fact_combiners.COMBINERS[found[0]]
    parts = combiner.split(sh(combiner.command(paths)), paths)
    assert parts is not None
    for path in paths:
        # As the batch does: each fact made with its own command (a hash fact keeps its path).
        fact = fact_class()
        own = sh(_make_command(fact.command, {"path": path}).get_raw_value())
        expected = fact.process(own) if own else fact.default()
        lines = combiner.join([parts[path]])
        assert (fact.process(lines) if lines else fact.default()) == expected, path
        assert lines == own, path


def test_output_that_does_not_cut_cleanly_answers_no_fact() -> None:
    assert fact_combiners.flagged_lines(["1", "0", "line"], ["a", "b"]) == {
        "a": ["line"],
        "b": [],
    }
    assert fact_combiners.flagged_lines(["1", "1", "line"], ["a", "b"]) is None, "a line short"
    assert fact_combiners.flagged_lines(["0", "0", "extra"], ["a", "b"]) is None
    assert fact_combiners.flagged_lines(["1"], ["a", "b"]) is None


def test_systemctl_shows_blocks_are_handed_to_their_units_or_to_none() -> None:
    lines = ["Id=a.service", "SubState=running", "", "Id=b.timer", "SubState=waiting", ""]
    assert fact_combiners.unit_blocks(lines, ["a.service", "b.timer"]) == {
        "a.service": ["Id=a.service", "SubState=running"],
        "b.timer": ["Id=b.timer", "SubState=waiting"],
    }
    assert fact_combiners.unit_blocks(lines, ["a.service"]) is None
    assert fact_combiners.unit_blocks(lines[:2], ["a.service", "b.timer"]) is None
    command = fact_combiners.units_command(["a.service", "b.timer"])
    assert command.index("a.service") < command.index("b.timer")


@pytest.mark.parametrize(
    "args",
    [
        {"path": "~/x"},
        {"path": "a\nb"},
        {"services": "*.service"},
        {"services": ["a.service"], "user_mode": True},
    ],
)
def test_what_a_combined_command_cannot_name_is_asked_alone(args: dict) -> None:
    from pyinfra.facts.systemd import SystemdStatus

    fact = SystemdStatus() if "services" in args else File()
    assert fact_combiners.combined(fact, {"args": args}) is None
