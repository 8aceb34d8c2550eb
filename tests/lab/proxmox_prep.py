"""What Proxmox VE puts into a new guest, made from the guest's config in the API double.

The lab's hypervisor runs the Proxmox API test double (``pve_api_double.py``), which records
the guests the rollout creates but cannot start them. ``labctl guests`` boots each as a lab
host, prepared from that record the way Proxmox prepares a real guest, so the lab sees what the
rollout really asked for (user, keys, address, gateway, nameserver, upgrade at first boot):

- **VM** (qemu): qemu-server's cloud-init drive, as a NoCloud seed (``user-data``,
  ``meta-data``, ``network-config``, laid out as ``PVE::QemuServer::Cloudinit`` writes them for
  the ``nocloud`` type) in ``/var/lib/cloud/seed/nocloud``; Debian's real ``cloud-init`` package
  in the guest's root reads it at first boot. One lab difference: the NIC is matched by its
  name in the container, ``host0``, not by ``net0``'s MAC address, which systemd-nspawn cannot
  give its veth.
- **Container** (lxc): what pve-container writes into a new root for a Debian guest: the host
  name, its ``/etc/hosts`` and ``/etc/resolv.conf`` sections (``# --- BEGIN PVE ---``), the
  network of ``net0`` (as the systemd-networkd file it writes for networkd guests, for the
  container's ``host0``) and root's ``authorized_keys`` from ``ssh-public-keys``. No cloud-init.

Standard library only (``labctl`` runs outside the project's virtual environment).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "var/lib/homelab-pve-api-double/state.json"
SEED_DIR = "var/lib/cloud/seed/nocloud"


@dataclass(frozen=True)
class Guest:
    """One guest the double holds: its VMID, kind (qemu/lxc), name and config."""

    vmid: int
    kind: str
    name: str
    config: dict[str, str]
    running: bool
    root_authorized_keys: str = ""

    @property
    def startup(self) -> tuple[int, int]:
        """(order, up delay in seconds) from ``startup`` (unordered guests start last)."""
        fields = _properties(self.config.get("startup", ""))
        return int(fields.get("order", 10**6)), int(fields.get("up", 0))


def _properties(text: str) -> dict[str, str]:
    """A Proxmox property string (``a=1,b=2``; a bare first value is keyed by itself)."""
    out: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key] = value
    return out


def guests(hypervisor_root: Path) -> list[Guest]:
    """The double's guests, in the order Proxmox starts them at boot (order, then VMID)."""
    path = hypervisor_root / STATE_FILE
    if not path.is_file():
        return []
    state = json.loads(path.read_text())
    found = []
    for vmid, guest in state.get("guests", {}).items():
        config = {k: str(v) for k, v in guest["config"].items()}
        name = config.get("name") if guest["kind"] == "qemu" else config.get("hostname")
        rootfs = config.get("rootfs", "").split(",")[0]
        keys = state.get("volumes", {}).get(rootfs, {}).get("root_authorized_keys", "")
        found.append(
            Guest(
                int(vmid),
                guest["kind"],
                str(name),
                config,
                guest.get("status") == "running",
                keys,
            )
        )
    return sorted(found, key=lambda g: (g.startup[0], g.vmid))


def directory_shares(hypervisor_root: Path, name: str) -> list[tuple[str, str]]:
    """(mapping ID, directory on the hypervisor) of each ``virtiofsN`` of VM ``name``'s config,
    from the double's directory mappings (the entry for the double's node)."""
    path = hypervisor_root / STATE_FILE
    if not path.is_file():
        return []
    state = json.loads(path.read_text())
    config = next(
        (g["config"] for g in state.get("guests", {}).values()
         if g["kind"] == "qemu" and g["config"].get("name") == name),
        {},
    )  # fmt: skip
    shares = []
    for key, value in sorted(config.items()):
        if not key.startswith("virtiofs"):
            continue
        dirid = _properties(str(value)).get("dirid") or str(value).split(",")[0]
        mapping = state.get("dir_mappings", {}).get(dirid, {})
        for entry in mapping.get("map", []):
            fields = _properties(entry)
            if fields.get("node") == state["node"]:
                shares.append((dirid, fields["path"]))
    return shares


def _address(ip: str) -> tuple[str, str]:
    """``10.0.0.2/24`` -> (address, netmask)."""
    interface = ipaddress.ip_interface(ip)
    return str(interface.ip), str(interface.netmask)


