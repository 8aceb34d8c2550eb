"""The guests' bridge (``vmbr0``) on a hypervisor that becomes Proxmox VE from plain Debian.

The Proxmox VE ISO creates ``vmbr0`` over the NIC it was installed through; on plain Debian the
guide leaves it to the user ("create a Linux bridge vmbr0 and add your first network interface
to it"), and every guest's NIC names that bridge. This task writes it into
``/etc/network/interfaces`` in the installer's layout: the uplink (the NIC that holds
``lan_address`` now) becomes a port without an address, and the bridge takes the host's
address (static, or DHCP where the installer set DHCP), the uplink's MAC (``hwaddress``: a
router's DHCP reservation keeps matching) and the gateway the installer wrote for the uplink
(else ``proxmox_guest_gateway``, or the first address of ``lan_cidr``).

Only the Debian installer's layout is replaced: loopback and one Ethernet NIC, in ifupdown's
file. A host whose file also configures other interfaces (bonds, VLANs, bridges, a second
NIC), whose uplink is wireless or configured by another tool (no stanza), stops the run with
the reason before anything is written: its bridge is made by hand, as Proxmox's guide says.

It changes nothing live. It runs before Proxmox VE's installation, whose reboot into the
Proxmox kernel brings the bridge up (a host already running a Proxmox kernel is rebooted
here); so the SSH session the run works over is never cut by a reconfiguration halfway, and a
host that does not come back is the reboot's timeout, not a hung run. Debian's ifupdown builds
the bridge at that boot through ``bridge-utils``; ifupdown2, which ``proxmox-ve`` installs,
reads the same file from then on. The file passes ``ifquery`` before it is installed
(:func:`tasks.common.checked_config.checked_template`).

A host that already has the bridge (the ISO, or a later run), a host that stays plain Debian
(``proxmox_ve_install`` false, the lab) and one whose Proxmox VE is installed are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.facts.hardware import NetworkDevices
from pyinfra.facts.server import KernelVersion
from pyinfra.operations import apt, server

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.machine import MACHINE
from tasks.hypervisor.proxmox_api import guests_of
from tasks.hypervisor.proxmox_guests import DATA as GUESTS_DATA
from tasks.hypervisor.proxmox_guests import lan_gateway
from tasks.hypervisor.proxmox_ve import installs_proxmox_ve

INTERFACES = "/etc/network/interfaces"
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


MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
# Options that make an interface something other than a plain Ethernet port.
NOT_A_PORT = ("bridge", "bond", "vlan", "wpa-", "wireless")


@dataclass
class Stanza:
    """One ``iface NAME inet METHOD`` block of /etc/network/interfaces and its option lines."""

    name: str
    method: str
    options: dict[str, str]


def stanzas(lines: list[str]) -> list[Stanza]:
    """The ``inet`` stanzas of an interfaces(5) file (``inet6`` ones are kept out)."""
    found: list[Stanza] = []
    current: Stanza | None = None
    for raw in lines:
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "iface" and len(words) >= 4:
            current = Stanza(words[1], words[3], {}) if words[2] == "inet" else None
            if current is not None:
                found.append(current)
        elif words[0] in ("auto", "allow-hotplug", "source", "source-directory", "mapping"):
            current = None
        elif current is not None:
            current.options[words[0]] = " ".join(words[1:])
    return found


def uplink_stanza(lines: list[str] | None, uplink: str) -> Stanza:
    """The installer's stanza of ``uplink``; BridgeRefused when the file is not the plain
    layout the bridge can replace (ifupdown not in charge, other interfaces, no plain port)."""
    if lines is None:
        raise BridgeRefused(
            f"host {host.name!r}: no /etc/network/interfaces: ifupdown does not configure"
            f" {uplink}. Make the bridge as Proxmox's guide says, then run again."
            " Nothing was changed."
        )
    found = stanzas(lines)
    mine = [stanza for stanza in found if stanza.name == uplink]
    others = sorted({stanza.name for stanza in found} - {"lo", uplink})
    problem = None
    if not mine:
        problem = f"has no stanza for {uplink} (another tool configures it)"
    elif others:
        problem = f"also configures {', '.join(others)}"
    elif mine[0].method not in ("static", "dhcp"):
        problem = f"configures {uplink} as inet {mine[0].method}"
    elif uplink.startswith("wl") or any(key.startswith(NOT_A_PORT) for key in mine[0].options):
        problem = f"makes {uplink} a bridge, bond, VLAN or wireless link, which cannot be a port"
    if problem:
        raise BridgeRefused(
            f"host {host.name!r}: /etc/network/interfaces {problem}; expected the Debian"
            " installer's layout (loopback and one Ethernet NIC). Make the bridge as"
            " Proxmox's guide says, then run again. Nothing was changed."
        )
    return mine[0]


@deploy("Guest bridge")
def guest_bridge() -> None:
    if not installs_proxmox_ve():
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
    stanza = uplink_stanza(host.get_fact(FileContents, path=INTERFACES), uplink)
    # The host's own gateway where the installer wrote one: the route that works now.
    gateway = stanza.options.get("gateway") or lan_gateway(GUESTS_DATA.read(host), lan)
    try:
        gateway = str(ipaddress.IPv4Address(gateway))
    except ValueError:
        raise BridgeRefused(
            f"host {host.name!r}: the gateway of {uplink} in {INTERFACES} is {gateway!r};"
            " expected an IPv4 address. Nothing was changed."
        ) from None
    mac = str(devices[uplink].get("ether") or "")
    if not MAC.fullmatch(mac):
        raise BridgeRefused(
            f"host {host.name!r}: {uplink} reports the MAC address {mac!r}; expected six hex"
            " pairs. Nothing was changed."
        )
    logger.info(
        f"{host.print_prefix}guest bridge {bridge}: written over {uplink} with {address};"
        " it comes up with the next boot"
    )
    apt.packages(
        name="bridge-utils (ifupdown builds the bridge at boot)", packages=["bridge-utils"]
    )
    written = checked_template(
        name=f"Guest bridge {bridge} over {uplink} ({INTERFACES})",
        template="network-interfaces.j2",
        dest=INTERFACES,
        mode="644",
        check="ifquery --interfaces={} --list --all",
        uplink=uplink,
        bridge=bridge,
        dhcp=stanza.method == "dhcp",
        address=f"{address}/{lan.prefixlen}",
        gateway=gateway,
        mac=mac.lower(),
    )
    # Proxmox VE's installation reboots into its kernel; a host already running one would
    # not reboot, and the guests would be created on a bridge that is not there.
    if host.get_fact(KernelVersion).endswith("-pve"):
        server.reboot(
            name=f"Reboot to bring up {bridge} (the Proxmox kernel already runs)",
            reboot_timeout=900,
            _if=written.did_change,
        )
