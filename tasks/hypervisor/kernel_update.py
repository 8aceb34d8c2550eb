"""Hypervisor kernel updates: the running kernel stays the fallback until the new one is proven.

With ``proxmox_kernel_update`` a rollout upgrades Proxmox VE's kernel meta package
(``proxmox-default-kernel``) when the repository has a newer one, and boots a kernel newer than
the running one, as Proxmox VE's admin guide describes kernel pinning ("Override the
Kernel-Version for next Boot", https://pve.proxmox.com/pve-docs/pve-admin-guide.html#sysboot_kernel_pin):

1. ``proxmox-boot-tool kernel pin <running>``: the running kernel is the boot default;
2. the upgrade (``apt-get install proxmox-default-kernel``, when the candidate is newer);
3. ``proxmox-boot-tool kernel pin <newest> --next-boot``: the newest kernel boots once. The pin
   for the next boot is cleared at that boot (``proxmox-boot-cleanup.service``, early in user
   space), so every later boot is the old kernel's again until step 6;
4. the reboot into the new kernel;
5. the proof, with the host's facts read after the reboot: it runs the new kernel, the kernel
   made IOMMU groups and the GPU's group is still safe, and every function of a passed-through
   GPU is bound to vfio-pci (the checks of ``gpu_passthrough.py``);
6. ``proxmox-boot-tool kernel unpin``: the newest kernel, the proven one, is the default.

``proxmox-boot-tool refresh`` follows each pin where proxmox-boot-tool keeps the ESPs; on a
host that boots GRUB from its root file system the pin runs ``update-grub`` itself. The
rollout's own marker, ``/var/lib/homelab/kernel-update`` (``fallback <old>``, then ``trial
<new>``), says which pin is the rollout's. When the proof fails the run fails: the old kernel is
still the pinned default, and the message says to reboot into it. A later rollout that finds the
new kernel running finishes the proof (and unpins when it passes); one that finds the old kernel
running does not try the same new kernel again until the marker is removed. A pin the rollout
did not set is left alone, and so are kernels then.

Without ``proxmox_kernel_update`` (the default) the rollout installs and boots no kernel; where a
newer kernel is installed than the one running (an operator's ``apt full-upgrade``) the plan
says so. A host that is not Proxmox VE yet (its install boots its kernel itself) or a container
(the lab) is left alone.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Generator
from typing import Any, TypedDict

from pyinfra import context, host, logger
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import KernelVersion
from pyinfra.operations import server

from tasks.common.datamodel.forms import Bool
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE
from tasks.common.facts import ContainerVirt
from tasks.common.hardware_facts import BootLoader, PciDevices
from tasks.common.pgbackrest import AptPolicy
from tasks.hypervisor.gpu_passthrough import binding_problems, iommu_problems, passthrough_gpus

DATA = Schema(
    "kernel_update",
    Key(
        "proxmox_kernel_update",
        Bool(),
        False,
        "Upgrade the Proxmox kernel (proxmox-default-kernel) in a rollout and boot it once, the"
        " running kernel pinned as the fallback until the IOMMU/VFIO proof passes; false: no"
        " kernel is installed or booted by a rollout.",
        (HYPERVISOR,),
    ),
)

META = "proxmox-default-kernel"
PIN = "/etc/kernel/proxmox-boot-pin"
NEXT_BOOT_PIN = "/etc/kernel/next-boot-pin"
MARKER = "/var/lib/homelab/kernel-update"
REBOOT_TIMEOUT = 900
# What uname -r says of a Proxmox VE kernel (6.14.8-2-pve): nothing else reaches a command.
PVE_KERNEL = re.compile(r"[0-9]+\.[0-9]+[0-9A-Za-z.+~-]*-pve")


class KernelState(TypedDict):
    images: list[str]  # the Proxmox kernels in /boot, oldest first
    pin: str | None  # proxmox-boot-tool's pinned default
    next_boot: str | None  # its pin for the next boot only
    fallback: str | None  # the rollout's marker: the kernel it pinned ...
    trial: str | None  # ... and the one it boots once


def version_key(version: str) -> tuple[tuple[int, Any], ...]:
    """Sort key of a kernel version, numbers as numbers (6.14.11-1-pve after 6.14.8-2-pve)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+~-]", version))


