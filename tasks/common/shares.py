"""Names of a VM's virtiofs share, agreed between the hypervisor and the guest.

A guest with ``guest.share_pool`` gets the directory ``<pool path>/shares/<guest>`` of its
hypervisor's pool through virtiofs: Proxmox's directory mapping ``<guest>-<pool>`` (also the
mount tag inside the VM), mounted by the guest at ``/srv/<pool>``. The guest sees only its own
directory, never the pool's root (which holds the backups and the pgBackRest repository).
"""

from __future__ import annotations

import re

SHARES_DIR = "shares"
MOUNT_ROOT = "/srv"
# Inside the mount: archived models, and the working areas that are too big for the SSD.
SHARE_SUBDIRS = ("archive", "archive/models", "datasets", "checkpoints", "media")


def share_id(guest: str, pool: str) -> str:
    """The directory mapping's ID and mount tag (a ``pve-configid``: ``[a-z][a-z0-9_-]+``)."""
    text = re.sub(r"[^a-z0-9_-]+", "-", f"{guest}-{pool}".lower()).strip("-")
    return text if re.match(r"[a-z]", text) else f"share-{text}"


def share_host_path(pool_path: str, guest: str) -> str:
    """The shared directory on the hypervisor."""
    return f"{pool_path.rstrip('/')}/{SHARES_DIR}/{guest}"


def share_mount_point(pool: str) -> str:
    """Where the guest mounts the share."""
    return f"{MOUNT_ROOT}/{pool}"


def systemd_unit_for_path(path: str) -> str:
    """``systemd-escape --path`` of ``path`` (``/srv/hdd`` -> ``srv-hdd``)."""
    parts = []
    for index, char in enumerate(path.strip("/")):
        if char == "/":
            parts.append("-")
        elif char.isascii() and (char.isalnum() or char == "_" or (char == "." and index)):
            parts.append(char)
        else:
            parts.append("".join(f"\\x{byte:02x}" for byte in char.encode()))
    return "".join(parts) or "-"
