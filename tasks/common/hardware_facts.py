"""Facts of the hypervisor's hardware and boot: PCI devices and IOMMU groups, boot loader,
kernel command line, console framebuffers, CPU vendor, ZFS pools, disk signatures, unit states.

Each fact reads the kernel's own view (``/sys``, ``/proc``) or the tool that owns the thing
(``zfs``, ``wipefs``, ``systemctl``) and never changes anything. A container (the lab) sees no
IOMMU groups and no boot loader of its own; the tasks say so and skip what needs hardware.
"""

from __future__ import annotations

import shlex
from typing import TypedDict

from pyinfra.api import FactBase


class PciDevice(TypedDict):
    """One PCI function as ``/sys/bus/pci/devices/ADDRESS`` shows it."""

    address: str  # "0000:03:00.0"
    pci_class: str  # six hex digits, "030000" (VGA), "060400" (PCI bridge), "010601" (SATA AHCI)
    id: str  # "1002:7551"
    driver: str | None  # bound driver ("vfio-pci", "amdgpu", "pcieport"), None when unbound
    iommu_group: str | None  # None when the IOMMU is off
    boot_vga: bool  # the firmware's boot display (its console) is on this function
    description: str  # lspci's words, "" when lspci is missing


# One line per function: address class vendor device driver group boot_vga, then lspci -Dnn.
PCI_COMMAND = r"""
[ -d /sys/bus/pci/devices ] || exit 0
for p in /sys/bus/pci/devices/*; do
  [ -e "$p/class" ] || continue
  a=${p##*/}
  d=-; [ -e "$p/driver" ] && d=$(basename "$(readlink "$p/driver")")
  g=-; [ -e "$p/iommu_group" ] && g=$(basename "$(readlink "$p/iommu_group")")
  b=0; [ -r "$p/boot_vga" ] && b=$(cat "$p/boot_vga")
  echo "pci $a $(cat "$p/class") $(cat "$p/vendor") $(cat "$p/device") $d $g $b"
done
if command -v lspci >/dev/null 2>&1; then lspci -D 2>/dev/null | sed 's/^/lspci /'; fi
"""


def _hex(value: str, digits: int) -> str:
    return value.lower().removeprefix("0x").rjust(digits, "0")


class PciDevices(FactBase[dict[str, PciDevice]]):
    """Every PCI function of the host by address, with its IOMMU group and bound driver."""

    reads_other_hosts = False

    def command(self) -> str:
        return PCI_COMMAND

    def process(self, output: list[str]) -> dict[str, PciDevice]:
        devices: dict[str, PciDevice] = {}
        words: dict[str, str] = {}
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "lspci":
                address, _, text = rest.partition(" ")
                words[address] = text.strip()
                continue
            fields = rest.split()
            if kind != "pci" or len(fields) != 7:
                continue
            address, pci_class, vendor, device, driver, group, boot_vga = fields
            devices[address] = PciDevice(
                address=address,
                pci_class=_hex(pci_class, 6),
                id=f"{_hex(vendor, 4)}:{_hex(device, 4)}",
                driver=None if driver == "-" else driver,
                iommu_group=None if group == "-" else group,
                boot_vga=boot_vga == "1",
                description="",
            )
        for address, text in words.items():
            if address in devices:
                devices[address]["description"] = text
        return devices


class BootLoaderInfo(TypedDict):
    loader: str  # "grub", "systemd-boot" or "none" (a container, or nothing found)
    proxmox_boot_tool: bool  # the ESPs are kept by proxmox-boot-tool (refresh after changes)
    efi: bool  # booted by UEFI


class BootLoader(FactBase[BootLoaderInfo]):
    """The boot loader the host actually boots with, as Proxmox VE's documentation tells them apart.

    ``proxmox-boot-tool status`` names, per ESP, ``uefi`` (systemd-boot reading
    ``/etc/kernel/cmdline``) or ``grub``; without proxmox-boot-tool a Debian host boots GRUB when
    ``update-grub`` is there. A container has no boot loader of its own.
    """

    reads_other_hosts = False

    def command(self) -> str:
        return (
            "if systemd-detect-virt --container >/dev/null 2>&1; then echo container; exit 0; fi; "
            "[ -d /sys/firmware/efi ] && echo efi; "
            "if [ -s /etc/kernel/proxmox-boot-uuids ] && command -v proxmox-boot-tool >/dev/null;"
            " then echo proxmox-boot-tool; proxmox-boot-tool status 2>/dev/null"
            " | sed -n 's/.*is configured with: *\\([a-z]*\\).*/esp \\1/p'; fi; "
            "command -v update-grub >/dev/null 2>&1 && echo update-grub; true"
        )

    def process(self, output: list[str]) -> BootLoaderInfo:
        lines = {line.strip() for line in output}
        efi = "efi" in lines
        if "container" in lines:
            return BootLoaderInfo(loader="none", proxmox_boot_tool=False, efi=False)
        if "proxmox-boot-tool" in lines:
            loader = "systemd-boot" if "esp uefi" in lines else "grub"
            return BootLoaderInfo(loader=loader, proxmox_boot_tool=True, efi=efi)
        loader = "grub" if "update-grub" in lines else "none"
        return BootLoaderInfo(loader=loader, proxmox_boot_tool=False, efi=efi)


