"""Proxmox VE on the hypervisor: accept PVE 8 (Debian 12) or 9 (Debian 13), or install it.

A host that runs Proxmox VE (``pve-manager`` installed) is accepted when its release matches
(PVE 8 on bookworm, PVE 9 on trixie); its package repositories follow ``proxmox_repository``:
``no-subscription`` adds Proxmox's no-subscription repository (deb822) and disables the
enterprise entries the installer wrote (they fail without a subscription), ``enterprise``
leaves those and removes ours.

On plain Debian 12/13 with ``proxmox_ve_install`` (the default), Proxmox VE is installed the
documented way ("Install Proxmox VE on Debian 12 Bookworm / 13 Trixie"), each step only when
needed: the release's archive keyring (downloaded on the host, trusted only when its
fingerprints are the release's), the no-subscription repository, a full upgrade and
``proxmox-default-kernel``, a reboot into it, ``proxmox-ve postfix open-iscsi chrony`` (postfix
preseeded "Local only"), then the Debian kernel and ``os-prober`` removed and GRUB updated.
With ``proxmox_ve_install: false`` the host stays plain Debian (the lab: Proxmox's repository
is unreachable there) and pyinfra's output says so.

Ports: Proxmox's spiceproxy listens on 3128 (SPICE consoles, authenticated by pveproxy
tickets); it belongs to pve-manager, whose upgrades restart it, so it is declared rather than
disabled and the firewall opens it only to the admin's devices. rpcbind (111, pulled in by
nfs-common for NFS storages) is masked unless ``proxmox_rpcbind`` is true: this homelab has no
NFS storage, and an rpcbind open to the LAN serves nothing but scanners. spiceproxy is not
probed by monitoring: it serves only SPICE sessions that pveproxy (probed on 8006) hands out, and
it exists only where Proxmox VE is installed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from io import StringIO

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import KernelVersion, LinuxDistribution
from pyinfra.operations import apt, files, server

from tasks.common.apt_keys import INSTALLER, KeyringFingerprints
from tasks.common.datamodel.forms import Bool, Str
from tasks.common.datamodel.keys import Key, Schema, Settings
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE
from tasks.common.hardware_facts import UnitStates
from tasks.common.ports import ADMIN, Port
from tasks.common.templating import file_path, template_path

URL = Str(
    r"https?://[^\s]+", what='an http(s) URL such as "http://download.proxmox.com/debian/pve"'
)

DATA = Schema(
    "proxmox_ve",
    Key(
        "proxmox_ve_install",
        Bool(),
        True,
        "On plain Debian 12/13, install Proxmox VE (repository, kernel, reboot, proxmox-ve);"
        " false keeps the host plain Debian (the lab).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_repository",
        Str(choices=("no-subscription", "enterprise")),
        "no-subscription",
        "Proxmox's package repository: no-subscription (the enterprise entries are disabled)"
        " or enterprise (needs a subscription key on the host).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_repo_url",
        URL,
        "http://download.proxmox.com/debian/pve",
        "Where the no-subscription repository is (a mirror of it may be named here).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_subscription_nag",
        Bool(),
        True,
        'Keep the web UI\'s "No valid subscription" dialog; false patches it out (again after'
        " each proxmox-widget-toolkit upgrade, from an apt hook).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_rpcbind",
        Bool(),
        False,
        "Keep rpcbind (port 111, NFSv3 storages); false masks it. True needs 111 in"
        " firewall_extra_ports.",
        (HYPERVISOR,),
    ),
)

PORTS = (Port(3128, "tcp", "spiceproxy", consumers=(ADMIN,)),)


@dataclass(frozen=True)
class Release:
    """What Proxmox's install guide uses for one Debian release."""

    pve_major: int
    key_url: str
    # Primary keys the downloaded keyring must hold, exactly (trixie's holds two).
    fingerprints: tuple[str, ...]
    keyring: str
    # Debian's own kernel images, removed once the Proxmox kernel runs.
    debian_kernel_prefix: str


