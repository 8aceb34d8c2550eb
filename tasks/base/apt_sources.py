"""APT sources: keep each host's configured mirror unless the data names one.

Reads ``apt_mirror`` and ``apt_security_mirror``. With ``apt_mirror`` unset (the default) the
host's own sources are left exactly as they are. Set, the distribution's deb822 sources file
(``debian.sources`` or ``ubuntu.sources``) is written with that mirror for the host's release,
with the components the host needs (a Debian host with an NVIDIA GPU also gets contrib and
non-free, see ``tasks/embedder/nvidia_driver.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files

from tasks.common.datamodel.forms import Optional, Str
from tasks.common.datamodel.keys import DataError, Key, Problem, Schema, check_key
from tasks.common.datamodel.machine import MACHINE
from tasks.common.templating import template_path
from tasks.embedder.nvidia_driver import extra_apt_components

URL = Str(r"https?://[^\s]+", what='an http(s) URL such as "http://mirror.example/debian"')


def _security_mirror_with_mirror(values: Mapping[str, Any]) -> Iterator[Problem]:
    if values["apt_mirror"] and not values["apt_security_mirror"]:
        yield "apt_security_mirror", None, "a URL when apt_mirror is set"


DATA = Schema(
    "apt_sources",
    Key("apt_mirror", Optional(URL), None, "Distribution mirror; None keeps the host's own."),
    Key(
        "apt_security_mirror",
        Optional(URL),
        None,
        "Security archive URL, required with apt_mirror.",
    ),
    checks=(_security_mirror_with_mirror,),
)

COMPONENTS = {
    "debian": "main non-free-firmware",
    "ubuntu": "main restricted universe multiverse",
}


def _components(distro_id: str) -> list[str]:
    """The distribution's components, plus what the host's GPUs need (NVIDIA: contrib, non-free)."""
    components = COMPONENTS[distro_id].split()
    if distro_id == "debian":
        gpus = check_key(host.name, MACHINE.keys["gpus"], host.data.dict())
        components += [c for c in extra_apt_components(gpus) if c not in components]
    return components


@deploy("APT sources", data_defaults=DATA.defaults())
def apt_sources() -> None:
    settings = DATA.read(host)
    if settings.apt_mirror is None:
        host.noop("apt_mirror unset: keeping the host's configured mirror")
        return
    distro = host.get_fact(LinuxDistribution)
    distro_id = (distro.get("release_meta") or {}).get("ID", "").lower()
    codename = (distro.get("release_meta") or {}).get("VERSION_CODENAME", "")
    if distro_id not in COMPONENTS or not codename:
        raise DataError(
            host.name,
            "apt_mirror",
            settings.apt_mirror,
            f"unset on {distro_id or 'this'} host (supported: Debian and Ubuntu)",
        )
    sources = files.template(
        name=f"Use {settings.apt_mirror} in {distro_id}.sources",
        src=template_path("distribution.sources.j2"),
        dest=f"/etc/apt/sources.list.d/{distro_id}.sources",
        mode="644",
        distro_id=distro_id,
        codename=codename,
        mirror=settings.apt_mirror,
        security_mirror=settings.apt_security_mirror,
        components=" ".join(_components(distro_id)),
    )
    apt.update(name="Refresh package lists for the new mirror", _if=sources.did_change)
