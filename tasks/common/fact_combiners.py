"""Many facts of one kind answered by one command, for the fact cache's batch.

A host's batch (tasks/common/fact_cache.py) runs each fact's own command; most of them are
the same few kinds asked about many things: a file's state (``File``, ``Directory``,
``Link``: one ``stat`` each), its checksum (``Sha1File``, ``Sha256File``) and a unit's state
(``SystemdStatus``, ``SystemdEnabled``: one ``systemctl show`` each), some 300 of a host's 400.
A combiner asks all the things of its kind in one command and cuts the output into the very
lines each fact's own command would have printed, which the fact's own ``process`` then reads.
Where the output does not cut cleanly (a file that vanished in between, an unreadable one),
no fact takes an answer from it and pyinfra asks each alone, as without the batch.

``tests/lab/test_fact_batch.py`` compares every combined answer on the lab's hosts with
pyinfra's own.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyinfra.facts.files import LINUX_STAT_COMMAND

# systemd unit names as the batch takes them: no patterns, nothing to quote.
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@\\-]+")


@dataclass(frozen=True)
class Combiner:
    """One command for many facts of a kind: ``items`` picks what a fact asks about (None:
    this fact is asked alone), ``command`` asks all items at once, ``split`` cuts its output
    per item (None: it does not cut cleanly), ``join`` gives a fact's lines from its items'."""

    facts: tuple[str, ...]
    items: Callable[[dict[str, Any]], list[str] | None]
    command: Callable[[list[str]], str]
    split: Callable[[list[str], list[str]], dict[str, list[str]] | None]
    join: Callable[[list[list[str]]], list[str]] = lambda parts: [
        line for part in parts for line in part
    ]


def _units(args: dict[str, Any]) -> list[str] | None:
    """The units a system-manager unit fact asks about (no user manager, no container, plain
    names)."""
    if args.get("user_mode") or args.get("machine") or args.get("user_name"):
        return None
    units = args.get("services")
    units = [units] if isinstance(units, str) else units
    if not isinstance(units, list) or not units:
        return None
    plain = all(isinstance(unit, str) and UNIT_NAME.fullmatch(unit) for unit in units)
    return units if plain else None


def units_command(units: list[str]) -> str:
    """One ``systemctl show`` for every unit: a block per unit, in order, with the properties
    each unit fact reads."""
    quoted = " ".join(shlex.quote(unit) for unit in units)
    return (
        f"systemctl show --all --property Id --property SubState --property UnitFileState {quoted}"
    )


def unit_blocks(lines: list[str], units: list[str]) -> dict[str, list[str]] | None:
    """``systemctl show``'s output per unit (blocks between empty lines, in the order asked);
    None when the blocks do not match the units one to one."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    blocks = [block for block in blocks if block]
    if len(blocks) != len(units):
        return None
    return dict(zip(units, blocks, strict=True))


def _path(args: dict[str, Any]) -> list[str] | None:
    """The one path a file fact asks about, when the batch can name it (no ``~``, one line)."""
    path = args.get("path")
    if not isinstance(path, str) or not path or path.startswith("~") or "\n" in path:
        return None
    return [path]


def flagged_command(paths: list[str], test: str, tool: str) -> str:
    """A line per path, ``1`` where ``test`` holds and ``0`` where not, then one ``tool`` call
    for the paths that passed (one output line each, in order)."""
    quoted = " ".join(shlex.quote(path) for path in paths)
    return (
        f"set --; for p in {quoted}; do"
        f' if {test}; then echo 1; set -- "$@" "$p"; else echo 0; fi; done;'
        f' [ "$#" -eq 0 ] || {tool} -- "$@"'
    )


def flagged_lines(lines: list[str], paths: list[str]) -> dict[str, list[str]] | None:
    """The output of :func:`flagged_command` per path: its tool's line, or none; None when
    the flags or the line count are off."""
    flags, rest = lines[: len(paths)], lines[len(paths) :]
    if len(flags) != len(paths) or any(flag not in ("0", "1") for flag in flags):
        return None
    if len(rest) != flags.count("1"):
        return None
    found = iter(rest)
    return {
        path: [next(found)] if flag == "1" else [] for path, flag in zip(paths, flags, strict=True)
    }


COMBINERS: dict[str, Combiner] = {
    "units": Combiner(
        facts=("pyinfra.facts.systemd.SystemdStatus", "pyinfra.facts.systemd.SystemdEnabled"),
        items=_units,
        command=units_command,
        split=unit_blocks,
        # As systemctl prints several units: a block each, an empty line between.
        join=lambda parts: [line for part in parts for line in ("", *part)][1:],
    ),
    # As pyinfra's own: stat only what exists (a file, or a link even when dangling).
    "stat": Combiner(
        facts=(
            "pyinfra.facts.files.File",
            "pyinfra.facts.files.Directory",
            "pyinfra.facts.files.Link",
        ),
        items=_path,
        command=lambda paths: flagged_command(
            # pyinfra's own stat command: each line is the one the fact's own command prints.
            paths,
            'test -e "$p" || test -L "$p"',
            LINUX_STAT_COMMAND,
        ),
        split=flagged_lines,
    ),
    # A checksum of what is a file (or a link to one); a directory or nothing has none.
    "sha1": Combiner(
        facts=("pyinfra.facts.files.Sha1File",),
        items=_path,
        command=lambda paths: flagged_command(paths, 'test -f "$p"', "sha1sum"),
        split=flagged_lines,
    ),
    "sha256": Combiner(
        facts=("pyinfra.facts.files.Sha256File",),
        items=_path,
        command=lambda paths: flagged_command(paths, 'test -f "$p"', "sha256sum"),
        split=flagged_lines,
    ),
}
_BY_FACT = {fact: name for name, combiner in COMBINERS.items() for fact in combiner.facts}


def combined(fact: Any, spec: dict[str, Any]) -> tuple[str, list[str]] | None:
    """Which combiner answers ``fact`` (an instance) with ``spec``'s arguments, and the items
    it asks about; None when the fact is asked with its own command."""
    cls = type(fact)
    name = _BY_FACT.get(f"{cls.__module__}.{cls.__qualname__}")
    if name is None:
        return None
    items = COMBINERS[name].items(spec["args"])
    return (name, items) if items else None
