"""Benchmark: where a no-change rollout's time goes, beside the floor of reading the same state.

Run on a rolled-out lab (``make lab``) as ``make bench-rollout`` or
``python3 tests/bench/rollout.py --rounds 3``. Each round runs, side by side:

- ``full``: ``pyinfra -y -vvv tests/lab/inventory.py deploys/full.py``, which must change nothing;
- ``full plain``: the same without ``-vvv``, as an operator runs it (the cost of the printing);
- ``full plain, no pyinfra speedups``: the same with ``HOMELAB_PYINFRA_SPEEDUPS=0``, pyinfra's
  own per-operation functions (the baseline of ``tasks/common/pyinfra_speedups.py``);
- ``full, no fact cache`` and ``full plain, no fact cache``: the same two with
  ``HOMELAB_FACT_CACHE=0``, pyinfra asking every fact each time (the fact cache's baseline);
- each per-role deploy (``deploys/<role>.py``), which must change nothing;
- ``one-template``: the full rollout with one template's data changed (``--data
  journald_max_use=...``, a line in journald's drop-in on every host), then again without
  (back to the lab's value): both change exactly that file on every host; the same two with
  ``HOMELAB_FACT_REFETCH=0``, facts asked one by one after the change (the baseline of the
  fact cache's batch after a change);
- ``floor``: one SSH command per host that reads the state the no-change run checked (the SHA-1
  of every path the run asked a fact about, every package's version, every unit's state).

From ``-vvv`` output, read line by line with a clock: per run the seconds, operations, facts
and commands per host, and the ten slowest facts and operations with their share of the run.
Medians over the rounds. The figures are printed and written to ``bench-rollout.json`` in the
lab's state directory. Commands reach only the lab's own hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.lab import hosts, labctl  # noqa: E402

PYINFRA = Path(sys.executable).with_name("pyinfra")
INVENTORY = "tests/lab/inventory.py"
ROLE_DEPLOYS = ("hypervisor", "ageis_node", "embedder", "services")
FULL = "deploys/full.py"
FACT_CACHE_SWITCH = "HOMELAB_FACT_CACHE"
REFETCH_SWITCH = "HOMELAB_FACT_REFETCH"
SPEEDUPS_SWITCH = "HOMELAB_PYINFRA_SPEEDUPS"
TEMPLATE_KEY = "journald_max_use"
TEMPLATE_VALUE = "317M"

# pyinfra pads the host prefix to the longest name: "[pve]        >>> ".
_COMMAND = re.compile(r"^\[(?P<host>[^\]]+)\]\s+>>> ")
_FACT = re.compile(r"^\s+\[(?P<host>[^\]]+)\]\s+Loaded fact (?P<fact>\S+)(?: \((?P<args>.*)\))?$")
_OPERATION = re.compile(r"^--> Starting operation: (?P<name>.*?)\s*$")
# The fact cache's batch: all of a host's facts in one command (tasks/common/fact_cache.py).
_BATCH = re.compile(
    r"^\s+\[(?P<host>[^\]]+)\]\s+Loaded (?P<count>\d+) facts in one command"
    r" \((?P<seconds>[0-9.]+)s\)$"
)
BATCH_ROW = "fact batches (all of a host's facts in one command; wall time while any ran)"
_CHANGED = re.compile(r"^\s+\[(?P<host>[^\]]+)\]\s+Success$")


@dataclass
class Run:
    """One pyinfra run, as its -vvv output showed it."""

    label: str
    seconds: float = 0.0
    operations: int = 0
    changed: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    facts: Counter[str] = field(default_factory=Counter)
    fact_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    operation_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    paths: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # The floor's reading per host: files hashed, packages listed, units listed.
    read: dict[str, list[int]] = field(default_factory=dict)
    # The fact batches' spans (start, end) on this run's clock, every host's: the first
    # before the first operation, then one after each change that cleared a host's answers.
    batches: list[tuple[float, float]] = field(default_factory=list)


def pyinfra(label: str, deploy: str, *extra: str, cache: bool = True, refetch: bool = True) -> Run:
    """Run pyinfra, timing each output line as it arrives."""
    run = Run(label)
    argv = [str(PYINFRA), "-y", "-vvv", *extra, INVENTORY, deploy]
    started = time.monotonic()
    asked: dict[str, float] = {}  # host -> when its last command line was printed
    operation, operation_started = None, started
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        env=environment(cache, refetch),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        now = time.monotonic()
        line = line.rstrip("\n")
        tail = [*tail[-40:], line]
        if m := _OPERATION.match(line):
            if operation is not None:
                run.operation_seconds[operation] += now - operation_started
            operation, operation_started = m["name"], now
            run.operations += 1
        elif m := _COMMAND.match(line):
            run.commands[m["host"]] += 1
            asked[m["host"]] = now
        elif m := _BATCH.match(line):
            run.batches.append((now - float(m["seconds"]), now))
            asked[m["host"]] = now
        elif m := _FACT.match(line):
            host = m["host"]
            run.facts[host] += 1
            run.fact_seconds[m["fact"]] += now - asked.get(host, now)
            for path in re.findall(r"path=([^,)\s]+)", m["args"] or ""):
                run.paths[host].add(path)
        elif m := _CHANGED.match(line):
            run.changed[m["host"]] += 1
    code = process.wait()
    end = time.monotonic()
    if operation is not None:
        run.operation_seconds[operation] += end - operation_started
    run.seconds = end - started
    if run.batches:
        # The hosts run their batches side by side: the run waits for the union of the spans.
        run.fact_seconds[BATCH_ROW] = covered(run.batches)
    if code != 0:
        raise SystemExit(f"{label}: pyinfra exited {code}:\n" + "\n".join(tail))
    return run


def covered(spans: list[tuple[float, float]]) -> float:
    """How long at least one of ``spans`` ran (overlaps counted once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def environment(cache: bool, refetch: bool = True) -> dict[str, str]:
    """This process's environment, with the fact cache on or off (tasks/common/fact_cache.py),
    and its batch after a change on or off."""
    return {
        **os.environ,
        FACT_CACHE_SWITCH: "1" if cache else "0",
        REFETCH_SWITCH: os.environ.get(REFETCH_SWITCH, "") if refetch else "0",
    }


def plain(label: str, deploy: str, cache: bool = True, speedups: bool = True) -> Run:
    """The operator's own command, timed from outside only."""
    run = Run(label)
    started = time.monotonic()
    result = subprocess.run(
        [str(PYINFRA), "-y", INVENTORY, deploy],
        cwd=REPO,
        env={**environment(cache), **({} if speedups else {SPEEDUPS_SWITCH: "0"})},
        capture_output=True,
        text=True,
    )
    run.seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{label}: pyinfra exited {result.returncode}:\n{result.stdout[-3000:]}")
    return run


def floor(paths: dict[str, set[str]]) -> Run:
    """One SSH command per host reading what the no-change run checked; run in parallel."""
    run = Run("floor")
    started = time.monotonic()
    processes = {}
    for host in hosts.HOSTS:
        wanted = " ".join(shlex.quote(p) for p in sorted(paths.get(host.name, ())))
        script = (
            f"sha1sum {wanted} 2>/dev/null | wc -l; "
            "dpkg-query -W -f '${Package} ${Version}\\n' | wc -l; "
            "systemctl list-units --all --no-legend --plain | wc -l"
        )
        processes[host.name] = subprocess.Popen(
            labctl.ssh_argv(host, script), stdout=subprocess.PIPE, text=True
        )
    for name, process in processes.items():
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"floor on {name} failed"
        run.commands[name] = 1
        run.read[name] = [int(n) for n in out.split()]
    run.seconds = time.monotonic() - started
    return run


def top(seconds: dict[str, float], total: float, count: int = 10) -> list[dict[str, object]]:
    ranked = sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:count]
    return [
        {"name": name, "seconds": round(value, 2), "share": round(value / total, 3)}
        for name, value in ranked
    ]


