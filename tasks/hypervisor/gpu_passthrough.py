"""GPU passthrough on the hypervisor (IOMMU + VFIO), refusing what is unsafe.

For every GPU in the hypervisor's ``gpus`` with a ``passthrough_to``:

1. **Preflight, from facts, before any change** (``preflight``): each declared function exists
   with its declared ID; every function of the card (same bus and slot) is declared; the
   firmware's console is not on the card (``boot_vga``); the CPU is the vendor the data says;
   and, when the IOMMU is on, the card's IOMMU group holds only its own functions and PCI
   bridges/switch ports. Anything else stops the run with the group's full listing and what to
   do. With the IOMMU off, the kernel command line change comes first and the group check runs
   right after the reboot, before VFIO is configured.
2. **Kernel command line** through the boot loader the host boots with: a GRUB drop-in
   (``/etc/default/grub.d/``) and ``update-grub``, or ``/etc/kernel/cmdline`` and
   ``proxmox-boot-tool refresh`` (systemd-boot); Intel ``intel_iommu=on iommu=pt``, AMD
   ``iommu=pt`` (the AMD IOMMU is on by default).
3. **VFIO**: ``vfio vfio_iommu_type1 vfio_pci`` loaded at boot, ``options vfio-pci ids=`` with
   every function, ``softdep`` so the GPU and audio drivers wait for vfio-pci;
   ``update-initramfs -u -k all`` only when one of those changed.
4. **Reboot only when needed** (the command line is not the running one, the VFIO files changed,
   or a function is not bound to vfio-pci), waiting for the host to return, then **proof** that
   every function's ``/sys/bus/pci/devices/ADDR/driver`` is vfio-pci, or a clear failure.

A container (the lab) has no kernel, boot loader or IOMMU of its own: the VFIO files are still
written, and every step that needs hardware is skipped with the reason in pyinfra's output.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator, Iterable, Mapping
from io import StringIO
from typing import Any

from pyinfra import context, host, logger
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server

from tasks.common.datamodel.forms import ListOf, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE
from tasks.common.facts import ContainerVirt
from tasks.common.hardware_facts import (
    BootLoader,
    CpuVendor,
    Framebuffers,
    KernelCmdline,
    PciDevice,
    PciDevices,
)
from tasks.common.templating import template_path

KERNEL_FLAG = Str(
    r"[A-Za-z0-9_.-]+(=[A-Za-z0-9_.,:=+-]+)?",
    what='a kernel command line word such as "video=efifb:off"',
)

DATA = Schema(
    "gpu_passthrough",
    Key(
        "iommu_extra_kernel_args",
        ListOf(KERNEL_FLAG, unique=True),
        [],
        "Kernel command line words added next to the IOMMU flags (such as"
        ' "pcie_aspm=off"); [] adds none.',
        (HYPERVISOR,),
    ),
)

IOMMU_FLAGS = {"intel": ("intel_iommu=on", "iommu=pt"), "amd": ("iommu=pt",)}
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
# Drivers that would grab a function before vfio-pci, per GPU vendor (and HDMI/DP audio).
SOFTDEPS = {
    "amd": ("amdgpu", "radeon", "snd_hda_intel"),
    "nvidia": ("nouveau", "nvidia", "nvidiafb", "snd_hda_intel", "xhci_pci", "i2c_nvidia_gpu"),
}
GRUB_DROPIN = "/etc/default/grub.d/homelab-iommu.cfg"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
MODULES_LOAD = "/etc/modules-load.d/homelab-vfio.conf"
MODPROBE = "/etc/modprobe.d/homelab-vfio.conf"
# PCI classes that may share the GPU's IOMMU group: host bridge, PCI-to-PCI bridge (root and
# switch ports), semi-transparent PCI-to-PCI bridge.
BRIDGE_CLASSES = ("0600", "0604", "0609")
GROUP_LISTING = (
    "for d in /sys/kernel/iommu_groups/*/devices/*; do"
    ' echo "${d%/devices/*} $(lspci -nns ${d##*/})"; done | sort -V'
)


class PassthroughRefused(RuntimeError):
    """Passing the GPU through would be unsafe or cannot work; nothing was changed."""


def _say(message: str) -> None:
    logger.info(f"{host.print_prefix}{message}")


def passthrough_gpus(machine: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The host's GPUs that are passed through to a guest."""
    return [gpu for gpu in machine["gpus"] or [] if gpu["passthrough_to"]]


