"""The hypervisor's kernel proof after the reboot into a new kernel: a clear failure, or nothing.

It runs with the host's facts as they are when the operation executes. Here a test double
stands in for pyinfra's host and state; the failing command is run in a real shell to show it
fails with the message.
"""

from __future__ import annotations

import subprocess
from types import SimpleNamespace
from typing import Any

import pytest

from tasks.hypervisor import kernel_update
from tasks.hypervisor.kernel_update import ProxmoxKernels, version_key
from tests.plan.machines import R9700_AT, xeon_pci

GPU = {
    "name": "r9700",
    "vendor": "amd",
    "passthrough_to": "ageis-node",
    "functions": [
        {"address": R9700_AT[0], "id": "1002:7551", "kind": "display"},
        {"address": R9700_AT[1], "id": "1002:ab40", "kind": "audio"},
    ],
}
OLD, NEW = "6.14.8-2-pve", "6.14.11-1-pve"
ON_TRIAL = [f"image {OLD}", f"image {NEW}", f"file /etc/kernel/proxmox-boot-pin {OLD}",
            f"marker fallback {OLD}", f"marker trial {NEW}"]  # fmt: skip


class HostDouble:
    """Test double of pyinfra's host: the kernel facts and PCI devices after the reboot."""

    name = "pve"

    def __init__(self, running: str, kernels: list[str], devices: dict[str, Any]) -> None:
        self.answers = {
            "KernelVersion": running,
            "ProxmoxKernels": ProxmoxKernels().process(kernels),
            "PciDevices": devices,
        }

    def get_fact(self, fact: type, **kwargs: Any) -> Any:
        return self.answers[fact.__name__]


def commands(
    monkeypatch: pytest.MonkeyPatch,
    running: str,
    devices: dict[str, Any],
    kernels: list[str] = ON_TRIAL,
    executing: bool = True,
) -> list[str]:
    monkeypatch.setattr(kernel_update, "host", HostDouble(running, kernels, devices))
    state = SimpleNamespace(is_executing=executing)
    monkeypatch.setattr(kernel_update, "context", SimpleNamespace(state=state))
    return [c.get_raw_value() for c in kernel_update.prove_new_kernel._inner([GPU], OLD)]


def fails_with(command: str) -> str:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    return result.stderr


def test_the_kernels_fact_reads_images_pins_and_the_marker() -> None:
    state = ProxmoxKernels().process([f"image {NEW}", "image 6.8.12-4-pve", *ON_TRIAL[:1],
                                      *ON_TRIAL[2:]])  # fmt: skip
    assert state == {
        "images": ["6.8.12-4-pve", OLD, NEW],  # numbers as numbers: 6.14.11 after 6.14.8
        "pin": OLD,
        "next_boot": None,
        "fallback": OLD,
        "trial": NEW,
    }
    assert ProxmoxKernels().process([]) == {
        "images": [], "pin": None, "next_boot": None, "fallback": None, "trial": None,
    }  # fmt: skip
    assert version_key("6.17.2-1-pve") > version_key(NEW) > version_key(OLD)


def test_the_new_kernel_with_the_gpu_on_vfio_pci_passes(monkeypatch) -> None:
    assert commands(monkeypatch, NEW, xeon_pci(gpu_driver="vfio-pci")) == []
    # Planning (not executing) never judges the facts of before the reboot.
    assert commands(monkeypatch, OLD, xeon_pci(), executing=False) == []


def test_the_old_kernel_running_after_the_reboot_fails_and_says_what_to_do(monkeypatch) -> None:
    [command] = commands(monkeypatch, OLD, xeon_pci(gpu_driver="vfio-pci"))
    message = fails_with(command)
    assert message.startswith(f"host 'pve': kernel {NEW} failed its proof after the reboot:\n")
    assert f"the host runs {OLD}, not {NEW}: the new kernel did not come up" in message
    assert f"{OLD} is still the pinned boot default: reboot the host (`systemctl reboot`)" in (
        message
    )
    assert "`rm /var/lib/homelab/kernel-update` and roll out again" in message


def test_a_new_kernel_that_breaks_passthrough_fails_naming_each_problem(monkeypatch) -> None:
    devices = xeon_pci(gpu_driver="vfio-pci")
    devices[R9700_AT[0]]["driver"] = "amdgpu"
    [command] = commands(monkeypatch, NEW, devices)
    message = fails_with(command)
    assert "not bound to vfio-pci: 0000:03:00.0 [1002:7551]: driver amdgpu" in message
    assert "0000:03:00.1" not in message.split("is still the pinned")[0]
    [no_groups] = commands(monkeypatch, NEW, xeon_pci(iommu=False, gpu_driver="vfio-pci"))
    assert "the kernel made no IOMMU groups" in fails_with(no_groups)


def test_no_kernel_on_trial_fails(monkeypatch) -> None:
    [command] = commands(monkeypatch, NEW, xeon_pci(gpu_driver="vfio-pci"), kernels=[])
    assert "no kernel on trial in /var/lib/homelab/kernel-update" in fails_with(command)
