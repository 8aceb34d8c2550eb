"""``labctl.py`` run as its own process from a lab test, the way ``make lab-*`` runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LABCTL = [sys.executable, str(Path(__file__).with_name("labctl.py").resolve())]


def labctl_run(*args: str, timeout: float = 600) -> str:
    """Run ``labctl.py ARGS``; fail the test with its output unless it exits 0."""
    result = subprocess.run(
        [*LABCTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"labctl {' '.join(args)} failed:\n{output}"
    return output