def vfio_ids(gpus: Iterable[Mapping[str, Any]]) -> list[str]:
    ids: list[str] = []
    for gpu in gpus:
        for function in gpu["functions"]:
            if function["id"] not in ids:
                ids.append(function["id"])
    return ids


def softdeps(gpus: Iterable[Mapping[str, Any]]) -> list[str]:
    modules: list[str] = []
    for gpu in gpus:
        for module in SOFTDEPS[gpu["vendor"]]:
            if module not in modules:
                modules.append(module)
    return modules


def kernel_flags(cpu_vendor: str, extra: Iterable[str]) -> list[str]:
    flags = list(IOMMU_FLAGS[cpu_vendor])
    return flags + [flag for flag in extra if flag not in flags]


def _line(device: PciDevice, note: str) -> str:
    driver = device["driver"] or "no driver"
    words = f"  {device['description']}" if device["description"] else ""
    return (
        f"  {device['address']}  class {device['pci_class'][:4]}  [{device['id']}]"
        f"  driver {driver}{words}  <- {note}"
    )


def group_problems(
    gpu: Mapping[str, Any], devices: Mapping[str, PciDevice]
) -> tuple[list[str], list[str]]:
    """The listing of every IOMMU group the GPU's functions are in, and the offending devices."""
    own = {function["address"] for function in gpu["functions"]}
    groups = sorted({devices[a]["iommu_group"] for a in own if devices[a]["iommu_group"]}, key=int)
    listing: list[str] = []
    offending: list[str] = []
    for group in groups:
        listing.append(f"IOMMU group {group}:")
        members = sorted(
            (d for d in devices.values() if d["iommu_group"] == group), key=lambda d: d["address"]
        )
        for device in members:
            if device["address"] in own:
                note = f"{gpu['name']}'s own function (passed through)"
            elif device["pci_class"][:4] in BRIDGE_CLASSES:
                note = "PCI bridge / switch port (allowed)"
            else:
                note = "NOT ALLOWED: another device would go with the GPU"
                offending.append(device["address"])
            listing.append(_line(device, note))
    return listing, offending


def preflight(
    host_name: str,
    gpus: list[dict[str, Any]],
    devices: Mapping[str, PciDevice],
    framebuffers: list[str],
    cpu_data: str,
    cpu_found: str,
    *,
    check_groups: bool,
) -> list[str]:
    """Every reason passthrough must not go ahead (empty: go ahead). Reads facts only."""
    problems: list[str] = []
    if cpu_found not in ("unknown", cpu_data):
        problems.append(
            f"key 'cpu.vendor' is {cpu_data!r} but the host's CPU is {cpu_found}: the IOMMU"
            f" flags would be wrong; set cpu.vendor to {cpu_found!r}"
        )
    for index, gpu in enumerate(gpus):
        where = f"gpus[{index}] ({gpu['name']})"
        declared = {f["address"]: f for f in gpu["functions"]}
        for address, function in declared.items():
            found = devices.get(address)
            if found is None:
                problems.append(
                    f"{where}: no PCI function at {address} (declared {function['id']}); the"
                    " card is in another slot or the address is wrong: check `lspci -Dnn`"
                )
            elif found["id"] != function["id"]:
                problems.append(
                    f"{where}: {address} is [{found['id']}] {found['description']}, not the"
                    f" declared {function['id']}: fix the address or the ID in the data"
                )
        if any(address not in devices for address in declared):
            continue
        slots = {address.rsplit(".", 1)[0] for address in declared}
        undeclared = [
            d
            for a, d in sorted(devices.items())
            if a.rsplit(".", 1)[0] in slots and a not in declared
        ]
        for device in undeclared:
            problems.append(
                f"{where}: function {device['address']} [{device['id']}] of the card is not in"
                " its functions: every function must be listed (and goes to vfio-pci)"
            )
        for address in declared:
            if devices[address]["boot_vga"]:
                problems.append(
                    f"{where}: the firmware's boot display is {address} (boot_vga=1; console"
                    f" framebuffers: {', '.join(framebuffers) or 'none'}): the host would keep"
                    " using the GPU for its console. Make the onboard/BMC graphics the primary"
                    " display in the firmware (and keep CSM off), then run again"
                )
        if check_groups:
            listing, offending = group_problems(gpu, devices)
            if offending:
                problems.append(
                    f"{where}: its IOMMU group holds {', '.join(offending)}, which is neither"
                    " one of the GPU's functions nor a PCI bridge; passing the group through"
                    " would hand that device to the VM too (or take it from the host).\n"
                    + "\n".join(listing)
                    + "\n  What to do: put the card in another slot (one wired to its own CPU"
                    " root port), or enable ACS / IOMMU grouping in the firmware, then check"
                    f" the groups with: {GROUP_LISTING}\n  Do not use pcie_acs_override: it"
                    " hides the missing isolation instead of providing it."
                )
    return problems


