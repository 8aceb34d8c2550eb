"""The lab rollout converges: a second full run changes nothing and fails nowhere.

``make lab`` has already run the first rollout (``pyinfra -y tests/lab/inventory.py
deploys/full.py``, which must exit 0). This runs the same command again with ``--json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")


def rollout_json(deploy: str = "deploys/full.py") -> tuple[dict, float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(PYINFRA), "-y", "--json", "tests/lab/inventory.py", deploy],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env=os.environ.copy(),
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    start = result.stdout.index("{")
    # With --json and -y pyinfra prints {"plan": ..., "results": ...}.
    return json.loads(result.stdout[start:])["results"], elapsed


def test_second_full_rollout_changes_nothing() -> None:
    report, elapsed = rollout_json()
    changed = [f"{op['name']}: {op['success']}" for op in report["operations"] if op["success"]]
    print(f"no-op rerun of full.py over the lab: {elapsed:.1f}s")
    assert report["failed_hosts"] == []
    assert report["totals"]["error"] == 0
    assert report["totals"]["success"] == 0, "changed on a converged host:\n" + "\n".join(changed)
    assert report["totals"]["no_change"] > 0