RELEASES = {
    "bookworm": Release(
        8,
        "https://enterprise.proxmox.com/debian/proxmox-release-bookworm.gpg",
        ("F4E136C67CDCE41AE6DE6FC81140AF8F639E0C39",),
        "/usr/share/keyrings/proxmox-release-bookworm.gpg",
        "linux-image-6.1.",
    ),
    "trixie": Release(
        9,
        "https://enterprise.proxmox.com/debian/proxmox-archive-keyring-trixie.gpg",
        ("24B30F06ECC1836A4E5EFECBA7BCD1420BFE778E", "F4E136C67CDCE41AE6DE6FC81140AF8F639E0C39"),
        "/usr/share/keyrings/proxmox-archive-keyring.gpg",
        "linux-image-6.12.",
    ),
}
SOURCES = "/etc/apt/sources.list.d/pve-install-repo.sources"
# What the Proxmox VE installer writes for the enterprise repositories (PVE 9 deb822, PVE 8).
ENTERPRISE_SOURCES = (
    "/etc/apt/sources.list.d/pve-enterprise.sources",
    "/etc/apt/sources.list.d/ceph.sources",
)
ENTERPRISE_LISTS = (
    "/etc/apt/sources.list.d/pve-enterprise.list",
    "/etc/apt/sources.list.d/ceph.list",
)
ENTERPRISE_HOST = "enterprise.proxmox.com"
NAG_SCRIPT = "/usr/local/sbin/proxmox-hide-subscription-nag"
NAG_HOOK = "/etc/apt/apt.conf.d/86homelab-subscription-nag"
NAG_JS = "/usr/share/javascript/proxmox-widget-toolkit/proxmoxlib.js"
# The web UI's subscription check, and the mark the patch leaves (files/proxmox-hide-...).
NAG_CHECK = "res.data.status.toLowerCase() !== 'active'"
NAG_MARK = "homelab: no subscription nag"
RPCBIND_UNITS = ("rpcbind.service", "rpcbind.socket")


class ProxmoxRefused(RuntimeError):
    """The host cannot carry Proxmox VE as the data asks; nothing was changed."""


def installs_proxmox_ve() -> bool:
    """True when this run installs Proxmox VE on the current host (plain Debian with
    ``proxmox_ve_install``): it is there, rebooted into, only once the run has executed."""
    packages = host.get_fact(DebPackages) or {}
    return "pve-manager" not in packages and DATA.read(host).proxmox_ve_install


def _say(message: str) -> None:
    logger.info(f"{host.print_prefix}{message}")


def _release() -> tuple[str, Release]:
    meta = host.get_fact(LinuxDistribution).get("release_meta") or {}
    codename = meta.get("VERSION_CODENAME", "")
    if meta.get("ID") != "debian" or codename not in RELEASES:
        raise ProxmoxRefused(
            f"host {host.name!r}: Proxmox VE 8 or 9 runs on Debian 12 (bookworm) or 13 (trixie);"
            f" this host runs {meta.get('PRETTY_NAME') or 'an unknown system'}"
        )
    return codename, RELEASES[codename]


def _pve_major(version: str) -> int:
    head = version.split(":")[-1].split(".")[0]
    return int(head) if head.isdigit() else 0


def _disable_enterprise() -> None:
    for path in ENTERPRISE_SOURCES:
        lines = host.get_fact(FileContents, path=path) or []
        enabled = any(ENTERPRISE_HOST in line for line in lines) and not any(
            line.replace(" ", "").lower() == "enabled:no" for line in lines
        )
        server.shell(
            name=f"Disable the enterprise repository in {path} (Enabled: no)",
            commands=[f"sed -i '/^Types:/i Enabled: no' {path}"] if enabled else [],
        )
    for path in ENTERPRISE_LISTS:
        lines = host.get_fact(FileContents, path=path) or []
        enabled = any(line.startswith("deb ") and ENTERPRISE_HOST in line for line in lines)
        server.shell(
            name=f"Disable the enterprise repository in {path} (commented out)",
            commands=[rf"sed -i 's|^\(deb .*enterprise\.proxmox\.com.*\)$|# \1|' {path}"]
            if enabled
            else [],
        )


