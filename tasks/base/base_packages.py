"""Base packages every host gets (tools an operator expects at a root shell), plus extras.

Reads ``base_packages`` and ``extra_packages``. Package lists are refreshed at most once per
``apt_cache_valid_seconds`` so that a converged host reports no change.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from tasks.common.datamodel.forms import Int, ListOf, Str
from tasks.common.datamodel.keys import Key, Schema

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
    apt.packages(
        name="Install base packages",
        packages=settings.base_packages + settings.extra_packages,
        no_recommends=True,
    )
