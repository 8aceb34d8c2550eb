"""The execution-time checks of GPU passthrough (after a reboot): a clear failure, or nothing.

They run with the host's facts as they are when the operation executes. Here a test double
stands in for pyinfra's host and state; the failing command is run in a real shell to show it
fails with the message.
"""

from __future__ import annotations

import subprocess
from types import SimpleNamespace
from typing import Any

import pytest

from tasks.hypervisor import gpu_passthrough
from tests.plan.machines import R9700_AT, pci, xeon_pci

GPU = {
    "name": "r9700",
    "vendor": "amd",
    "passthrough_to": "ageis-node",
    "functions": [
        {"address": R9700_AT[0], "id": "1002:7551", "kind": "display"},
        {"address": R9700_AT[1], "id": "1002:ab40", "kind": "audio"},
    ],
}


class HostDouble:
    """Test double of pyinfra's host: answers PciDevices with the given devices."""

    name = "pve"

    def __init__(self, devices: dict[str, Any]) -> None:
        self.devices = devices

    def get_fact(self, fact: type, **kwargs: Any) -> dict[str, Any]:
        assert fact.__name__ == "PciDevices"
        return self.devices


def commands(
    monkeypatch: pytest.MonkeyPatch, op: Any, devices: dict[str, Any], executing: bool = True
) -> list[str]:
    monkeypatch.setattr(gpu_passthrough, "host", HostDouble(devices))
    state = SimpleNamespace(is_executing=executing)
    monkeypatch.setattr(gpu_passthrough, "context", SimpleNamespace(state=state))
    return [c.get_raw_value() for c in op._inner([GPU])]


def fails_with(command: str) -> str:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    return result.stderr


def test_binding_proof_passes_when_every_function_is_on_vfio_pci(monkeypatch) -> None:
    op = gpu_passthrough.prove_vfio_binding
    assert commands(monkeypatch, op, xeon_pci(gpu_driver="vfio-pci")) == []


def test_binding_proof_fails_naming_the_function_and_its_driver(monkeypatch) -> None:
    op = gpu_passthrough.prove_vfio_binding
    devices = xeon_pci(gpu_driver="vfio-pci")
    devices[R9700_AT[1]]["driver"] = "snd_hda_intel"
    [command] = commands(monkeypatch, op, devices)
    message = fails_with(command)
    assert "host 'pve': not bound to vfio-pci after the reboot" in message
    assert "0000:03:00.1 [1002:ab40]: driver snd_hda_intel" in message
    assert "0000:03:00.0" not in message.split("Check")[0]
    # Planning (not executing) never fails on the facts of before the reboot.
    assert commands(monkeypatch, op, devices, executing=False) == []


def test_group_check_after_the_reboot(monkeypatch) -> None:
    op = gpu_passthrough.check_after_reboot
    assert commands(monkeypatch, op, xeon_pci()) == []
    [no_groups] = commands(monkeypatch, op, xeon_pci(iommu=False))
    assert "made no IOMMU groups" in fails_with(no_groups)
    unsafe = xeon_pci()
    unsafe["0000:04:00.0"] = pci("0000:04:00.0", "010601", "1b21:0612", "ahci", "30", "SATA")
    [command] = commands(monkeypatch, op, unsafe)
    message = fails_with(command)
    assert "refused before VFIO was configured" in message
    assert "IOMMU group 30:" in message and "0000:04:00.0  class 0106  [1b21:0612]" in message
