"""The real homelab: fill in addresses, disks and PCI addresses from your machines.

Groups are roles (see deploys/roles.py). Host names are the machines' short names; pyinfra
reaches each by ``ssh_hostname`` (a name your LAN's DNS or ~/.ssh/config resolves). Keys and
their forms are in docs/data-keys.md; ``make check-data`` validates this file without
connecting anywhere. The figures below are the seed's hardware; the addresses, by-id disk paths
and PCI addresses are examples to replace with yours (``lspci -nn``, ``ls /dev/disk/by-id``).
"""

from tasks.common.datamodel.preflight import check_inventory_file
from tasks.common.logins import log_in_as_recorded

R9700 = {
    "name": "r9700",
    "vendor": "amd",
    "model": "AMD Radeon AI PRO R9700",
    "vram": "32G",
    # Navi 48: the GPU sits behind its own PCIe switch bridges (01:00.0, 02:00.0 here).
    "functions": [
        {"id": "1002:7551", "address": "0000:03:00.0", "kind": "display"},
        {"id": "1002:ab40", "address": "0000:03:00.1", "kind": "audio"},
    ],
}

hypervisor = [
    (
        "pve",
        {
            "ssh_hostname": "pve.home.arpa",
            "lan_address": "192.168.1.10",
            "cpu": {
                "vendor": "intel",
                "model": "Intel Xeon E5-2690 v4 @ 2.60GHz",
                "cores": 14,
                "threads": 28,
            },
            "memory": "128G",
            "gpus": [{**R9700, "passthrough_to": "ageis-node"}],
            # The UPS's USB cable is plugged in here (drop the key where there is no UPS).
            "ups": {"driver": "usbhid-ups", "port": "auto", "description": "rack UPS"},
            "disks": [
                {
                    "device": "/dev/disk/by-id/ata-TEAM_T253X2001T_EXAMPLE1",
                    "model": "TeamGroup 1TB SATA SSD",
                    "size": "1T",
                    "kind": "ssd",
                    "pool": "ssd",
                },
                {
                    "device": "/dev/disk/by-id/ata-TEAM_T253X2001T_EXAMPLE2",
                    "model": "TeamGroup 1TB SATA SSD",
                    "size": "1T",
                    "kind": "ssd",
                    "pool": "ssd",
                },
                {
                    "device": "/dev/disk/by-id/ata-Samsung_SSD_870_EVO_1TB_EXAMPLE",
                    "model": "Samsung 870 EVO",
                    "size": "1T",
                    "kind": "ssd",
                    "pool": "ssd",
                },
                {
                    "device": "/dev/disk/by-id/nvme-Samsung_SSD_960_EVO_500GB_EXAMPLE",
                    "model": "Samsung 960 EVO NVMe",
                    "size": "500G",
                    "kind": "nvme",
                    "pool": "ssd",
                },
                {
                    "device": "/dev/disk/by-id/ata-WDC_WD220EDGZ_EXAMPLE",
                    "model": "WD White 22TB",
                    "size": "22T",
                    "kind": "hdd",
                    "pool": "hdd",
                },
            ],
            "pools": {
                # Guests' disks, the memory store, models in use.
                "ssd": {
                    "type": "zfs",
                    "zfs_name": "ssd",
                    "path": "/ssd",
                    "content": ["images", "rootdir"],
                },
                # Backups (vzdump, pgBackRest repository), archives, datasets.
                "hdd": {
                    "type": "dir",
                    "path": "/mnt/hdd",
                    "content": ["backup", "iso", "vztmpl", "snippets", "import"],
                },
            },
        },
    ),
]

ageis_node = [
    (
        "ageis-node",
        {
            "ssh_hostname": "ageis-node.home.arpa",
            "lan_address": "192.168.1.20",
            "cpu": {"vendor": "intel", "model": "Xeon E5-2690 v4 (vCPU, host)", "cores": 4},
            # 24 GiB, not the seed's 16 ("expandable", it says; pve has 128): the 70B model's
            # offloaded 13 GiB, PostgreSQL's share, the OS and the services do not fit 16 GiB
            # (the capacity preflight: docs/ageis-node.md). Keep guest.memory the same.
            "memory": "24G",
            # The R9700 as the VM sees it (its PCI address inside the VM is the guest's own).
            "gpus": [
                {
                    **R9700,
                    "functions": [{**f, "address": None} for f in R9700["functions"]],
                }
            ],
            "pools": {"ssd": {"type": "dir", "path": "/srv/ssd"}},
            "guest": {
                "hypervisor": "pve",
                "kind": "qemu",
                "vmid": 100,
                "cores": 4,
                "memory": "24G",
                "disk_size": "256G",
                "storage": "ssd",
                "os": "ubuntu-24.04",
                "passthrough_gpu": "r9700",
                "start_order": 2,
                # Archives, datasets, checkpoints and media on the HDD pool (virtiofs).
                "share_pool": "hdd",
            },
        },
    ),
]

embedder = [
    (
        "embedder",
        {
            "ssh_hostname": "embedder.home.arpa",
            "lan_address": "192.168.1.30",
            "ups_primary": "pve",  # on pve's UPS: shuts down first on low battery
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
    ),
]

monitoring = [
    (
        "monitoring",
        {
            "ssh_hostname": "monitoring.home.arpa",
            "lan_address": "192.168.1.40",
            "guest": {
                "hypervisor": "pve",
                "kind": "lxc",
                "vmid": 110,
                "cores": 2,
                "memory": "2G",
                "disk_size": "32G",
                "storage": "ssd",
                "os": "debian-13",
                "start_order": 1,
            },
        },
    ),
]

dns = [
    (
        "dns",
        {
            "ssh_hostname": "dns.home.arpa",
            "lan_address": "192.168.1.50",
            "guest": {
                "hypervisor": "pve",
                "kind": "lxc",
                "vmid": 111,
                "cores": 1,
                "memory": "512M",
                "disk_size": "8G",
                "storage": "ssd",
                "os": "debian-13",
                "start_order": 1,
                # The resolver answers before the AI VM (order 2) starts and asks it for names.
                "start_delay": 10,
            },
        },
    ),
]

service_guests = [name for name, _ in monitoring + dns]

# Validate every host's data (nothing connects before it passes), then log in to each host as
# its admin user once a run has proven that login, else as its first-contact user.
log_in_as_recorded(globals(), check_inventory_file(__file__))
