"""The guests' bridge (``vmbr0``) on a hypervisor that becomes Proxmox VE from plain Debian.

The Proxmox VE ISO creates ``vmbr0`` over the NIC it was installed through; on plain Debian the
guide leaves it to the user ("create a Linux bridge vmbr0 and add your first network interface
to it"), and every guest's NIC names that bridge. This task writes it into
``/etc/network/interfaces`` in the installer's layout: the uplink (the NIC that holds
``lan_address`` now) becomes a port without an address, and the bridge takes the host's
address and the LAN's gateway (``proxmox_guest_gateway``, or the first address of ``lan_cidr``).

It changes nothing live. It runs before Proxmox VE's installation, whose reboot into the
Proxmox kernel brings the bridge up; so the SSH session the run works over is never cut by a
reconfiguration halfway, and a host that does not come back is the reboot's timeout, not a
hung run. Debian's ifupdown builds the bridge at that boot through ``bridge-utils``; ifupdown2,
which ``proxmox-ve`` installs, reads the same file from then on. The file passes ``ifquery``
before it is installed (:func:`tasks.common.checked_config.checked_template`).

A host that already has the bridge (the ISO, or a later run), a host that stays plain Debian
(``proxmox_ve_install`` false, the lab) and one whose Proxmox VE is installed are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.hardware import NetworkDevices
from pyinfra.operations import apt

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.machine import MACHINE
from tasks.hypervisor.proxmox_api import guests_of
from tasks.hypervisor.proxmox_guests import DATA as GUESTS_DATA
from tasks.hypervisor.proxmox_guests import lan_gateway
from tasks.hypervisor.proxmox_ve import DATA as PROXMOX_VE_DATA

INTERFACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


class BridgeRefused(RuntimeError):
    """The host's network does not allow the bridge to be written safely."""


def _bridges() -> list[str]:
    """The bridges the hypervisor's guests are attached to (``guest.bridge``)."""
    return sorted({spec["bridge"] for _, spec, _ in guests_of(host.name)}) or ["vmbr0"]


def uplink_of(devices: dict[str, Any], address: str) -> str:
    """The NIC that holds ``address`` now; BridgeRefused when none or a bridge holds it."""
    holders = [
        name
        for name, device in sorted(devices.items())
        if (device.get("ipv4") or {}).get("address") == address
    ]
    if len(holders) != 1:
        seen = ", ".join(
            f"{name} {(device.get('ipv4') or {}).get('address', 'no IPv4')}"
            for name, device in sorted(devices.items())
            if name != "lo"
        )
        raise BridgeRefused(
            f"host {host.name!r}: key 'lan_address' is {address!r}, but no single network"
            f" interface holds it now ({seen or 'none'}); expected the NIC the host is reached"
            " through, which becomes the bridge's port. Nothing was changed."
        )
    if not INTERFACE_NAME.fullmatch(holders[0]):
        raise BridgeRefused(
            f"host {host.name!r}: the interface holding {address!r} is named"
            f" {holders[0]!r}; expected a kernel interface name (letters, digits, . _ -)"
        )
    return holders[0]


@deploy("Guest bridge")
def guest_bridge() -> None:
    if "pve-manager" in (host.get_fact(DebPackages) or {}):
        return
    if not PROXMOX_VE_DATA.read(host).proxmox_ve_install:
        return
    bridges = _bridges()
    if len(bridges) != 1:
        raise BridgeRefused(
            f"host {host.name!r}: its guests name the bridges {bridges}; from plain Debian,"
            " one bridge over the host's uplink is made. Create the others first"
        )
    (bridge,) = bridges
    devices = host.get_fact(NetworkDevices) or {}
    if bridge in devices:
        return
    machine = MACHINE.read(host)
    lan = ipaddress.ip_network(str(machine.lan_cidr), strict=False)
    address = str(host.data.get("lan_address"))
    uplink = uplink_of(devices, address)
    logger.info(
        f"{host.print_prefix}guest bridge {bridge}: written over {uplink} with {address};"
        " it comes up with the reboot into the Proxmox VE kernel"
    )
    apt.packages(
        name="bridge-utils (ifupdown builds the bridge at boot)", packages=["bridge-utils"]
    )
    checked_template(
        name=f"Guest bridge {bridge} over {uplink} (/etc/network/interfaces)",
        template="network-interfaces.j2",
        dest="/etc/network/interfaces",
        mode="644",
        check="ifquery --interfaces={} --list --all",
        uplink=uplink,
        bridge=bridge,
        address=f"{address}/{lan.prefixlen}",
        gateway=lan_gateway(GUESTS_DATA.read(host), lan),
    )