def summary(runs: list[Run]) -> dict[str, object]:
    """Medians over the rounds of one kind of run, and the last round's top ten."""
    last = runs[-1]
    return {
        "seconds_median": round(statistics.median(r.seconds for r in runs), 2),
        "seconds_each": [round(r.seconds, 2) for r in runs],
        "operations": last.operations,
        "commands_per_host": dict(sorted(last.commands.items())),
        "facts_per_host": dict(sorted(last.facts.items())),
        "changed_per_host": dict(sorted(last.changed.items())),
        "floor_read_files_packages_units": dict(sorted(last.read.items())),
        "slowest_facts": top(last.fact_seconds, last.seconds) if last.fact_seconds else [],
        "slowest_operations": top(last.operation_seconds, last.seconds)
        if last.operation_seconds
        else [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=hosts.STATE_DIR / "bench-rollout.json")
    args = parser.parse_args(argv)
    kinds: dict[str, list[Run]] = defaultdict(list)
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number}/{args.rounds}", file=sys.stderr, flush=True)
        full = pyinfra("full", "deploys/full.py")
        kinds["full"].append(full)
        kinds["full plain"].append(plain("full plain", "deploys/full.py"))
        # The baseline of tasks/common/pyinfra_speedups.py: pyinfra's own functions.
        kinds["full plain, no pyinfra speedups"].append(
            plain("full plain, no pyinfra speedups", FULL, speedups=False)
        )
        # The baseline: pyinfra asking every fact each time.
        uncached = pyinfra("full, no fact cache", FULL, cache=False)
        kinds["full, no fact cache"].append(uncached)
        kinds["full plain, no fact cache"].append(
            plain("full plain, no fact cache", FULL, cache=False)
        )
        for role in ROLE_DEPLOYS:
            kinds[role].append(pyinfra(role, f"deploys/{role}.py"))
        kinds["one-template"].append(
            pyinfra("one-template", "deploys/full.py", "--data", f"{TEMPLATE_KEY}={TEMPLATE_VALUE}")
        )
        kinds["one-template back"].append(pyinfra("one-template back", "deploys/full.py"))
        # The baseline of the batch after a change: the same edit, facts asked one by one after it.
        kinds["one-template, no batch after a change"].append(
            pyinfra(
                "one-template, no batch after a change",
                "deploys/full.py",
                "--data",
                f"{TEMPLATE_KEY}={TEMPLATE_VALUE}",
                refetch=False,
            )
        )
        kinds["one-template back, no batch after a change"].append(
            pyinfra("one-template back, no batch after a change", "deploys/full.py", refetch=False)
        )
        # The paths every fact asked about, from the run that prints each fact it asks.
        kinds["floor"].append(floor(uncached.paths))
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": f"{os.uname().nodename}, {os.cpu_count()} CPUs",
        "rounds": args.rounds,
        "runs": {kind: summary(runs) for kind, runs in kinds.items()},
    }
    runs = result["runs"]

    def ratio(slow: str, fast: str) -> float:
        slower, faster = runs[slow]["seconds_median"], runs[fast]["seconds_median"]
        return round(float(slower) / max(float(faster), 1e-3), 1)

    result["full_over_floor"] = ratio("full plain", "floor")
    result["no_cache_over_cache"] = ratio("full plain, no fact cache", "full plain")
    result["no_speedups_over_speedups"] = ratio("full plain, no pyinfra speedups", "full plain")
    result["one_template_no_batch_over_batch"] = ratio(
        "one-template, no batch after a change", "one-template"
    )
    for kind in ("full", "full, no fact cache", *ROLE_DEPLOYS):
        changed = runs[kind]["changed_per_host"]
        if changed:
            print(f"warning: {kind} changed something: {changed}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