def nocloud_seed(guest: Guest) -> dict[str, str]:
    """The NoCloud seed files qemu-server writes for ``guest`` (file name -> content)."""
    config = guest.config
    hostname = config.get("name", f"VM{guest.vmid}")
    searchdomain = config.get("searchdomain", "").split()
    user_data = f"#cloud-config\nhostname: {hostname}\nmanage_etc_hosts: true\n"
    if searchdomain:
        user_data += f"fqdn: {hostname}.{searchdomain[0]}\n"
    user = config.get("ciuser")
    if user:
        user_data += f"user: {user}\n"
        if user == "root":
            user_data += "disable_root: false\n"
    keys = [k.strip() for k in urllib.parse.unquote(config.get("sshkeys", "")).split("\n")]
    keys = [k for k in keys if k]
    if keys:
        user_data += "ssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in keys)
    user_data += "chpasswd:\n  expire: False\n"
    if user != "root":
        user_data += "users:\n  - default\n"
    if config.get("ciupgrade", "1") != "0":
        user_data += "package_upgrade: true\n"

    network = "version: 1\nconfig:\n"
    ip_config = _properties(config.get("ipconfig0", ""))
    # The lab's NIC is nspawn's host0; qemu-server matches net0's MAC here.
    network += "    - type: physical\n      name: host0\n"
    if "ip" in ip_config and ip_config["ip"] not in ("dhcp", "manual"):
        address, netmask = _address(ip_config["ip"])
        network += (
            "      subnets:\n      - type: static\n"
            f"        address: '{address}'\n        netmask: '{netmask}'\n"
        )
        if "gw" in ip_config:
            network += f"        gateway: '{ip_config['gw']}'\n"
    elif ip_config.get("ip") == "dhcp":
        network += "      subnets:\n      - type: dhcp4\n"
    nameservers = config.get("nameserver", "").split()
    if nameservers or searchdomain:
        network += "    - type: nameserver\n      address:\n"
        network += "".join(f"      - '{n}'\n" for n in nameservers)
        network += "      search:\n" + "".join(f"      - '{d}'\n" for d in searchdomain)
    digest = hashlib.sha1((user_data + network).encode()).hexdigest()
    return {
        "user-data": user_data,
        "network-config": network,
        "meta-data": f"instance-id: {digest}\n",
    }


def pve_section(lines: list[str]) -> str:
    """A block pve-container manages inside a guest's file."""
    return "# --- BEGIN PVE ---\n" + "".join(f"{line}\n" for line in lines) + "# --- END PVE ---\n"


def container_files(guest: Guest) -> dict[str, str]:
    """What pve-container writes into a new Debian container's root (path -> content);
    ``host0`` stands for ``net0``'s ``eth0`` (nspawn's veth)."""
    config = guest.config
    hostname = config["hostname"]
    searchdomain = config.get("searchdomain", "").split()
    fqdn = f"{hostname}.{searchdomain[0]} {hostname}" if searchdomain else hostname
    net = _properties(config.get("net0", ""))
    network = "[Match]\nName = host0\n\n[Network]\n"
    network += "Description = Interface eth0 autoconfigured by PVE\n"
    if net.get("ip") and net["ip"] not in ("dhcp", "manual"):
        network += f"Address = {net['ip']}\n"
        if net.get("gw"):
            network += f"Gateway = {net['gw']}\n"
        network += "DHCP = no\n"
    network += "IPv6AcceptRA = false\n"
    resolv = [f"search {' '.join(searchdomain)}"] if searchdomain else []
    resolv += [f"nameserver {n}" for n in config.get("nameserver", "").split()]
    files = {
        "etc/hostname": f"{hostname}\n",
        "etc/hosts": (
            "127.0.0.1 localhost.localdomain localhost\n"
            "::1 localhost ip6-localhost ip6-loopback\n"
            "ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n" + pve_section([f"127.0.1.1 {fqdn}"])
        ),
        "etc/resolv.conf": pve_section(resolv),
        "etc/systemd/network/10-host0.network": network,
    }
    if guest.root_authorized_keys:
        files["root/.ssh/authorized_keys"] = guest.root_authorized_keys.rstrip("\n") + "\n"
    return files


def vm_resolv_conf(guest: Guest) -> str:
    """The resolver the VM ends up with from the seed's nameserver and search domain."""
    config = guest.config
    lines = [f"nameserver {n}\n" for n in config.get("nameserver", "").split()]
    search = config.get("searchdomain", "").split()
    return "".join(lines) + (f"search {' '.join(search)}\n" if search else "")
