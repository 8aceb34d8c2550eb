"""The lab's hosts: one systemd-nspawn container per inventory host, on a private bridge.

This is the single description of the lab's machines. ``labctl.py`` boots them from it and
``tests/lab/inventory.py`` turns it into a pyinfra inventory (reusing ``group_data/``), so the
two can never disagree about a name, an address or a stand-in pool directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LabHost:
    """One lab container.

    ``name`` is the inventory host name (and the container's hostname); ``groups`` are the
    inventory groups it belongs to; ``pools`` maps a pool name (``ssd``/``hdd``) to the path
    inside the container where the stand-in pool directory is bind-mounted.
    """

    name: str
    address: str
    groups: tuple[str, ...]
    pools: dict[str, str] = field(default_factory=dict)

    @property
    def root_dir(self) -> Path:
        """The container's root file system on the lab machine."""
        return MACHINES_DIR / self.name / "root"

    def pool_dir(self, pool: str) -> Path:
        """The stand-in directory on the lab machine that is mounted at ``pools[pool]``."""
        if pool not in self.pools:
            raise KeyError(f"lab host {self.name!r} has no {pool!r} pool")
        return POOLS_DIR / self.name / pool


# The lab LAN. Not a range of the user's LAN: only lab containers live here.
BRIDGE = "hlab0"
SUBNET = "10.213.0.0/24"
GATEWAY = "10.213.0.1"
PREFIX_LENGTH = 24

HOSTS: tuple[LabHost, ...] = (
    LabHost("pve", "10.213.0.10", ("hypervisor",), {"ssd": "/srv/ssd", "hdd": "/srv/hdd"}),
    LabHost("ageis-node", "10.213.0.20", ("ageis_node",), {"ssd": "/srv/ssd"}),
    LabHost("embedder", "10.213.0.30", ("embedder",), {"ssd": "/srv/ssd"}),
    LabHost("monitoring", "10.213.0.40", ("service_guests", "monitoring")),
    LabHost("dns", "10.213.0.50", ("service_guests", "dns")),
)

# Where the lab keeps things outside the repository. The cache (base image, apt cache, lab SSH
# key) survives ``make lab-down``; the state (container roots, stand-in pools) is per lab.
CACHE_DIR = Path(os.environ.get("HOMELAB_LAB_CACHE", "/var/cache/homelab-lab"))
STATE_DIR = Path(os.environ.get("HOMELAB_LAB_STATE", "/var/lib/homelab-lab"))
SSH_KEY = CACHE_DIR / "ssh" / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
# The lab's secrets file (random values, mode 600), made when the lab inventory loads.
SECRETS_FILE = STATE_DIR / "secrets.toml"
# Container roots (``MACHINES_DIR/<name>/root``) and stand-in pools (``POOLS_DIR/<name>/<pool>``).
MACHINES_DIR = STATE_DIR / "machines"
POOLS_DIR = STATE_DIR / "pools"
# apt-cacher-ng listens here for the lab hosts, so a second run fetches no package again.
APT_PROXY_PORT = 3142


def by_name(name: str) -> LabHost:
    """Return the lab host called ``name`` or fail naming the hosts that exist."""
    for lab_host in HOSTS:
        if lab_host.name == name:
            return lab_host
    known = ", ".join(h.name for h in HOSTS)
    raise KeyError(f"no lab host {name!r}; the lab has: {known}")
