"""The hypervisor's side of the VMs' virtiofs shares: virtiofsd and one directory per share.

A guest with ``guest.share_pool`` gets ``<pool path>/shares/<guest>`` (with the tiering
directories the guest expects in it) on this host; Proxmox's directory mapping and the VM's
``virtiofs0`` key are the guests task's (``proxmox_guests``), through the API. Proxmox VE 8.4
and later start ``virtiofsd`` for the VM from the mapping; the package is installed here since
a VM with a ``virtiofs`` key does not start without it.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from tasks.common.datamodel.machine import MACHINE
from tasks.common.shares import SHARE_SUBDIRS, share_host_path
from tasks.hypervisor.proxmox_api import guests_of

PACKAGE = "virtiofsd"


def shared_directories() -> list[tuple[str, str]]:
    """(guest, directory on this host) of every share of this hypervisor's guests."""
    pools = MACHINE.read(host).pools
    return [
        (name, share_host_path(pools[spec["share_pool"]]["path"], name))
        for name, spec, _ in guests_of(host.name)
        if spec.get("share_pool")
    ]


@deploy("Guest shares (virtiofs)")
def guest_shares() -> None:
    shares = shared_directories()
    if not shares:
        return
    apt.packages(name="virtiofsd for the VMs' shares", packages=[PACKAGE], no_recommends=True)
    for guest, directory in shares:
        for path in (directory, *(f"{directory}/{sub}" for sub in SHARE_SUBDIRS)):
            files.directory(
                name=f"Share of {guest}: {path}", path=path, user="root", group="root", mode="755"
            )
