"""What each machine is: the per-host keys of the inventory (hardware, storage, guest spec, LAN).

These describe the real machines (the seed's hardware) rather than a task's settings; many
tasks read them (the hypervisor's passthrough, storage, guests, /etc/hosts, DNS, firewall).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from tasks.common.datamodel.forms import (
    ABSOLUTE_PATH,
    HOST_OR_ADDRESS,
    HOSTNAME,
    PCI_ADDRESS,
    PCI_ID,
    Bool,
    Field,
    Form,
    FormError,
    Int,
    IPv4Address,
    IPv4Network,
    ListOf,
    MapOf,
    Optional,
    Predicate,
    Size,
    Str,
    Struct,
)
from tasks.common.datamodel.keys import REQUIRED, Key, Schema

# Group names of the inventory; roles are group membership.
HYPERVISOR = "hypervisor"
AGEIS_NODE = "ageis_node"
EMBEDDER = "embedder"
SERVICE_GUESTS = "service_guests"
MONITORING = "monitoring"
DNS = "dns"
ROLE_GROUPS = (HYPERVISOR, AGEIS_NODE, EMBEDDER, SERVICE_GUESTS, MONITORING, DNS)

# Proxmox storage IDs, and so our pool names: letter first, then letters, digits, - _ .
POOL_NAME = Str(r"[a-z][a-z0-9_.-]*", what='a pool name such as "ssd" or "hdd"')

# RFC 1918: the only ranges a home LAN may use. Public, loopback, link-local and "everything"
# are refused, and so is Tailscale's CGNAT range (100.64.0.0/10), which is the tailnet's.
PRIVATE_NETWORKS = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
TAILSCALE_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
# A /31 or /32 has no address left for a host beside its network and broadcast addresses.
LONGEST_LAN_PREFIX = 30


def is_private_lan(network: ipaddress.IPv4Network) -> bool:
    return (
        any(network.subnet_of(private) for private in PRIVATE_NETWORKS)
        and not network.overlaps(TAILSCALE_NETWORK)
        and network.prefixlen <= LONGEST_LAN_PREFIX
    )


LAN_CIDR = Predicate(
    IPv4Network(),
    is_private_lan,
    "a private IPv4 network (RFC 1918: inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16,"
    f' /{LONGEST_LAN_PREFIX} or larger) in CIDR form such as "192.168.1.0/24"; not public,'
    f" loopback, link-local or Tailscale's {TAILSCALE_NETWORK}",
)

BY_ID = "/dev/disk/by-id/"
# A name under /dev/disk/by-id/ as udev makes them ("ata-Samsung_SSD_870_EVO_1TB_S6P…",
# "nvme-eui.0025…", "wwn-0x5002…"): one path segment, never "." or "..".
_BY_ID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@-]*")


class DiskDevice(Form):
    """A whole disk by its stable name under /dev/disk/by-id/.

    /dev/sdX names follow the order the kernel finds the disks in, which changes between boots
    and when a disk is added: a pool created on /dev/sdb may be created on the wrong disk.
    """

    description = 'a stable device path under /dev/disk/by-id/, such as "/dev/disk/by-id/ata-…"'

    def check(self, value: Any) -> str:
        Str(what=self.description).check(value)
        name = value.removeprefix(BY_ID)
        if value.startswith(BY_ID) and _BY_ID_NAME.fullmatch(name):
            return value
        if value.startswith("/dev/") and "/" not in value.removeprefix("/dev/"):
            hint = " (not a kernel name such as /dev/sdb, which can change between boots:"
            raise FormError(self.description + hint + " see ls -l /dev/disk/by-id)", value)
        raise FormError(self.description + ' (one name after the prefix, no "..", no "/")', value)


CPU = Struct(
    {
        "vendor": Field(Str(choices=("intel", "amd")), doc="CPU vendor; picks the IOMMU flags"),
        "model": Field(Str(), doc="model name, for the status report"),
        "cores": Field(Int(1, 1024), doc="physical cores (vCPUs for a VM)"),
        "threads": Field(Int(1, 2048), required=False, doc="hardware threads"),
    },
    what="a CPU description",
)

GPU_FUNCTION = Struct(
    {
        "id": Field(PCI_ID, doc="PCI vendor:device as lspci -nn shows it"),
        "address": Field(
            Optional(PCI_ADDRESS), required=False, doc="PCI address on this host (hypervisor)"
        ),
        "kind": Field(Str(choices=("display", "audio", "usb", "serial")), doc="what it is"),
    },
    what="a PCI function",
)

GPU_NAME = Str(r"[a-z0-9][a-z0-9_-]*", what='a short name such as "r9700"')

GPU = Struct(
    {
        "name": Field(GPU_NAME),
        "vendor": Field(Str(choices=("amd", "nvidia"))),
        "model": Field(Str()),
        "vram": Field(Size()),
        "functions": Field(ListOf(GPU_FUNCTION, min_items=1), doc="every PCI function"),
        "passthrough_to": Field(
            Optional(HOSTNAME), required=False, doc="inventory host (VM) it is passed through to"
        ),
    },
    what="a GPU description",
)

DISK = Struct(
    {
        "device": Field(DiskDevice(), doc="stable device path (by-id) of the whole disk"),
        "model": Field(Str()),
        "size": Field(Size()),
        "kind": Field(Str(choices=("ssd", "nvme", "hdd"))),
        "pool": Field(Optional(POOL_NAME), required=False, doc="pool the disk belongs to"),
    },
    what="a disk description",
)

POOL = Struct(
    {
        "type": Field(Str(choices=("zfs", "dir")), doc="ZFS pool or plain directory"),
        "path": Field(ABSOLUTE_PATH, doc="mount point of the pool"),
        "zfs_name": Field(Optional(Str(r"[A-Za-z][A-Za-z0-9_.:-]*")), required=False),
        "layout": Field(
            Str(choices=("single", "mirror", "raidz1", "raidz2")),
            required=False,
            default="single",
            doc="ZFS vdev layout when the pool is created",
        ),
        "create": Field(
            Bool(), required=False, default=False, doc="opt-in: create it on blank disks"
        ),
        "content": Field(
            ListOf(
                Str(choices=("images", "rootdir", "backup", "iso", "vztmpl", "snippets", "import"))
            ),
            required=False,
            default=[],
            doc="Proxmox content types (hypervisor)",
        ),
        "tier": Field(
            Optional(Str(choices=("ssd", "hdd"))),
            required=False,
            doc="storage tier (fill alert); None: from its disks' kind (ssd/nvme or hdd)",
        ),
    },
    what="a pool description",
)

GUEST = Struct(
    {
        "hypervisor": Field(HOSTNAME, doc="inventory host that runs this guest"),
        "kind": Field(Str(choices=("qemu", "lxc")), doc="KVM VM or LXC container"),
        "vmid": Field(Int(100, 999_999_999), doc="Proxmox guest ID"),
        "cores": Field(Int(1, 512)),
        "memory": Field(Size(minimum=64 * 1024**2)),
        "disk_size": Field(Size(minimum=1024**3)),
        "storage": Field(POOL_NAME, doc="hypervisor pool (Proxmox storage) for its disk"),
        "os": Field(Str(choices=("ubuntu-24.04", "debian-13", "debian-12"))),
        "bridge": Field(Str(r"[a-z][a-z0-9]{0,14}"), required=False, default="vmbr0"),
        "passthrough_gpu": Field(
            Optional(GPU_NAME), required=False, doc="name of a hypervisor GPU passed to this VM"
        ),
        "start_order": Field(Int(1, 1000), required=False, default=10, doc="boot order"),
        "start_delay": Field(
            Int(0, 3600),
            required=False,
            default=0,
            doc="seconds the hypervisor waits after starting this guest before the next one"
            " (Proxmox's startup up=): time for what the later guests need from it",
        ),
        "share_pool": Field(
            Optional(POOL_NAME),
            required=False,
            doc="hypervisor pool whose directory shares/<guest> the VM mounts at /srv/<pool>"
            " through virtiofs (VMs, Proxmox VE 8.4 or later)",
        ),
    },
    what="a guest description",
)

MACHINE = Schema(
    "machine (inventory)",
    Key("lan_address", IPv4Address(), REQUIRED, "The host's LAN address (hosts file, DNS zone)."),
    Key(
        "lan_cidr",
        LAN_CIDR,
        REQUIRED,
        "The LAN (a private network); every host's address must be a host address inside it.",
    ),
    Key("domain", HOSTNAME, "home.arpa", "Local DNS domain; FQDNs are <host>.<domain>."),
    Key("cpu", Optional(CPU), None, "CPU: vendor, model, cores, threads (required: hypervisor)."),
    Key("memory", Optional(Size()), None, "Installed RAM (hypervisor) or RAM given to a guest."),
    Key("gpus", ListOf(GPU), [], "GPUs with every PCI function; [] when there is none."),
    Key("disks", ListOf(DISK), [], "Physical disks and the pool each belongs to."),
    Key("pools", MapOf(POOL_NAME, POOL), {}, "Storage pools (ssd, hdd) by name."),
    Key("guest", Optional(GUEST), None, "For a VM/LXC guest: how the hypervisor runs it."),
    # pyinfra's own key, checked here because it reaches ssh and the hosts file: a name or an
    # address, never something a shell would expand.
    Key(
        "ssh_hostname",
        Optional(HOST_OR_ADDRESS),
        None,
        "Where pyinfra connects to (pyinfra's key); None: the inventory name.",
    ),
)
