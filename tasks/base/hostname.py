"""Host name and /etc/hosts: every inventory host by name, so the LAN works without DNS.

Reads: the host's inventory name, ``domain``, ``guest`` and ``lan_address`` of every inventory
host.
The host's own name maps to its LAN address (not 127.0.1.1): Proxmox VE requires that.
The file has one owner: on an LXC guest ``/etc/.pve-ignore.hosts`` keeps Proxmox VE from adding
its own section at every start; on a cloud-init VM, cloud-init is switched off after its first
boot (``tasks.base.cloud_init``).
"""

from __future__ import annotations

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import files, server

from tasks.common.datamodel.machine import MACHINE
from tasks.common.templating import template_path

PVE_IGNORE = "/etc/.pve-ignore.hosts"


@deploy("Host name and /etc/hosts")
def hostname() -> None:
    domain = MACHINE.read(host).domain
    entries = sorted((str(MACHINE.read(other).lan_address), other.name) for other in inventory)
    server.hostname(name="Set the host name", hostname=host.name)
    files.template(
        name="Write /etc/hosts with every inventory host",
        src=template_path("hosts.j2"),
        dest="/etc/hosts",
        mode="644",
        user="root",
        group="root",
        this_host=host.name,
        domain=domain,
        entries=entries,
    )
    guest = MACHINE.read(host).guest  # from the data: no fact to ask in every run
    if guest and guest["kind"] == "lxc":
        files.file(
            name="Proxmox VE leaves this guest's /etc/hosts alone",
            path=PVE_IGNORE,
            present=True,
            touch=False,
            mode="644",
        )