def _refuse(host_name: str, problems: list[str]) -> None:
    raise PassthroughRefused(
        f"host {host_name!r}: GPU passthrough refused; nothing was changed:\n"
        + "\n".join(f"  - {problem}" for problem in problems)
    )


@operation(is_idempotent=True)
def check_after_reboot(gpus: list[dict[str, Any]]) -> Generator[Any, None, None]:
    """At execution only (facts of the host as it is now): IOMMU on and the groups safe."""
    if not context.state.is_executing:
        return
    problems = iommu_problems(host.name, gpus, host.get_fact(PciDevices))
    if problems:
        message = f"host {host.name!r}: GPU passthrough refused before VFIO was configured:\n"
        message += "\n".join(f"  - {problem}" for problem in problems)
        yield StringCommand(f"printf '%s\\n' {shlex.quote(message)} >&2; exit 1")


def binding_problems(gpus: list[dict[str, Any]], devices: Mapping[str, PciDevice]) -> list[str]:
    """Each declared function not bound to vfio-pci: address, ID and the driver that has it."""
    wrong = []
    for gpu in gpus:
        for function in gpu["functions"]:
            driver = (devices.get(function["address"]) or {}).get("driver")
            if driver != "vfio-pci":
                wrong.append(f"{function['address']} [{function['id']}]: driver {driver or 'none'}")
    return wrong


def iommu_problems(
    host_name: str, gpus: list[dict[str, Any]], devices: Mapping[str, PciDevice]
) -> list[str]:
    """No IOMMU groups at all, or a GPU's group no longer safe (the kernel's grouping)."""
    if not any(d["iommu_group"] for d in devices.values()):
        return [
            "the kernel made no IOMMU groups although the IOMMU flags are on its command line:"
            " turn on VT-d (Intel) / AMD-Vi, IOMMU (AMD) in the firmware"
        ]
    return [
        p
        for p in preflight(host_name, gpus, devices, [], "unknown", "unknown", check_groups=True)
        if "IOMMU group" in p
    ]


@operation(is_idempotent=True)
def prove_vfio_binding(gpus: list[dict[str, Any]]) -> Generator[Any, None, None]:
    """At execution only: every declared function is bound to vfio-pci, or the op fails."""
    if not context.state.is_executing:
        return
    wrong = binding_problems(gpus, host.get_fact(PciDevices))
    if wrong:
        message = (
            f"host {host.name!r}: not bound to vfio-pci after the reboot: {'; '.join(wrong)}."
            f" Check `lspci -nnk -s ADDRESS`, {MODPROBE} and `dmesg | grep -i vfio`"
            " (the initramfs must carry the vfio-pci options: update-initramfs -u -k all)"
        )
        yield StringCommand(f"printf '%s\\n' {shlex.quote(message)} >&2; exit 1")


def _cmdline_ops(loader: Mapping[str, Any], flags: list[str]) -> list[OperationMeta]:
    """Write the flags where the boot loader reads them; refresh the boot loader if changed."""
    if loader["loader"] == "systemd-boot":
        current = host.get_fact(FileContents, path=KERNEL_CMDLINE) or []
        words = " ".join(current).split()
        if not words:
            raise PassthroughRefused(
                f"host {host.name!r}: {KERNEL_CMDLINE} is empty or missing on a host that boots"
                " systemd-boot through proxmox-boot-tool; it must hold the root= line"
            )
        wanted = words + [flag for flag in flags if flag not in words]
        written = files.put(
            name=f"IOMMU flags in {KERNEL_CMDLINE} (systemd-boot)",
            src=StringIO(" ".join(wanted) + "\n"),
            dest=KERNEL_CMDLINE,
            mode="644",
            user="root",
            group="root",
        )
        server.shell(
            name="Refresh the boot entries (proxmox-boot-tool refresh)",
            commands=["proxmox-boot-tool refresh"] if written.will_change else [],
        )
        return [written]
    written = files.template(
        name=f"IOMMU flags in {GRUB_DROPIN} (GRUB)",
        src=template_path("grub-homelab-iommu.cfg.j2"),
        dest=GRUB_DROPIN,
        mode="644",
        user="root",
        group="root",
        flags=flags,
    )
    refresh = "proxmox-boot-tool refresh" if loader["proxmox_boot_tool"] else "update-grub"
    server.shell(
        name=f"Regenerate the GRUB configuration ({refresh})",
        commands=[refresh] if written.will_change else [],
    )
    return [written]


