"""A wheelhouse on the lab machine for what the lab hosts install from PyPI.

The lab's containers cannot verify this machine's egress TLS, so packages from PyPI are
downloaded here once (cached in the lab cache, kept by ``labctl down``) for the lab hosts'
Python (Debian 13: CPython 3.13, x86_64), and the deploy installs from them with no index
(data ``pve_exporter_wheelhouse``). A rerun downloads nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.lab import hosts

PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--python-version",
    "3.13",
    "--implementation",
    "cp",
    "--abi",
    "cp313",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
]


def ensure_wheelhouse(name: str, requirement: str) -> Path:
    """Directory with ``requirement`` and its dependencies as wheels; downloaded when missing."""
    safe = requirement.replace("==", "-").replace("/", "_")
    directory = hosts.CACHE_DIR / "wheels" / name / safe
    marker = directory / ".complete"
    if marker.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "-d", str(directory), requirement,
         *PLATFORM_ARGS],
        check=True,
        timeout=600,
    )  # fmt: skip
    marker.write_text(requirement + "\n")
    return directory
