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
    inside the container where the stand-in pool directory is bind-mounted. ``first_login`` is
    the user a new root lets in, as the real host's installer would: root, or on the VM the
    admin user that cloud-init creates from Proxmox's ``ciuser``. ``share_pool``: the
    hypervisor pool whose share a ready-made VM mounts (virtiofs on the real VM, a bind here).
    """

    name: str
    address: str
    groups: tuple[str, ...]
    pools: dict[str, str] = field(default_factory=dict)
    first_login: str = "root"
    # The hypervisor pool a ready-made VM shares (its inventory's guest.share_pool): a guest the
    # API double made gets its shares from its config there instead.
    share_pool: str | None = None

    @property
    def root_dir(self) -> Path:
        """The container's root file system on the lab machine."""
        return MACHINES_DIR / self.name / "root"

    def pool_dir(self, pool: str) -> Path:
        """The stand-in directory on the lab machine that is mounted at ``pools[pool]``."""
        if pool not in self.pools:
            raise KeyError(f"lab host {self.name!r} has no {pool!r} pool")
        return POOLS_DIR / self.name / pool


# Several labs can run side by side (parallel work on one machine): HOMELAB_LAB_ID=n (0-9)
# gives lab n its own bridge, subnet, state directory, nft table and apt cache.
LAB_ID = int(os.environ.get("HOMELAB_LAB_ID", "0"))
if not 0 <= LAB_ID <= 9:
    raise ValueError(f"HOMELAB_LAB_ID must be 0-9, not {LAB_ID}")
SUFFIX = "" if LAB_ID == 0 else f"-{LAB_ID}"

# The lab LAN. Not a range of the user's LAN: only lab containers live here.
BRIDGE = f"hlab{LAB_ID}"
NET_PREFIX = f"10.213.{LAB_ID}"
SUBNET = f"{NET_PREFIX}.0/24"
GATEWAY = f"{NET_PREFIX}.1"
PREFIX_LENGTH = 24

# The admin user of group_data/all.py, the login of every lab host once a rollout proved it.
ADMIN_USER = "ops"

HOSTS: tuple[LabHost, ...] = (
    LabHost("pve", f"{NET_PREFIX}.10", ("hypervisor",), {"ssd": "/srv/ssd", "hdd": "/srv/hdd"}),
    LabHost(
        "ageis-node", f"{NET_PREFIX}.20", ("ageis_node",), {"ssd": "/srv/ssd"}, ADMIN_USER, "hdd"
    ),
    LabHost("embedder", f"{NET_PREFIX}.30", ("embedder",), {"ssd": "/srv/ssd"}),
    LabHost("monitoring", f"{NET_PREFIX}.40", ("service_guests", "monitoring")),
    LabHost("dns", f"{NET_PREFIX}.50", ("service_guests", "dns")),
)

# Where the lab keeps things outside the repository. The cache (base image, apt cache, lab SSH
# key) survives ``make lab-down``; the state (container roots, stand-in pools) is per lab.
CACHE_DIR = Path(os.environ.get("HOMELAB_LAB_CACHE", "/var/cache/homelab-lab"))
STATE_DIR = Path(os.environ.get("HOMELAB_LAB_STATE", f"/var/lib/homelab-lab{SUFFIX}"))
SSH_KEY = CACHE_DIR / "ssh" / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
# The lab's login records (tasks/common/logins.py): a new root forgets its host's record.
LOGIN_RECORDS = STATE_DIR / "logins"
PROXMOX_CA_RECORDS = STATE_DIR / "proxmox-ca"
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
