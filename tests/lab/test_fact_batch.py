"""The fact cache's batch answers exactly as pyinfra does, on the rolled-out lab hosts.

The batch (tasks/common/fact_cache.py) runs each fact's own command in one script and reads
it with the fact's own ``process``, except the facts of a kind asked together (files' states
and checksums, units' states: tasks/common/fact_combiners.py), whose output is cut per fact:
that is where its answers could drift from pyinfra's. The deploy file
tests/lab/fact_batch_check.py asks every combined fact of every host's journal both ways, and
every fact of the DNS host's journal, and lists the differences. A file that changes by
itself between two asks (a directory a collector writes into) is asked again, both ways, until
it holds still; a difference that stays is the batch's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import hosts

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")


def test_the_batch_answers_every_fact_as_pyinfra_asks_it_alone(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(PYINFRA), "-y", "tests/lab/inventory.py", "tests/lab/fact_batch_check.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={
            **os.environ,
            "HOMELAB_FACT_CHECK_OUT": str(tmp_path),
            "HOMELAB_FACT_CHECK_ALL": "dns",
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = {h.name: json.loads((tmp_path / f"{h.name}.json").read_text()) for h in hosts.HOSTS}
    for name, report in reports.items():
        print(
            f"{name}: {report['journal']} facts in the journal, {report['batched']} batched,"
            f" {report['combined']} combined, {report['compared']} compared alone"
        )
        assert not report["differences"], (name, report["differences"])
        assert not report["unanswered"], (name, report["unanswered"])
        # A live file may change between asks; one that never held still for three tries
        # in a row is reported, and there may only be a few.
        assert len(report["never_held_still"]) <= 2, (name, report["never_held_still"])
    # The comparison had something to compare: most of a host's facts are combined.
    assert all(r["combined"] >= r["journal"] / 2 for r in reports.values()), reports
    dns = reports["dns"]
    assert dns["compared"] + dns["changes_by_itself"] == dns["journal"], dns
