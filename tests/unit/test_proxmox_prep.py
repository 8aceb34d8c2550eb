"""What the lab makes of a guest's Proxmox config (tests/lab/proxmox_prep.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.lab.proxmox_prep import Guest, container_files, directory_shares, guests, nocloud_seed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@controller"
VM_CONFIG = {
    "name": "ageis-node",
    "ciuser": "ops",
    "sshkeys": KEY.replace(" ", "%20").replace("@", "%40"),
    "ipconfig0": "ip=192.168.1.20/24,gw=192.168.1.1",
    "nameserver": "192.168.1.1",
    "searchdomain": "home.arpa",
    "ciupgrade": "0",
    "net0": "virtio=BC:24:11:39:22:ED,bridge=vmbr0",
    "startup": "order=2",
}


def test_the_vm_seed_carries_user_keys_address_and_no_upgrade() -> None:
    seed = nocloud_seed(Guest(100, "qemu", "ageis-node", VM_CONFIG, True))
    user_data = seed["user-data"]
    assert user_data.startswith("#cloud-config\nhostname: ageis-node\nmanage_etc_hosts: true\n")
    assert "fqdn: ageis-node.home.arpa\n" in user_data
    assert "user: ops\n" in user_data
    assert f"ssh_authorized_keys:\n  - {KEY}\n" in user_data
    assert "users:\n  - default\n" in user_data
    assert "package_upgrade" not in user_data, "ciupgrade 0: no upgrade at first boot"
    network = seed["network-config"]
    assert "address: '192.168.1.20'\n        netmask: '255.255.255.0'\n" in network
    assert "gateway: '192.168.1.1'" in network
    assert "      - '192.168.1.1'\n      search:\n      - 'home.arpa'\n" in network
    assert seed["meta-data"].startswith("instance-id: ")


def test_a_vm_left_to_upgrade_at_first_boot_says_so_in_its_seed() -> None:
    config = {**VM_CONFIG}
    del config["ciupgrade"]  # Proxmox's default: upgrade
    assert (
        "package_upgrade: true\n"
        in nocloud_seed(Guest(100, "qemu", "x", config, True))["user-data"]
    )


def test_a_container_gets_pve_sections_network_and_root_keys() -> None:
    config = {
        "hostname": "dns",
        "net0": "name=eth0,bridge=vmbr0,ip=192.168.1.50/24,gw=192.168.1.1,hwaddr=BC:24:11:3A:5E:8D",
        "nameserver": "192.168.1.1",
        "searchdomain": "home.arpa",
    }
    files = container_files(Guest(111, "lxc", "dns", config, True, KEY + "\n"))
    assert files["etc/hostname"] == "dns\n"
    assert (
        "# --- BEGIN PVE ---\n127.0.1.1 dns.home.arpa dns\n# --- END PVE ---\n"
        in (files["etc/hosts"])
    )
    assert files["etc/resolv.conf"] == (
        "# --- BEGIN PVE ---\nsearch home.arpa\nnameserver 192.168.1.1\n# --- END PVE ---\n"
    )
    network = files["etc/systemd/network/10-host0.network"]
    assert "Address = 192.168.1.50/24\nGateway = 192.168.1.1\n" in network
    assert files["root/.ssh/authorized_keys"] == KEY + "\n"


def test_guests_come_in_startup_order_with_root_keys_from_their_volume(tmp_path: Path) -> None:
    state = {
        "guests": {
            "100": {"kind": "qemu", "status": "running", "config": VM_CONFIG},
            "111": {
                "kind": "lxc",
                "status": "stopped",
                "config": {
                    "hostname": "dns",
                    "rootfs": "ssd:subvol-111-disk-0,size=8G",
                    "startup": "order=1,up=5",
                },
            },
        },
        "volumes": {"ssd:subvol-111-disk-0": {"root_authorized_keys": KEY}},
    }
    path = tmp_path / "var/lib/homelab-pve-api-double/state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(state))
    found = guests(tmp_path)
    assert [(g.vmid, g.name, g.running, g.startup) for g in found] == [
        (111, "dns", False, (1, 5)),
        (100, "ageis-node", True, (2, 0)),
    ]
    assert found[0].root_authorized_keys == KEY


SHARE = "ageis-node-hdd,cache=auto"


def test_a_vms_share_is_its_directory_mappings_path_on_this_node(tmp_path: Path) -> None:
    state_file = tmp_path / "var/lib/homelab-pve-api-double/state.json"
    state_file.parent.mkdir(parents=True)
    mapping = {"map": ["node=other,path=/elsewhere", "node=pve,path=/srv/hdd/shares/ageis-node"]}
    state_file.write_text(json.dumps({
        "node": "pve",
        "guests": {
            "100": {"kind": "qemu", "config": {**VM_CONFIG, "virtiofs0": SHARE}},
            "101": {"kind": "qemu", "config": {"name": "plain"}},
        },
        "dir_mappings": {"ageis-node-hdd": mapping},
    }))  # fmt: skip
    assert directory_shares(tmp_path, "ageis-node") == [
        ("ageis-node-hdd", "/srv/hdd/shares/ageis-node")
    ]
    assert directory_shares(tmp_path, "plain") == []
    assert directory_shares(tmp_path / "nothing", "ageis-node") == []