@deploy("GPU passthrough (IOMMU, VFIO)", data_defaults=DATA.defaults())
def gpu_passthrough() -> None:
    settings = DATA.read(host)
    machine = MACHINE.read(host)
    gpus = passthrough_gpus(machine)
    if not gpus:
        _say("GPU passthrough: no GPU of this host has a passthrough_to; nothing to configure")
        return
    container = host.get_fact(ContainerVirt) not in ("none", "")
    loader = host.get_fact(BootLoader)
    flags = kernel_flags(machine["cpu"]["vendor"], settings.iommu_extra_kernel_args)

    if container:
        _say(
            "GPU passthrough: this host is a container (lab): no IOMMU groups, no boot loader,"
            " no kernel or GPU of its own. Skipped: the PCI preflight, kernel command line,"
            " initramfs, reboot and the vfio-pci binding proof; the VFIO files are written"
        )
        cmdline_active = True
        bound = True
    else:
        devices = host.get_fact(PciDevices)
        iommu_on = any(d["iommu_group"] for d in devices.values())
        running = host.get_fact(KernelCmdline)
        cmdline_active = all(flag in running for flag in flags)
        if loader["loader"] == "none":
            _refuse(
                host.name,
                [
                    "no boot loader found (neither proxmox-boot-tool nor update-grub): the kernel"
                    " command line cannot be set"
                ],
            )
        if cmdline_active and not iommu_on:
            _refuse(
                host.name,
                [
                    f"the kernel runs with {' '.join(flags)} but made no IOMMU groups: turn on"
                    " VT-d (Intel) / AMD-Vi and IOMMU (AMD) in the firmware"
                ],
            )
        problems = preflight(
            host.name,
            gpus,
            devices,
            host.get_fact(Framebuffers),
            machine["cpu"]["vendor"],
            host.get_fact(CpuVendor),
            check_groups=iommu_on,
        )
        if problems:
            _refuse(host.name, problems)
        bound = all(
            devices[f["address"]]["driver"] == "vfio-pci" for gpu in gpus for f in gpu["functions"]
        )
        cmdline_changes = _cmdline_ops(loader, flags)
        if not iommu_on:
            _say(
                "GPU passthrough: the IOMMU is off; reboot with the new command line, then check"
                " the GPU's IOMMU group before VFIO is configured"
            )
            server.reboot(name="Reboot into the IOMMU kernel command line", reboot_timeout=900)
            check_after_reboot(name="IOMMU groups after the reboot are safe", gpus=gpus)
            cmdline_active = True
        elif not cmdline_active or any(op.will_change for op in cmdline_changes):
            cmdline_active = False

    modules = files.template(
        name=f"VFIO modules loaded at boot ({MODULES_LOAD})",
        src=template_path("modules-load-homelab-vfio.conf.j2"),
        dest=MODULES_LOAD,
        mode="644",
        user="root",
        group="root",
        modules=VFIO_MODULES,
    )
    modprobe = files.template(
        name=f"vfio-pci takes every GPU function first ({MODPROBE})",
        src=template_path("modprobe-homelab-vfio.conf.j2"),
        dest=MODPROBE,
        mode="644",
        user="root",
        group="root",
        gpus=gpus,
        ids=vfio_ids(gpus),
        softdeps=softdeps(gpus),
    )
    if container:
        return
    vfio_changed = modules.will_change or modprobe.will_change
    server.shell(
        name="Rebuild the initramfs for every kernel (update-initramfs -u -k all)",
        commands=["update-initramfs -u -k all"] if vfio_changed or not bound else [],
    )
    if vfio_changed or not bound or not cmdline_active:
        server.reboot(name="Reboot so vfio-pci takes the GPU", reboot_timeout=900)
    else:
        _say("GPU passthrough: already in place (IOMMU on, every function on vfio-pci); no reboot")
    prove_vfio_binding(name="Every GPU function is bound to vfio-pci", gpus=gpus)
