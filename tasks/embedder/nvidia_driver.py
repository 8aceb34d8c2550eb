"""NVIDIA driver on the embedder, from Debian's own packages, verified by nvidia-smi.

Runs where the inventory declares an NVIDIA GPU (``gpus`` entries with ``vendor: nvidia``);
with none declared the task says so and does nothing. Before anything is touched, every
declared PCI function of those GPUs must be on the host's PCI bus (read from sysfs, what
``lspci -n`` shows); a missing one stops the run naming host, key and ID.

Debian ships the driver in ``contrib`` and ``non-free`` (its firmware in ``non-free-firmware``):
those components are added to the host's own deb822 sources (``debian.sources``; when
``apt_mirror`` is set, ``tasks/base/apt_sources.py`` writes them itself, see
:func:`extra_apt_components`). Then ``linux-headers-<flavour>`` for the running kernel's
flavour (``amd64`` for ``6.12.48+deb13-amd64``: the meta package follows kernel upgrades, so
DKMS builds the module for every new kernel), ``nvidia-kernel-dkms``, ``nvidia-driver``,
``firmware-misc-nonfree`` and ``nvidia-smi``.

Reboot only when needed: a fresh install while nouveau holds the card, or a driver upgrade
while an older nvidia module is loaded (user space and kernel module would mismatch). A host
where neither holds gets ``modprobe nvidia``. After a change, ``nvidia-smi`` must list every
declared card (by PCI address when the inventory gives one); on a converged host the same check
runs from facts, so a second run changes nothing and still fails when the card is gone.

Secure Boot: DKMS signs the module with its own key (``/var/lib/dkms/mok.pub``); enrol it once
with ``mokutil --import`` at the console, or the module will not load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FindInFile
from pyinfra.facts.server import Kernel
from pyinfra.operations import apt, server

from tasks.common.datamodel.keys import DataError, Schema, check_key
from tasks.common.datamodel.machine import MACHINE
from tasks.common.hardware_facts import PciDevice, PciDevices

DEBIAN_SOURCES = "/etc/apt/sources.list.d/debian.sources"
# The driver is in contrib/non-free; firmware-misc-nonfree (the GSP firmware) in non-free-firmware.
COMPONENTS = ("contrib", "non-free", "non-free-firmware")
PACKAGES = ("nvidia-kernel-dkms", "nvidia-driver", "firmware-misc-nonfree", "nvidia-smi")
DATA = Schema("nvidia_driver")


def nvidia_gpus(gpus: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, gpu) for i, gpu in enumerate(gpus or []) if gpu.get("vendor") == "nvidia"]


def extra_apt_components(gpus: list[dict[str, Any]] | None) -> tuple[str, ...]:
    """The Debian components a host needs beyond ``main`` for its GPUs (none without NVIDIA)."""
    return COMPONENTS if nvidia_gpus(gpus or []) else ()


class NvidiaState(FactBase[dict[str, Any]]):
    """The driver as the host runs it now.

    ``module``: version of the loaded nvidia module (/proc/driver/nvidia/version) or None;
    ``nouveau``: whether nouveau is loaded; ``cards``: ``(pci bus id, name)`` that
    ``nvidia-smi`` lists (empty when it is missing or fails).
    """

    reads_other_hosts = False

    def command(self) -> str:
        return (
            "echo module=$(sed -n 's/.*Kernel Module *\\([0-9][0-9.]*\\).*/\\1/p'"
            " /proc/driver/nvidia/version 2>/dev/null | head -n1);"
            " if grep -q '^nouveau ' /proc/modules 2>/dev/null; then echo nouveau=yes; fi;"
            " if command -v nvidia-smi >/dev/null 2>&1; then"
            " nvidia-smi --query-gpu=pci.bus_id,name --format=csv,noheader 2>/dev/null"
            " | sed 's/^/card=/'; fi; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        state: dict[str, Any] = {"module": None, "nouveau": False, "cards": []}
        for line in output:
            key, _, value = line.strip().partition("=")
            if key == "module" and value:
                state["module"] = value
            elif key == "nouveau":
                state["nouveau"] = True
            elif key == "card" and "," in value:
                bus_id, name = (part.strip() for part in value.split(",", 1))
                state["cards"].append((bus_id.lower(), name))
        return state


def kernel_flavour(release: str) -> str:
    """Debian's kernel flavour of ``uname -r``: ``6.12.48+deb13-amd64`` -> ``amd64``."""
    match = re.fullmatch(r"[0-9][^-]*-(?:[0-9]+-)?([a-z0-9][a-z0-9-]*)", release)
    if not match:
        raise RuntimeError(
            f"host {host.name!r}: kernel release {release!r} does not name a Debian kernel"
            " flavour (such as 6.12.48+deb13-amd64); install linux-headers for it by hand"
        )
    return match.group(1)


def _short_bus_id(bus_id: str) -> str:
    """nvidia-smi's ``00000000:01:00.0`` as sysfs writes it, ``0000:01:00.0``."""
    domain, _, rest = bus_id.partition(":")
    return f"{int(domain, 16):04x}:{rest}".lower()