class ProxmoxKernels(FactBase[KernelState]):
    """The Proxmox kernels in /boot, proxmox-boot-tool's pins and the rollout's marker."""

    reads_other_hosts = False

    def command(self) -> str:
        return (
            'for f in /boot/vmlinuz-*-pve; do [ -e "$f" ] && echo "image ${f#/boot/vmlinuz-}";'
            f" done; for f in {PIN} {NEXT_BOOT_PIN}; do"
            ' [ -s "$f" ] && echo "file $f $(head -n 1 "$f")"; done;'
            f" [ -r {MARKER} ] && sed 's/^/marker /' {MARKER}; true"
        )

    def process(self, output: list[str]) -> KernelState:
        state = KernelState(images=[], pin=None, next_boot=None, fallback=None, trial=None)
        for line in output:
            words = line.split()
            if words[:1] == ["image"] and len(words) == 2:
                state["images"].append(words[1])
            elif words[:2] == ["file", PIN] and len(words) == 3:
                state["pin"] = words[2]
            elif words[:2] == ["file", NEXT_BOOT_PIN] and len(words) == 3:
                state["next_boot"] = words[2]
            elif words[:2] in (["marker", "fallback"], ["marker", "trial"]) and len(words) == 3:
                state[words[1]] = words[2]  # type: ignore[literal-required]
        state["images"].sort(key=version_key)
        return state


def _refresh(loader: dict[str, Any]) -> list[str]:
    """``proxmox-boot-tool refresh`` where it keeps the ESPs (elsewhere the pin runs
    update-grub itself: the admin guide's tip)."""
    return ["proxmox-boot-tool refresh"] if loader["proxmox_boot_tool"] else []


@deploy("Kernel update", data_defaults=DATA.defaults())
def kernel_update() -> None:
    settings = DATA.read(host)
    if "pve-manager" not in (host.get_fact(DebPackages) or {}):
        host.noop("Kernel update: not Proxmox VE (yet): its install boots its own kernel")
        return
    if host.get_fact(ContainerVirt) not in ("none", ""):
        host.noop("Kernel update: a container has no kernel or boot loader of its own")
        return
    running = host.get_fact(KernelVersion)
    state = host.get_fact(ProxmoxKernels)
    if state["trial"]:
        _after_a_trial(state, running, host.get_fact(BootLoader))
        return
    newest = state["images"][-1] if state["images"] else running
    newer = version_key(newest) > version_key(running)
    if not settings.proxmox_kernel_update:
        if state["fallback"]:
            logger.warning(
                f"{host.name}: an interrupted kernel update left {state['fallback']} pinned"
                f" ({MARKER}): roll out with proxmox_kernel_update = True to finish it, or"
                f" `proxmox-boot-tool kernel unpin && rm {MARKER}`"
            )
        elif newer:
            logger.warning(
                f"{host.name}: kernel {newest} is installed, {running} runs: {newest} boots at"
                f" the next reboot, unproven; proxmox_kernel_update = True lets a rollout boot"
                f" it with {running} pinned as the fallback until its IOMMU/VFIO proof passes"
            )
        return
    ours = state["fallback"] is not None and state["pin"] == state["fallback"]
    if (state["pin"] or state["next_boot"]) and not ours:
        logger.warning(
            f"{host.name}: a kernel is pinned by hand ({PIN}: {state['pin']}, {NEXT_BOOT_PIN}:"
            f" {state['next_boot']}): the rollout updates no kernel while it is;"
            " `proxmox-boot-tool kernel unpin` hands kernels back to it"
        )
        return
    policy = host.get_fact(AptPolicy, package=META)
    upgrade = bool(policy["candidate"]) and policy["installed"] != policy["candidate"]
    if not upgrade and not newer:
        host.noop(f"Kernel update: {running} runs and is the newest Proxmox kernel")
        return
    loader = host.get_fact(BootLoader)
    if not PVE_KERNEL.fullmatch(running) or loader["loader"] == "none":
        logger.warning(
            f"{host.name}: kernel update skipped: the running kernel {running!r} is no Proxmox"
            f" kernel, or no boot loader was found ({loader['loader']}): it cannot be pinned"
        )
        return
    _trial(running, loader, (policy["installed"], policy["candidate"]) if upgrade else None)


