"""A valid baseline inventory (the real inventory's shape) and a throw-away SSH key pair.

Tests change one value of a fresh copy and check what validation says about it. The baseline
is a copy rather than an import of inventory.py: that file holds the user's real data, and the
tests must not depend on (or break with) its addresses and disks.
"""

from __future__ import annotations

import copy
import pprint
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tasks.common.datamodel.validate import HostView

LAN_CIDR = "192.168.1.0/24"

R9700_FUNCTIONS = [
    {"id": "1002:7551", "address": "0000:03:00.0", "kind": "display"},
    {"id": "1002:ab40", "address": "0000:03:00.1", "kind": "audio"},
]


def _r9700(**changes: Any) -> dict[str, Any]:
    gpu = {
        "name": "r9700",
        "vendor": "amd",
        "model": "AMD Radeon AI PRO R9700",
        "vram": "32G",
        "functions": copy.deepcopy(R9700_FUNCTIONS),
    }
    gpu.update(changes)
    return gpu


def _disk(name: str, size: str, kind: str, pool: str) -> dict[str, Any]:
    return {
        "device": f"/dev/disk/by-id/ata-{name}",
        "model": name,
        "size": size,
        "kind": kind,
        "pool": pool,
    }


def _guest(vmid: int, kind: str, cores: int, memory: str, disk: str, **more: Any) -> dict:
    guest = {
        "hypervisor": "pve",
        "kind": kind,
        "vmid": vmid,
        "cores": cores,
        "memory": memory,
        "disk_size": disk,
        "storage": "ssd",
        "os": "ubuntu-24.04" if kind == "qemu" else "debian-13",
        "start_order": 1,
    }
    guest.update(more)
    return guest


def baseline_groups() -> dict[str, list[Any]]:
    """The inventory's groups, as inventory.py writes them: ``[(name, host data), ...]``."""
    return {
        "hypervisor": [
            (
                "pve",
                {
                    "lan_address": "192.168.1.10",
                    "cpu": {
                        "vendor": "intel",
                        "model": "Intel Xeon E5-2690 v4 @ 2.60GHz",
                        "cores": 14,
                        "threads": 28,
                    },
                    "memory": "128G",
                    "gpus": [_r9700(passthrough_to="ageis-node")],
                    "disks": [
                        _disk("TEAM_EXAMPLE1", "1T", "ssd", "ssd"),
                        _disk("TEAM_EXAMPLE2", "1T", "ssd", "ssd"),
                        _disk("Samsung_870_EXAMPLE", "1T", "ssd", "ssd"),
                        _disk("Samsung_960_EXAMPLE", "500G", "nvme", "ssd"),
                        _disk("WDC_WD220EDGZ_EXAMPLE", "22T", "hdd", "hdd"),
                    ],
                    "pools": {
                        "ssd": {
                            "type": "zfs",
                            "zfs_name": "ssd",
                            "path": "/ssd",
                            "content": ["images", "rootdir"],
                        },
                        "hdd": {
                            "type": "dir",
                            "path": "/mnt/hdd",
                            "content": ["backup", "iso", "vztmpl", "snippets"],
                        },
                    },
                },
            )
        ],
        "ageis_node": [
            (
                "ageis-node",
                {
                    "lan_address": "192.168.1.20",
                    "cpu": {"vendor": "intel", "model": "Xeon E5-2690 v4 (vCPU)", "cores": 4},
                    "memory": "24G",
                    "gpus": [_r9700(functions=[{**f, "address": None} for f in R9700_FUNCTIONS])],
                    "pools": {"ssd": {"type": "dir", "path": "/srv/ssd"}},
                    "guest": _guest(100, "qemu", 4, "24G", "256G", passthrough_gpu="r9700"),
                },
            )
        ],
        "embedder": [
            (
                "embedder",
                {
                    "lan_address": "192.168.1.30",
                    "gpus": [
                        {
                            "name": "gtx1650super",
                            "vendor": "nvidia",
                            "model": "NVIDIA GeForce GTX 1650 SUPER",
                            "vram": "4G",
                            "functions": [
                                {"id": "10de:2187", "address": "0000:01:00.0", "kind": "display"},
                                {"id": "10de:1aeb", "address": "0000:01:00.1", "kind": "audio"},
                            ],
                        }
                    ],
                    "pools": {"ssd": {"type": "dir", "path": "/srv/ssd"}},
                },
            )
        ],
        "monitoring": [
            (
                "monitoring",
                {"lan_address": "192.168.1.40", "guest": _guest(110, "lxc", 2, "2G", "32G")},
            )
        ],
        "dns": [
            ("dns", {"lan_address": "192.168.1.50", "guest": _guest(111, "lxc", 1, "512M", "8G")})
        ],
        "service_guests": ["monitoring", "dns"],
    }