class KernelCmdline(FactBase[list[str]]):
    """The running kernel's command line (``/proc/cmdline``), word by word."""

    reads_other_hosts = False

    def command(self) -> str:
        return "cat /proc/cmdline"

    def process(self, output: list[str]) -> list[str]:
        return " ".join(output).split()


class Framebuffers(FactBase[list[str]]):
    """The console framebuffers (``/proc/fb``): ``["0 EFI VGA"]``, ``["0 amdgpudrmfb"]``."""

    reads_other_hosts = False

    def command(self) -> str:
        return "cat /proc/fb 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class CpuVendor(FactBase[str]):
    """``intel``, ``amd`` or ``unknown``, from ``/proc/cpuinfo``'s vendor_id."""

    reads_other_hosts = False

    def command(self) -> str:
        return "grep -m1 '^vendor_id' /proc/cpuinfo || true"

    def process(self, output: list[str]) -> str:
        text = " ".join(output)
        if "GenuineIntel" in text:
            return "intel"
        if "AuthenticAMD" in text:
            return "amd"
        return "unknown"


class ZfsDataset(TypedDict):
    mountpoint: str
    mounted: bool


class ZfsPoolRoots(FactBase["dict[str, ZfsDataset] | None"]):
    """Imported ZFS pools' root datasets: name -> mountpoint and whether it is mounted.

    None when the zfs tools are not installed. (pyinfra's own ``ZfsPools`` fact lists pool
    properties, not mounts: hence a name of its own.)
    """

    reads_other_hosts = False

    def command(self) -> str:
        return (
            "command -v zfs >/dev/null 2>&1 || exit 0; echo '#zfs'; "
            "zfs list -H -d 0 -o name,mountpoint,mounted 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> dict[str, ZfsDataset] | None:
        if "#zfs" not in [line.strip() for line in output]:
            return None
        pools: dict[str, ZfsDataset] = {}
        for line in output:
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) == 3:
                pools[fields[0]] = ZfsDataset(mountpoint=fields[1], mounted=fields[2] == "yes")
        return pools


class DiskState(TypedDict):
    exists: bool
    # What makes the disk not blank: "gpt", "dos", "ext4", "zfs_member", "LVM2_member", ...
    signatures: list[str]
    partitions: list[str]  # child block devices (partitions) the kernel knows


class DiskSignatures(FactBase[DiskState]):
    """Whether a whole disk is blank: every signature ``wipefs`` and ``blkid`` find, and its
    partitions (``lsblk``). Reads only (``wipefs --no-act``, ``blkid -p``)."""

    reads_other_hosts = False

    def command(self, device: str) -> str:
        quoted = shlex.quote(device)
        return (
            f"[ -b {quoted} ] || {{ echo missing; exit 0; }}; "
            f"wipefs --no-act --noheadings --output TYPE {quoted} 2>/dev/null | sed 's/^/sig /'; "
            f"blkid -p -s TYPE -s PTTYPE -o value {quoted} 2>/dev/null | sed 's/^/sig /'; "
            f"lsblk -nrpo NAME,TYPE {quoted} 2>/dev/null | sed -n 's/ part$//p' | sed 's/^/part /'"
        )

    def process(self, output: list[str]) -> DiskState:
        lines = [line.strip() for line in output if line.strip()]
        if "missing" in lines:
            return DiskState(exists=False, signatures=[], partitions=[])
        signatures: list[str] = []
        partitions: list[str] = []
        for line in lines:
            kind, _, value = line.partition(" ")
            if kind == "sig" and value and value not in signatures:
                signatures.append(value)
            elif kind == "part" and value:
                partitions.append(value)
        return DiskState(exists=True, signatures=signatures, partitions=partitions)


class UnitStates(FactBase[dict[str, str]]):
    """``systemctl is-enabled`` of each unit: "enabled", "disabled", "masked", "static", ...;
    "not-found" when systemd does not know the unit."""

    reads_other_hosts = False

    def command(self, units: tuple[str, ...]) -> str:
        return "; ".join(
            f'echo "{unit} $(systemctl is-enabled {shlex.quote(unit)} 2>/dev/null || true)"'
            for unit in units
        )

    def process(self, output: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        for line in output:
            unit, _, state = line.strip().partition(" ")
            if unit:
                states[unit] = state.strip() or "not-found"
        return states