def check_cards_present(
    gpus: list[tuple[int, dict[str, Any]]], functions: Mapping[str, PciDevice]
) -> None:
    """Every declared function of every NVIDIA GPU is on the PCI bus, else DataError."""
    devices = {address: function["id"] for address, function in functions.items()}
    for index, gpu in gpus:
        for number, function in enumerate(gpu["functions"]):
            address = function.get("address")
            found = devices.get(address) if address else None
            present = found == function["id"] if address else function["id"] in devices.values()
            if not present:
                where = f" at {address} (there: {found or 'nothing'})" if address else ""
                nvidia = sorted(
                    f"{a} {i}" for a, i in devices.items() if i.startswith("10de:")
                )  # fmt: skip
                raise DataError(
                    host.name,
                    f"gpus[{index}].functions[{number}].id",
                    function["id"],
                    f"a PCI function on the host{where}; lspci -n shows NVIDIA functions:"
                    f" {', '.join(nvidia) or 'none'}: is the card seated, or is the data wrong?",
                )


def verify_command(gpus: list[tuple[int, dict[str, Any]]]) -> str:
    """A shell check that nvidia-smi lists every declared card (by address when known)."""
    checks = []
    for _, gpu in gpus:
        display = next((f for f in gpu["functions"] if f["kind"] == "display"), None)
        address = display.get("address") if display else None
        if address:
            checks.append(
                f"nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | tr A-F a-f"
                f" | grep -q '{address[5:]}$' || {{ echo 'nvidia-smi does not list"
                f" {gpu['model']} at {address}'; nvidia-smi -L; exit 1; }}"
            )
    count = len(gpus)
    checks.append(
        f"test $(nvidia-smi -L | grep -c '^GPU ') -ge {count} || {{ echo 'nvidia-smi lists"
        f" fewer than {count} GPU(s)'; nvidia-smi -L; exit 1; }}"
    )
    return "; ".join(checks)


def _cards_listed(gpus: list[tuple[int, dict[str, Any]]], cards: list[tuple[str, str]]) -> bool:
    listed = {_short_bus_id(bus) for bus, _ in cards}
    for _, gpu in gpus:
        display = next((f for f in gpu["functions"] if f["kind"] == "display"), None)
        if display and display.get("address") and display["address"] not in listed:
            return False
    return len(cards) >= len(gpus)


@deploy("NVIDIA driver", data_defaults=DATA.defaults())
def nvidia_driver() -> None:
    gpus = nvidia_gpus(check_key(host.name, MACHINE.keys["gpus"], host.data.dict()))
    if not gpus:
        host.noop("no NVIDIA GPU declared in gpus: NVIDIA driver skipped")
        return
    check_cards_present(gpus, host.get_fact(PciDevices))

    components = host.get_fact(FindInFile, path=DEBIAN_SOURCES, pattern=r"^Components:")
    if components is None:
        raise RuntimeError(
            f"host {host.name!r}: {DEBIAN_SOURCES} is missing; the NVIDIA driver needs"
            f" {' '.join(COMPONENTS)} added to Debian's deb822 sources (convert a"
            " sources.list with `apt modernize-sources`, or set apt_mirror)"
        )
    lacking = not components or any(
        c not in line.split()[1:] for line in components for c in COMPONENTS
    )
    sources_changed = False
    if lacking:
        expressions = "".join(f"/ {c}( |$)/! s/$/ {c}/; " for c in COMPONENTS)
        server.shell(
            name=f"Add {' '.join(COMPONENTS)} to Debian's sources",
            commands=[f"sed -E -i '/^Components:/{{ {expressions}}}' {DEBIAN_SOURCES}"],
        )
        sources_changed = True

    state = host.get_fact(NvidiaState)
    installed = host.get_fact(DebPackages) or {}
    headers = f"linux-headers-{kernel_flavour(host.get_fact(Kernel))}"
    fresh = "nvidia-driver" not in installed
    apt.update(
        name="Refresh package lists (contrib, non-free)",
        _if=lambda: sources_changed or fresh,
    )
    packages = apt.packages(
        name="NVIDIA driver packages (DKMS builds the module)",
        packages=[headers, *PACKAGES],
    )

    # nouveau holds the card until a reboot; a newer driver needs its own module loaded.
    def reboot_needed() -> bool:
        return packages.did_change() and (state["nouveau"] or state["module"] is not None)

    server.shell(
        name="Load the nvidia module",
        commands=["modprobe nvidia"],
        _if=lambda: not reboot_needed() and state["module"] is None,
    )
    server.reboot(name="Reboot into the NVIDIA driver", _if=reboot_needed)
    converged = not fresh and not packages_pending(installed) and state["module"] is not None
    if converged and not _cards_listed(gpus, state["cards"]):
        raise RuntimeError(
            f"host {host.name!r}: the NVIDIA driver {state['module']} is loaded but"
            f" nvidia-smi lists {state['cards'] or 'no GPU'}; declared:"
            f" {', '.join(g['model'] for _, g in gpus)}"
        )
    server.shell(
        name="nvidia-smi lists the card",
        commands=[verify_command(gpus)],
        _if=lambda: packages.did_change() or state["module"] is None,
    )


def packages_pending(installed: dict[str, Any]) -> bool:
    return any(name not in installed for name in PACKAGES)