def _repository(settings: Settings, codename: str, release: Release, packages: dict) -> bool:
    """The no-subscription repository and its key; True when either will change."""
    # Once Proxmox's own proxmox-archive-keyring package owns the keyring, it keeps it current.
    package_keyring = (
        release.keyring == RELEASES["trixie"].keyring and "proxmox-archive-keyring" in packages
    )
    changed = False
    if not package_keyring:
        files.put(
            name="Install the verified APT key installer",
            src=file_path("install-apt-key"),
            dest=INSTALLER,
            mode="755",
        )
        have = host.get_fact(KeyringFingerprints, path=release.keyring)
        wanted = sorted(release.fingerprints)
        args = (
            INSTALLER,
            host.name,
            "proxmox (release key URL)",
            release.key_url,
            "proxmox (release key fingerprints)",
            " ".join(wanted),
            release.keyring,
        )
        key = server.shell(
            name=f"Proxmox's {codename} archive keyring (fingerprints checked)",
            commands=[" ".join(shlex.quote(a) for a in args)]
            if sorted(have or []) != wanted
            else [],
        )
        changed = key.will_change
    source = files.template(
        name="Proxmox VE no-subscription repository (deb822)",
        src=template_path("pve-install-repo.sources.j2"),
        dest=SOURCES,
        mode="644",
        user="root",
        group="root",
        repo_url=settings.proxmox_repo_url,
        codename=codename,
        keyring=release.keyring,
    )
    return changed or source.will_change


def _install(codename: str, release: Release, packages: dict, repo_changed: bool) -> None:
    kernel = host.get_fact(KernelVersion)
    if repo_changed or "proxmox-default-kernel" not in packages:
        apt.update(name="Refresh package lists for Proxmox's repository")
    if "proxmox-default-kernel" not in packages:
        apt.dist_upgrade(name="Full upgrade before the Proxmox kernel (as the guide says)")
    apt.packages(
        name="Proxmox VE kernel (proxmox-default-kernel)", packages=["proxmox-default-kernel"]
    )
    if not kernel.endswith("-pve"):
        _say(f"Proxmox VE install: the running kernel is {kernel}; rebooting into the Proxmox one")
        server.reboot(name="Reboot into the Proxmox VE kernel", reboot_timeout=900)
    fqdn = f"{host.name}.{MACHINE.read(host).domain}"
    selections = (
        "postfix postfix/main_mailer_type select Local only\n"
        f"postfix postfix/mailname string {fqdn}\n"
    )
    files.put(
        name="Preseed postfix (Local only) for proxmox-ve",
        src=StringIO(selections),
        dest="/var/cache/debconf/homelab-postfix.seed",
        mode="644",
    )
    server.shell(
        name="Load the postfix preseed",
        commands=["debconf-set-selections /var/cache/debconf/homelab-postfix.seed"]
        if "postfix" not in packages
        else [],
    )
    apt.packages(
        name="Proxmox VE (proxmox-ve postfix open-iscsi chrony)",
        packages=["proxmox-ve", "postfix", "open-iscsi", "chrony"],
    )
    debian_kernels = sorted(
        name
        for name in packages
        if name == "linux-image-amd64"
        or (name.startswith(release.debian_kernel_prefix) and name.endswith("-amd64"))
    )
    if debian_kernels:
        apt.packages(
            name="Remove Debian's kernel (Proxmox VE brings its own)",
            packages=debian_kernels,
            present=False,
        )
        server.shell(name="Update GRUB after removing Debian's kernel", commands=["update-grub"])


