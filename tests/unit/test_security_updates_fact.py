"""The security-updates fact's shell command, run here with test doubles of ``apt`` and
``unattended-upgrade`` first on PATH (each a script that logs its call and prints a canned
answer), so the test sees when the slow dry run is asked and what the fact reads from it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.common.facts import UnattendedUpgradesPending

UPGRADABLE = "Listing...\nopenssl/trixie-security 3.5.1-1+deb13u1 amd64 [upgradable from: 3.5.1-1]"
DRY_RUN = (
    "Checking: openssl\nPackages that will be upgraded: libssl3t64 openssl\nAll upgrades installed"
)


def run_fact(tmp_path: Path, apt_list: str | None, dry_run: str | None) -> tuple[object, list[str]]:
    """The fact's answer and the doubles' calls, with the given canned outputs (None: the
    command is not installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name, output in (("apt", apt_list), ("unattended-upgrade", dry_run)):
        if output is None:
            continue
        double = bin_dir / name
        double.write_text(
            f'#!/bin/sh\necho {name} "$@" >> {calls}\n'
            f"cat <<'END_OF_DOUBLE'\n{output}\nEND_OF_DOUBLE\n"
        )
        double.chmod(0o755)
    # Only the doubles and the tools the command pipes through: whatever this machine has
    # installed stays out of sight.
    for tool in ("grep", "sed", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    fact = UnattendedUpgradesPending()
    result = subprocess.run(
        ["/bin/sh", "-c", fact.command()],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(bin_dir)},
        check=True,
    )
    logged = calls.read_text().splitlines() if calls.exists() else []
    return fact.process(result.stdout.splitlines()), logged


def test_nothing_upgradable_answers_without_the_dry_run(tmp_path: Path) -> None:
    answer, calls = run_fact(tmp_path, "Listing...", DRY_RUN)
    assert answer == []
    assert calls == ["apt list --upgradable"], "the dry run must not be asked"


def test_an_upgradable_package_asks_unattended_upgrades_own_dry_run(tmp_path: Path) -> None:
    answer, calls = run_fact(tmp_path, UPGRADABLE, DRY_RUN)
    assert answer == ["libssl3t64", "openssl"]
    assert calls == ["apt list --upgradable", "unattended-upgrade --dry-run --verbose"]


def test_upgradable_but_not_from_its_origins_is_nothing_to_do(tmp_path: Path) -> None:
    answer, _ = run_fact(tmp_path, UPGRADABLE, "No packages found that can be upgraded")
    assert answer == []


@pytest.mark.parametrize("apt_list", [UPGRADABLE, "Listing..."])
def test_without_unattended_upgrades_the_answer_is_none(tmp_path: Path, apt_list: str) -> None:
    answer, calls = run_fact(tmp_path, apt_list, None)
    assert answer is None and calls == []
