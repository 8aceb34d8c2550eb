"""Base packages every host gets (tools an operator expects at a root shell), plus extras.

Reads ``base_packages``, ``extra_packages`` and ``guest``: a Proxmox VM (``guest.kind`` qemu)
also gets ``qemu-guest-agent``, which the VM's ``agent=1`` expects (clean shutdown from the
host, frozen filesystems for snapshot backups; udev starts it when the VM has the agent's
virtio port). Package lists are refreshed at most once per ``apt_cache_valid_seconds`` so that a
converged host reports no change.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from tasks.common.datamodel.forms import Int, ListOf, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import MACHINE

GUEST_AGENT = "qemu-guest-agent"
PACKAGE = Str(r"[a-z0-9][a-z0-9+.-]+", what='a Debian package name such as "curl"')

DATA = Schema(
    "base_packages",
    Key(
        "base_packages",
        ListOf(PACKAGE, unique=True),
        [
            "bind9-dnsutils",
            "ca-certificates",
            "curl",
            "gnupg",
            "htop",
            "iproute2",
            "jq",
            "less",
            "lsof",
            "pciutils",
            "rsync",
            "sudo",
            "tmux",
            "vim-tiny",
        ],
        "Packages on every host.",
    ),
    Key("extra_packages", ListOf(PACKAGE, unique=True), [], "More packages, per group or host."),
    Key(
        "apt_cache_valid_seconds",
        Int(0, 7 * 86400),
        86400,
        "Refresh package lists only when older than this.",
    ),
)


@deploy("Base packages", data_defaults=DATA.defaults())
def base_packages() -> None:
    settings = DATA.read(host)
    apt.update(name="Refresh package lists when stale", cache_time=settings.apt_cache_valid_seconds)
    guest = MACHINE.read(host).guest
    agent = [GUEST_AGENT] if guest and guest["kind"] == "qemu" else []
    apt.packages(
        name="Install base packages",
        packages=settings.base_packages + settings.extra_packages + agent,
        no_recommends=True,
    )
