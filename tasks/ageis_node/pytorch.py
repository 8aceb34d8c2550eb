"""PyTorch for ROCm on ageis-node: its own venv, the release of the data, PyTorch's ROCm wheels.

Runs where the data declares an AMD GPU (``gpus``) and ``pytorch_install`` is on; elsewhere it
says so and does nothing. The lab turns it off: its ageis-node is a container with no GPU and no
internet (the data declares the R9700 there so that ROCm's repository, pin and packages run
against the stand-in), and PyTorch's ROCm wheels are gigabytes from download.pytorch.org.

``pytorch_version`` (default 2.11.0) is installed with pip from ``pytorch_index_url`` (default
PyTorch's own index for ROCm 7.2, https://download.pytorch.org/whl/rocm7.2, the ROCm release of
the host's driver) into the venv ``pytorch_venv`` (/opt/pytorch/venv), made with umask 022 so that
every user's jobs can import it (the hosts' umask is 027). Such a wheel carries its own ROCm user
space (HIP, rocBLAS, MIOpen) for every target of PyTorch's ROCm builds, gfx1201 among them; the
host provides the kernel driver (``rocm.py``), and a user needs ``render`` and ``video``
(``rocm_gpu_users``) to open the GPU. ``HSA_OVERRIDE_GFX_VERSION`` stays unset.

Idempotent: one fact reads the version the venv holds (``importlib.metadata``, torch is not
imported). When it is ``pytorch_version`` built for ROCm (the local part ``+rocm<release>``, the
index's release when its URL names one), nothing runs. Another version or build (a CUDA or
CPU wheel of the same release) is uninstalled and the wanted one installed, then imported once
to check that the index served a ROCm build of that version. ``make verify`` runs a matrix
product on the GPU (``tests/verify``, marked ``hardware``).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import apt, files, server

from tasks.ageis_node.rocm import amd_gpus
from tasks.common.datamodel.forms import ABSOLUTE_PATH, Bool, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE

GROUPS = (AGEIS_NODE,)

VERSION = Str(
    r"[0-9]+\.[0-9]+\.[0-9]+",
    what='a PyTorch release such as "2.11.0" (no "+rocm..." part: the index picks the build)',
)
INDEX_URL = Str(
    r"https://[^\s'\"]+",
    what='an https URL of a wheel index such as "https://download.pytorch.org/whl/rocm7.2"',
)

DATA = Schema(
    "pytorch",
    Key(
        "pytorch_install",
        Bool(),
        True,
        "Install PyTorch (ROCm build) where an AMD GPU is declared (off in the lab: no GPU,"
        " no internet).",
        GROUPS,
    ),
    Key(
        "pytorch_version",
        VERSION,
        "2.11.0",
        "PyTorch release installed (2.11 to 2.13 are built for ROCm 7.2).",
        GROUPS,
    ),
    Key(
        "pytorch_index_url",
        INDEX_URL,
        "https://download.pytorch.org/whl/rocm7.2",
        "Wheel index PyTorch and its dependencies come from (PyTorch's index for a ROCm release).",
        GROUPS,
    ),
    Key(
        "pytorch_venv",
        ABSOLUTE_PATH,
        "/opt/pytorch/venv",
        "The venv PyTorch is installed into (readable by every user).",
        GROUPS,
    ),
)

# The ROCm release an index URL names (".../whl/rocm7.2" -> "rocm7.2"): the wheels' local part.
_INDEX_ROCM = re.compile(r"/(rocm[0-9][0-9.]*)/?$")


class TorchInVenv(FactBase[dict[str, Any]]):
    """Whether the venv exists and the torch version it holds (from its metadata, not imported):
    ``{"venv": bool, "torch": "2.11.0+rocm7.2" or None}``."""

    reads_other_hosts = False

    def command(self, venv: str) -> str:
        python = shlex.quote(f"{venv}/bin/python")
        probe = shlex.quote('import importlib.metadata as m; print(m.version("torch"))')
        return f"if [ -x {python} ]; then echo venv; {python} -c {probe} 2>/dev/null; fi; true"

    def process(self, output: list[str]) -> dict[str, Any]:
        lines = [line.strip() for line in output if line.strip()]
        venv = bool(lines) and lines[0] == "venv"
        return {"venv": venv, "torch": lines[1] if venv and len(lines) > 1 else None}


def rocm_build(index_url: str) -> str | None:
    """The local version part the index's wheels carry ("rocm7.2"), None when its URL names
    no ROCm release (a mirror): then any ROCm build of the version is taken."""
    match = _INDEX_ROCM.search(index_url)
    return match.group(1) if match else None


def is_wanted(installed: str | None, version: str, index_url: str) -> bool:
    """``installed`` (pip's version string) is ``version`` built for ROCm (the index's release
    when its URL names one); a CUDA or CPU wheel of the same release is not."""
    if not installed:
        return False
    public, _, local = installed.partition("+")
    build = rocm_build(index_url)
    return public == version and (local == build if build else local.startswith("rocm"))


def install_commands(settings: Any, installed: str | None) -> list[str]:
    """Uninstall another torch, install the wanted one from the index, check what came."""
    venv = settings.pytorch_venv
    pip = shlex.quote(f"{venv}/bin/pip")
    python = shlex.quote(f"{venv}/bin/python")
    version = settings.pytorch_version
    build = rocm_build(settings.pytorch_index_url)
    wanted = f"{version}+{build}" if build else f"{version}+rocm..."
    # What the index served must be this release built for ROCm (torch.version.hip is set).
    failed = (
        f"host {host.name!r}: key 'pytorch_index_url' ({settings.pytorch_index_url}) gave torch "
    )
    check = (
        f"import sys, torch; v = torch.__version__; sys.exit(0 if v.split('+')[0] == {version!r}"
        f" and torch.version.hip else {failed!r} + v + {f', expected {wanted}'!r})"
    )
    commands = []
    if installed:
        commands.append(f"{pip} uninstall --yes --disable-pip-version-check torch")
    commands.append(
        f"umask 022 && {pip} install --disable-pip-version-check --no-input --no-cache-dir"
        f" --index-url {shlex.quote(settings.pytorch_index_url)}"
        f" {shlex.quote(f'torch=={version}')}"
    )
    commands.append(f"{python} -c {shlex.quote(check)}")
    return commands


@deploy("PyTorch (ROCm)", data_defaults=DATA.defaults())
def pytorch() -> None:
    settings = DATA.read(host)
    if not amd_gpus(host.data):
        host.noop(f"PyTorch: {host.name}'s data declares no AMD GPU: nothing to do")
        return
    if not settings.pytorch_install:
        host.noop(f"PyTorch: not installed on {host.name} (pytorch_install is off)")
        return
    venv = settings.pytorch_venv
    state = host.get_fact(TorchInVenv, venv=venv)
    apt.packages(name="Python venv for PyTorch", packages=["python3-venv"], no_recommends=True)
    parent = venv.rsplit("/", 1)[0]
    if parent:  # made explicitly: mkdir under the hosts' 027 would shut other users out
        files.directory(name=f"PyTorch's directory {parent}", path=parent, mode="755")
    # Not pip.venv: it has no umask, and under the hosts' 027 other users could not import it.
    server.shell(
        name=f"PyTorch's venv {venv}",
        commands=[f"umask 022 && python3 -m venv {shlex.quote(venv)}"] if not state["venv"] else [],
    )
    installed = state["torch"]
    wanted = is_wanted(installed, settings.pytorch_version, settings.pytorch_index_url)
    change = f"{installed} -> " if installed and not wanted else ""
    server.shell(
        name=f"PyTorch {change}{settings.pytorch_version} (ROCm) from {settings.pytorch_index_url}",
        commands=[] if wanted else install_commands(settings, installed),
    )