def baseline_group_data(public_key_file: Path) -> dict[str, dict[str, Any]]:
    """A copy of group_data/ (all.py, hypervisor.py) with the test's own public key."""
    return {
        "all": {
            "ssh_user": "root",
            "ssh_key": "~/.ssh/id_ed25519",
            "lan_cidr": LAN_CIDR,
            "domain": "home.arpa",
            "timezone": "Etc/UTC",
            "ntp_servers": [],
            "admin_user": "ops",
            "admin_group": "homelab-admins",
            "admin_ssh_public_key_files": [str(public_key_file)],
            "journald_max_use": "1G",
        },
        "hypervisor": {"proxmox_api_user": "root@pam", "proxmox_api_token_name": None},
    }


@dataclass
class Baseline:
    """A fresh, valid copy of the inventory; change it, then look at it as validation does."""

    public_key_file: Path
    groups: dict[str, list[Any]] = field(default_factory=baseline_groups)

    def __post_init__(self) -> None:
        self.group_data = baseline_group_data(self.public_key_file)

    def host(self, name: str) -> dict[str, Any]:
        """The host data of ``name`` (change it in place)."""
        for members in self.groups.values():
            for member in members:
                if isinstance(member, tuple) and member[0] == name:
                    return member[1]
        raise KeyError(name)

    def names(self) -> list[str]:
        return [m[0] for ms in self.groups.values() for m in ms if isinstance(m, tuple)]

    def groups_of(self, name: str) -> tuple[str, ...]:
        return tuple(
            group
            for group, members in self.groups.items()
            if any(m == name or (isinstance(m, tuple) and m[0] == name) for m in members)
        )

    def views(self) -> list[HostView]:
        """HostViews with data merged the way pyinfra does: all, then groups, then the host."""
        views = []
        for name in self.names():
            groups = self.groups_of(name)
            data = dict(self.group_data["all"])
            for group in groups:
                data.update(self.group_data.get(group, {}))
            data.update(self.host(name))
            views.append(HostView(name, groups, copy.deepcopy(data)))
        return views

    def inventory_source(self, common: dict[str, Any]) -> str:
        """An inventory file like inventory.py: ``common`` first in every host's data."""
        lines = [
            '"""Throw-away inventory written by a test (a copy of the baseline)."""',
            "",
            "from tasks.common.datamodel.preflight import check_inventory_file",
            "",
        ]
        for group, members in self.groups.items():
            hosts = [(m[0], {**common, **m[1]}) if isinstance(m, tuple) else m for m in members]
            lines.append(f"{group} = {pprint.pformat(hosts, width=100, sort_dicts=False)}")
            lines.append("")
        lines.append("check_inventory_file(__file__)")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@pytest.fixture
def ssh_home(tmp_path: Path) -> Path:
    """A throw-away HOME with ~/.ssh/id_ed25519{,.pub} (a freshly generated ed25519 pair)."""
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = ssh_dir / "id_ed25519"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (ssh_dir / "id_ed25519.pub").write_bytes(public + b" test@throw-away\n")
    return home


@pytest.fixture
def key_pair(ssh_home: Path) -> KeyPair:
    return KeyPair(ssh_home / ".ssh" / "id_ed25519", ssh_home / ".ssh" / "id_ed25519.pub")


@pytest.fixture
def baseline(key_pair: KeyPair) -> Baseline:
    return Baseline(key_pair.public)


# The Proxmox API test double (in-process, HTTPS): pve_double, pve_double_cert.
from tests.doubles.fixtures import pve_double, pve_double_cert  # noqa: E402, F401