def _trial(running: str, loader: dict[str, Any], upgrade: tuple[str, str] | None) -> None:
    """Steps 1 to 6 of the module: pin, upgrade, next boot, reboot, proof, unpin."""
    old = shlex.quote(running)
    server.shell(
        name=f"Keep {running} the boot default while a new kernel is proven (kernel pin)",
        commands=[
            f"mkdir -p {MARKER.rsplit('/', 1)[0]} && echo fallback {old} > {MARKER}",
            f"proxmox-boot-tool kernel pin {old}",
            *_refresh(loader),
        ],
    )
    if upgrade:
        server.shell(
            name=f"Upgrade the Proxmox kernel ({META} {upgrade[0]} -> {upgrade[1]})",
            commands=[
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -o"
                ' Dpkg::Options::="--force-confdef" -o Dpkg::Options::="--force-confold"'
                f" {META}"
            ],
        )
    # The newest kernel is known on the host only once the upgrade has installed it.
    newest = "$(ls /boot/vmlinuz-*-pve | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n 1)"
    server.shell(
        name="Boot the newest kernel once (kernel pin --next-boot); the default stays",
        commands=[
            f'new={newest}; if [ -z "$new" ] || [ "$new" = {old} ] ||'
            f' [ "$(printf \'%s\\n\' {old} "$new" | sort -V | tail -n 1)" != "$new" ]; then'
            f' echo "host {host.name!r}: no Proxmox kernel newer than {running} in /boot" >&2;'
            f' exit 1; fi; proxmox-boot-tool kernel pin "$new" --next-boot'
            + "".join(f" && {command}" for command in _refresh(loader))
            + f' && echo "trial $new" >> {MARKER}'
        ],
    )
    server.reboot(
        name=f"Reboot into the new kernel, once ({running} stays the default)",
        reboot_timeout=REBOOT_TIMEOUT,
    )
    _prove_and_release(running, loader, "the new kernel")


def _after_a_trial(state: KernelState, running: str, loader: dict[str, Any]) -> None:
    """A kernel was booted once by an earlier rollout: prove it now, or leave the fallback."""
    trial, fallback = state["trial"] or "", state["fallback"] or "the old kernel"
    if running == trial:
        logger.info(
            f"{host.name}: kernel {trial} runs on trial (an earlier rollout's proof failed or"
            f" did not run); proving it now, {fallback} stays the default until it passes"
        )
        _prove_and_release(fallback, loader, trial)
        return
    logger.warning(
        f"{host.name}: kernel {trial} was booted once by an earlier rollout and {running} runs"
        f" now: {trial} failed its IOMMU/VFIO proof or did not come up, and {fallback} stays"
        f" the pinned default. The rollout does not try {trial} again by itself: fix the cause,"
        f" then `rm {MARKER}` and roll out again (or `proxmox-boot-tool kernel unpin` to hand"
        " kernels back to the newest one)"
    )


def _prove_and_release(fallback: str, loader: dict[str, Any], new: str) -> None:
    gpus = passthrough_gpus(MACHINE.read(host))
    prove_new_kernel(
        name=f"Proof: {new} runs, IOMMU groups are there, the GPU is bound to vfio-pci",
        gpus=gpus,
        fallback=fallback,
    )
    server.shell(
        name=f"Make {new} the boot default (kernel unpin: the newest, proven kernel)",
        commands=["proxmox-boot-tool kernel unpin", *_refresh(loader), f"rm -f {MARKER}"],
    )


def kernel_problems(
    host_name: str,
    state: KernelState,
    running: str,
    gpus: list[dict[str, Any]],
    devices: dict[str, Any],
) -> list[str]:
    """Why the kernel on trial is not proven (empty: it is). Facts read after the reboot."""
    trial = state["trial"]
    if not trial:
        return [f"no kernel on trial in {MARKER} (the next-boot step did not finish)"]
    if running != trial:
        return [
            f"the host runs {running}, not {trial}: the new kernel did not come up (its one boot"
            " went elsewhere)"
        ]
    if not gpus:
        return []
    return iommu_problems(host_name, gpus, devices) + [
        f"not bound to vfio-pci: {problem}" for problem in binding_problems(gpus, devices)
    ]


@operation(is_idempotent=True)
def prove_new_kernel(gpus: list[dict[str, Any]], fallback: str) -> Generator[Any, None, None]:
    """At execution only, with the facts as they are after the reboot: the new kernel runs and
    passes the IOMMU/VFIO checks, or the operation fails with why and what to do."""
    if not context.state.is_executing:
        return
    state = host.get_fact(ProxmoxKernels)
    running = host.get_fact(KernelVersion)
    problems = kernel_problems(host.name, state, running, gpus, host.get_fact(PciDevices))
    if not problems:
        return
    trial = state["trial"] or "the new kernel"
    message = (
        f"host {host.name!r}: kernel {trial} failed its proof after the reboot:\n"
        + "\n".join(f"  - {problem}" for problem in problems)
        + f"\n{fallback} is still the pinned boot default: reboot the host (`systemctl reboot`)"
        f" to run {fallback} again; the VMs that pass the GPU through do not start without"
        f" vfio-pci. The rollout does not boot {trial} again by itself: fix the cause, then"
        f" `rm {MARKER}` and roll out again, or keep {trial} with `proxmox-boot-tool kernel"
        " unpin`."
    )
    yield StringCommand(f"printf '%s\\n' {shlex.quote(message)} >&2; exit 1")