@deploy("Proxmox VE", data_defaults=DATA.defaults())
def proxmox_ve() -> None:
    settings = DATA.read(host)
    codename, release = _release()
    packages = host.get_fact(DebPackages) or {}
    installed = packages.get("pve-manager")
    if installed:
        major = _pve_major(installed[0])
        if major != release.pve_major:
            raise ProxmoxRefused(
                f"host {host.name!r}: pve-manager {installed[0]} on Debian {codename}; expected"
                f" Proxmox VE {release.pve_major} there. Finish the upgrade first"
            )
        _say(f"Proxmox VE {installed[0]} on Debian {codename}: accepted")
    elif not settings.proxmox_ve_install:
        _say(
            f"Proxmox VE: not installed, and proxmox_ve_install is false: the host stays plain"
            f" Debian {codename} (the lab's override: Proxmox's repository is unreachable there)."
            " Proxmox-only steps are skipped; the rest of the hypervisor role runs"
        )
        _rpcbind(settings, packages)
        return

    if settings.proxmox_repository == "no-subscription":
        repo_changed = _repository(settings, codename, release, packages)
        _disable_enterprise()
    else:
        repo_changed = False
        files.file(name="No no-subscription repository (enterprise)", path=SOURCES, present=False)

    if not installed:
        _install(codename, release, packages, repo_changed)
    elif repo_changed:
        apt.update(name="Refresh package lists for Proxmox's repository")
    apt.packages(
        name="No os-prober (it scans guests' disks at every update-grub)",
        packages=["os-prober"],
        present=False,
    )
    _subscription_nag(settings, packages)
    _rpcbind(settings, packages, installing=not installed)


def _subscription_nag(settings: Settings, packages: dict) -> None:
    if settings.proxmox_subscription_nag:
        files.file(
            name="Subscription dialog: left as Proxmox ships it", path=NAG_HOOK, present=False
        )
        return
    files.put(
        name="Subscription dialog patcher",
        src=file_path("proxmox-hide-subscription-nag"),
        dest=NAG_SCRIPT,
        mode="755",
    )
    files.template(
        name="Re-apply the subscription dialog patch after upgrades (apt hook)",
        src=template_path("apt-homelab-subscription-nag.j2"),
        dest=NAG_HOOK,
        mode="644",
        script=NAG_SCRIPT,
    )
    script = " ".join(host.get_fact(FileContents, path=NAG_JS) or [])
    if NAG_MARK in script:
        return
    if NAG_CHECK not in script:
        logger.warning(
            f"{host.name}: proxmox_subscription_nag is false, but {NAG_JS} has no"
            f" subscription check in the known form ({NAG_CHECK}); left as it is"
        )
        return
    server.shell(name="Hide the subscription dialog in the web UI", commands=[NAG_SCRIPT])


def _rpcbind(settings: Settings, packages: dict, *, installing: bool = False) -> None:
    """Mask rpcbind, or keep it when the data asks; ``installing``: proxmox-ve brings it now."""
    if "rpcbind" not in packages and not installing:
        return
    states = host.get_fact(UnitStates, units=RPCBIND_UNITS)
    masked = all(states.get(unit) == "masked" for unit in RPCBIND_UNITS)
    if settings.proxmox_rpcbind:
        extra = host.data.get("firewall_extra_ports") or []
        if not any(p.get("port") == 111 for p in extra):
            raise ProxmoxRefused(
                f"host {host.name!r}: key 'proxmox_rpcbind' is true but firewall_extra_ports"
                " does not declare port 111 (rpcbind would listen undeclared)"
            )
        server.shell(
            name="rpcbind kept for NFS (unmasked)",
            commands=[
                "systemctl unmask " + " ".join(RPCBIND_UNITS),
                "systemctl enable --now rpcbind.socket",
            ]
            if masked
            else [],
        )
        return
    server.shell(
        name="Mask rpcbind (no NFS storage: nothing may listen on port 111)",
        commands=[] if masked else ["systemctl mask --now " + " ".join(RPCBIND_UNITS)],
    )
