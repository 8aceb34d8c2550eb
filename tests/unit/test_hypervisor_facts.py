"""The hypervisor facts read what the kernel and tools print (outputs as recorded on hosts)."""

from __future__ import annotations

from tasks.common.hardware_facts import (
    BootLoader,
    CpuVendor,
    DiskSignatures,
    KernelCmdline,
    PciDevices,
    UnitStates,
    ZfsPoolRoots,
)

# What PCI_COMMAND prints on the R9700 host: sysfs' class/vendor/device files keep their 0x.
PCI_OUTPUT = [
    "pci 0000:00:02.0 0x060400 0x8086 0x6f04 pcieport 29 0",
    "pci 0000:01:00.0 0x060400 0x1002 0x1478 pcieport 30 0",
    "pci 0000:03:00.0 0x030000 0x1002 0x7551 vfio-pci 30 0",
    "pci 0000:03:00.1 0x040300 0x1002 0xab40 - 30 0",
    "pci 0000:07:00.0 0x030000 0x1a03 0x2000 ast 38 1",
    "lspci 0000:03:00.0 VGA compatible controller: Advanced Micro Devices, Inc. [AMD/ATI] Navi 48",
]


def test_pci_devices_with_groups_drivers_and_boot_vga() -> None:
    devices = PciDevices().process(PCI_OUTPUT)
    gpu = devices["0000:03:00.0"]
    assert gpu == {
        "address": "0000:03:00.0",
        "pci_class": "030000",
        "id": "1002:7551",
        "driver": "vfio-pci",
        "iommu_group": "30",
        "boot_vga": False,
        "description": "VGA compatible controller: Advanced Micro Devices, Inc. [AMD/ATI] Navi 48",
    }
    assert devices["0000:03:00.1"]["driver"] is None
    assert devices["0000:07:00.0"]["boot_vga"] is True
    assert devices["0000:01:00.0"]["pci_class"] == "060400"


def test_pci_devices_without_iommu_have_no_group() -> None:
    devices = PciDevices().process(["pci 0000:03:00.0 0x030000 0x1002 0x7551 amdgpu - 0"])
    assert devices["0000:03:00.0"]["iommu_group"] is None
    assert PciDevices().process([]) == {}


def test_boot_loader_as_proxmox_boot_tool_reports_it() -> None:
    systemd_boot = [
        "efi",
        "proxmox-boot-tool",
        "esp uefi",
        "update-grub",
    ]
    assert BootLoader().process(systemd_boot) == {
        "loader": "systemd-boot",
        "proxmox_boot_tool": True,
        "efi": True,
    }
    assert BootLoader().process(["proxmox-boot-tool", "esp grub", "update-grub"])["loader"] == (
        "grub"
    )
    assert BootLoader().process(["efi", "update-grub"]) == {
        "loader": "grub",
        "proxmox_boot_tool": False,
        "efi": True,
    }
    assert BootLoader().process(["container"])["loader"] == "none"
    assert BootLoader().process([])["loader"] == "none"


def test_cmdline_cpu_vendor_units() -> None:
    assert KernelCmdline().process(["BOOT_IMAGE=/vmlinuz ro quiet intel_iommu=on"])[-1] == (
        "intel_iommu=on"
    )
    assert CpuVendor().process(["vendor_id\t: GenuineIntel"]) == "intel"
    assert CpuVendor().process(["vendor_id\t: AuthenticAMD"]) == "amd"
    assert CpuVendor().process([]) == "unknown"
    assert UnitStates().process(["rpcbind.service masked", "spiceproxy.service "]) == {
        "rpcbind.service": "masked",
        "spiceproxy.service": "not-found",
    }


def test_zfs_pools_and_missing_tools() -> None:
    assert ZfsPoolRoots().process([]) is None
    assert ZfsPoolRoots().process(["#zfs", "ssd\t/ssd\tyes", "rpool\t/rpool\tno"]) == {
        "ssd": {"mountpoint": "/ssd", "mounted": True},
        "rpool": {"mountpoint": "/rpool", "mounted": False},
    }


def test_disk_signatures_name_everything_that_makes_a_disk_not_blank() -> None:
    assert DiskSignatures().process(["missing"]) == {
        "exists": False,
        "signatures": [],
        "partitions": [],
    }
    assert DiskSignatures().process([]) == {"exists": True, "signatures": [], "partitions": []}
    used = DiskSignatures().process(
        ["sig gpt", "sig PMBR", "sig gpt", "part /dev/sdb1", "part /dev/sdb2"]
    )
    assert used == {
        "exists": True,
        "signatures": ["gpt", "PMBR"],
        "partitions": ["/dev/sdb1", "/dev/sdb2"],
    }
