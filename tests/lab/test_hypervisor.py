"""The hypervisor role on the lab's pve, for real: what a Debian container can carry.

pve stays plain Debian (``proxmox_ve_install: false``, the lab's override) and is a container:
the VFIO files, pools and firewall are real; the PCI preflight, kernel command line, initramfs,
reboot and vfio-pci binding need hardware and are skipped, and the run must say so. A hand
change to the VFIO configuration makes the verify check fail and is put back by the next run,
which changes that file only (the run after it changing nothing is the final no-change rollout
of ``make test``). Leaves pve converged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.hypervisor.gpu_passthrough import MODPROBE
from tests.lab import hosts, labctl

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
PVE = hosts.by_name("pve")
SKIPS = (
    "Proxmox VE: not installed, and proxmox_ve_install is false: the host stays plain Debian",
    "GPU passthrough: this host is a container (lab): no IOMMU groups, no boot loader",
    "Skipped: the PCI preflight, kernel command line, initramfs, reboot and the vfio-pci"
    " binding proof",
)


def ssh(command: str) -> str:
    result = subprocess.run(
        labctl.ssh_argv(PVE, command),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"pve: {command!r} failed:\n{result.stderr}"
    return result.stdout


def hypervisor_run() -> tuple[dict[str, Any], str]:
    """deploys/hypervisor.py on pve: the --json results and pyinfra's log (stderr)."""
    result = subprocess.run(
        [
            str(PYINFRA),
            "-y",
            "--json",
            "--limit",
            "pve",
            "tests/lab/inventory.py",
            "deploys/hypervisor.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{") :])["results"], result.stderr


def changed(report: dict[str, Any]) -> list[str]:
    return [op["name"] for op in report["operations"] if op["success"]]


def verify_vfio() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/verify/test_hypervisor.py",
            "-k",
            "vfio_pci_claims",
            "--inventory",
            "tests/lab/inventory.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )


def test_hand_changed_vfio_config_fails_verify_and_is_put_back_with_the_skips_said() -> None:
    assert "softdep amdgpu pre: vfio-pci" in ssh(f"cat {MODPROBE}")
    ssh(f"sed -i '/^softdep amdgpu /d' {MODPROBE}")
    failing = verify_vfio()
    assert failing.returncode != 0, failing.stdout[-2000:]
    assert "no 'softdep amdgpu pre: vfio-pci'" in failing.stdout

    report, log = hypervisor_run()
    assert changed(report) == [
        f"GPU passthrough (IOMMU, VFIO) | vfio-pci takes every GPU function first ({MODPROBE})"
    ]
    for skip in SKIPS:
        assert skip in log, f"the run did not say: {skip}"
    assert "softdep amdgpu pre: vfio-pci" in ssh(f"cat {MODPROBE}")
    assert verify_vfio().returncode == 0
    # That the run after changes nothing is the final no-change rollout of `make test`.
