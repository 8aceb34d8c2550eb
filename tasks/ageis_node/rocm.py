"""ROCm on ageis-node: AMD's signed apt repositories, pinned, amdgpu-dkms and the GPU's users.

Runs on a host whose ``gpus`` data declares an AMD GPU (the R9700 passed through to the VM);
a host without one is told so and left alone. A declared GPU that the host's PCI bus does not
show (``/sys/bus/pci/devices``, what ``lspci -n`` lists) stops the run before anything is
touched, naming the host and the device: passthrough is missing or the data is wrong.

The repositories are AMD's own, for the host's Ubuntu release (ROCm 7.2 supports the R9700,
gfx1201, on Ubuntu 24.04.3 and 22.04.5, not on Debian): ``rocm/apt/<rocm_version>`` and
``amdgpu/<rocm_amdgpu_version>/ubuntu`` (ROCm 7.2.1 ships amdgpu 30.30.1), one deb822 source
signed by AMD's key (``rocm_key_fingerprint``, checked before it is trusted), and AMD's pin
(``Pin: release o=repo.radeon.com``, priority 600) so distribution packages never shadow them.
The version is in the repositories' URLs: changing ``rocm_version`` is an upgrade.

Then ``amdgpu-dkms`` with the running kernel's headers (and Ubuntu's modules-extra), the ROCm
packages of ``rocm_packages``, and ``rocm_gpu_users`` (Ollama's user joins itself) in
``render`` and ``video``. The repository and packages are triggers of the inference span
(``inference_guard.py``): a change to them snapshots the VM first. A change to the kernel
driver (amdgpu-dkms installed or upgraded, or the running kernel's headers missing, so DKMS
builds it now) loads only at the next boot: the span reboots the VM and then proves that
``rocminfo`` lists ``rocm_gfx_target`` (``gpu_proof.py``) before the snapshot goes; ``amd-smi``
seeing the card is checked by ``tests/verify`` (hardware-only checks).
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import KernelVersion, LinuxDistribution
from pyinfra.operations import apt, files, server

from tasks.ageis_node.snapshot_guard import Span
from tasks.common.apt_keys import Fingerprint, verified_keyring
from tasks.common.changes import changed
from tasks.common.datamodel.forms import UNIX_NAME, Bool, ListOf, Optional, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE
from tasks.common.templating import template_path

GROUPS = (AGEIS_NODE,)
KEYRING = "/etc/apt/keyrings/rocm.gpg"
SOURCES = "/etc/apt/sources.list.d/rocm.sources"
PIN_FILE = "/etc/apt/preferences.d/rocm-pin-600"
# Groups whose members may open /dev/kfd and /dev/dri/renderD* (AMD's documented groups).
GPU_GROUPS = ("render", "video")
# Ubuntu releases ROCm 7.2 supports the R9700 on (os-release VERSION_CODENAME).
SUPPORTED_SUITES = ("noble", "jammy")
AMD_VENDOR = "1002"

VERSION = Str(r"[0-9]+\.[0-9]+(\.[0-9]+)?", what='a ROCm version such as "7.2.1"')
AMDGPU_VERSION = Str(
    r"[0-9]+\.[0-9]+(\.[0-9]+)?", what='an amdgpu driver version such as "30.30.1"'
)
URL = Str(
    r"https?://[^\s{}]+(\{[a-z_]+\}[^\s{}]*)*",
    what='an http(s) URL such as "https://repo.radeon.com/rocm/apt/{version}"',
)
PACKAGE = Str(r"[a-z0-9][a-z0-9+.{}_-]+", what='a package name such as "rocminfo"')

DATA = Schema(
    "rocm",
    Key(
        "rocm_version",
        VERSION,
        "7.2.1",
        "ROCm release (the repository's version; 7.x: Ollama's ROCm 7 bundle needs its driver).",
        GROUPS,
    ),
    Key(
        "rocm_amdgpu_version",
        AMDGPU_VERSION,
        "30.30.1",
        "amdgpu driver release that ships with rocm_version (ROCm 7.2.1: 30.30.1).",
        GROUPS,
    ),
    Key(
        "rocm_repo_url",
        URL,
        "https://repo.radeon.com/rocm/apt/{version}",
        "AMD's ROCm apt repository ({version} is rocm_version).",
        GROUPS,
    ),
    Key(
        "rocm_amdgpu_repo_url",
        URL,
        "https://repo.radeon.com/amdgpu/{amdgpu_version}/ubuntu",
        "AMD's amdgpu driver apt repository ({amdgpu_version} is rocm_amdgpu_version).",
        GROUPS,
    ),
    Key(
        "rocm_key_url",
        URL,
        "https://repo.radeon.com/rocm/rocm.gpg.key",
        "Where AMD's repository signing key is downloaded from.",
        GROUPS,
    ),
    Key(
        "rocm_key_fingerprint",
        Fingerprint(),
        "CA8BB4727A47B4D09B4EE8969386B48A1A693C5C",
        "Fingerprint the downloaded key must have (AMD's ROCm release key).",
        GROUPS,
    ),
    Key(
        "rocm_repo_origin",
        Str(r"[A-Za-z0-9._-]+", what='an apt Origin such as "repo.radeon.com"'),
        "repo.radeon.com",
        "Origin of AMD's Release files, pinned at priority 600 over the distribution.",
        GROUPS,
    ),
    Key(
        "rocm_apt_suite",
        Optional(Str(r"[a-z]+", what='an Ubuntu codename such as "noble"')),
        None,
        "Suite of AMD's repositories; None: the host's Ubuntu codename (noble, jammy).",
        GROUPS,
    ),
    Key(
        "rocm_packages",
        ListOf(PACKAGE, min_items=1, unique=True),
        ["rocm-hip-runtime", "rocminfo", "amd-smi-lib"],
        "ROCm packages besides amdgpu-dkms (HIP runtime, rocminfo, amd-smi).",
        GROUPS,
    ),
    Key(
        "rocm_kernel_packages",
        ListOf(PACKAGE, unique=True),
        ["linux-headers-{kernel}", "linux-modules-extra-{kernel}"],
        "Packages amdgpu-dkms needs for the running kernel ({kernel}: uname -r).",
        GROUPS,
    ),
    Key(
        "rocm_gpu_users",
        ListOf(UNIX_NAME, unique=True),
        [],
        "Users put in render and video (Ollama's user joins them itself; not the admin user,"
        " whose groups admin_user sets exactly).",
        GROUPS,
    ),
    Key(
        "rocm_gfx_target",
        Str(r"gfx[0-9a-f]+", what='a GPU target such as "gfx1201"'),
        "gfx1201",
        "GPU target rocminfo must list (the R9700 is gfx1201).",
        GROUPS,
    ),
    Key(
        "rocm_check_pci",
        Bool(),
        True,
        "Stop when a declared AMD GPU is not on the host's PCI bus, and require the model"
        " on it after every start (ollama-model-ready); off only in the lab (no card).",
        GROUPS,
    ),
)


class PciDeviceIds(FactBase[list[str]]):
    """``vendor:device`` of every PCI function the host sees (lower-case hex, as lspci -n)."""

    reads_other_hosts = False

    def command(self) -> str:
        return (
            'for d in /sys/bus/pci/devices/*; do test -r "$d/vendor" || continue; '
            'echo "$(cat "$d/vendor"):$(cat "$d/device")"; done'
        )

    def process(self, output: list[str]) -> list[str]:
        ids = []
        for line in output:
            vendor, _, device = line.strip().lower().partition(":")
            if vendor and device:
                ids.append(f"{vendor.removeprefix('0x')}:{device.removeprefix('0x')}")
        return sorted(set(ids))


def amd_gpus(data: Any) -> list[dict[str, Any]]:
    """The host's declared AMD GPUs (the ``gpus`` data key, already validated)."""
    return [gpu for gpu in (data.get("gpus") or []) if gpu.get("vendor") == "amd"]


def require_declared_gpus_present(gpus: list[dict[str, Any]]) -> None:
    """Stop, naming host and device, when a declared GPU's function is not on the PCI bus."""
    present = set(host.get_fact(PciDeviceIds) or [])
    for gpu in gpus:
        for function in gpu["functions"]:
            if function["kind"] == "display" and function["id"] not in present:
                raise RuntimeError(
                    f"host {host.name!r}: its data declares the AMD GPU {gpu['name']!r} "
                    f"({gpu['model']}, PCI {function['id']}), but the host's PCI bus does not "
                    f"show {function['id']} (lspci -nn -d {function['id']}): is the GPU passed "
                    "through to this VM (hostpci0) and the VM restarted since? Nothing was "
                    "changed. Set rocm_check_pci = False only on a host without the card."
                )


def suite(settings: Any) -> str:
    meta = host.get_fact(LinuxDistribution).get("release_meta") or {}
    if settings.rocm_apt_suite:
        return settings.rocm_apt_suite
    codename = meta.get("VERSION_CODENAME", "")
    if meta.get("ID", "").lower() != "ubuntu" or codename not in SUPPORTED_SUITES:
        raise RuntimeError(
            f"host {host.name!r}: ROCm {settings.rocm_version} supports the R9700 on Ubuntu "
            f"24.04 (noble) and 22.04 (jammy); this host runs "
            f"{meta.get('PRETTY_NAME') or 'an unknown system'}. Install Ubuntu 24.04 on the VM "
            "(key 'guest.os'), or set rocm_apt_suite to force a suite at your own risk."
        )
    return codename


def rocm_wanted(settings: Any, kernel: str) -> list[str]:
    """Every package the task installs, in the order apt gets them."""
    kernel_packages = [name.format(kernel=kernel) for name in settings.rocm_kernel_packages]
    return [*kernel_packages, "amdgpu-dkms", *settings.rocm_packages]


def installed_rocm_version() -> str | None:
    """The ``rocm-core`` version installed (its upstream part, "7.2.1"), None when absent."""
    versions = (host.get_fact(DebPackages) or {}).get("rocm-core") or []
    if not versions:
        return None
    upstream = sorted(versions)[-1].split("-")[0]  # 7.2.1.70201-81~24.04 -> 7.2.1.70201
    return ".".join(upstream.split(".")[:3])


def driver_change_pending() -> bool:
    """This run installs or upgrades amdgpu-dkms (a new ``rocm_version``), or installs the
    running kernel's headers (DKMS then builds the driver for it): the new kernel driver loads
    only at the next boot, so nothing on the GPU can be proven before it."""
    settings = DATA.read(host)
    packages = host.get_fact(DebPackages) or {}
    kernel = host.get_fact(KernelVersion)
    kernel_packages = [name.format(kernel=kernel) for name in settings.rocm_kernel_packages]
    return (
        "amdgpu-dkms" not in packages
        or installed_rocm_version() != settings.rocm_version
        or any(name not in packages for name in kernel_packages)
    )


@deploy("ROCm", data_defaults=DATA.defaults())
def rocm(span: Span) -> bool:
    """ROCm's operations inside ``span``; True when the amdgpu kernel driver changes (the VM
    must reboot before the GPU can be proven)."""
    settings = DATA.read(host)
    gpus = amd_gpus(host.data)
    if not gpus:
        host.noop(f"ROCm: {host.name}'s data declares no AMD GPU: nothing to do")
        return False
    if settings.rocm_check_pci:
        require_declared_gpus_present(gpus)
    apt_suite = suite(settings)
    kernel = host.get_fact(KernelVersion)
    rocm_url = settings.rocm_repo_url.format(version=settings.rocm_version)
    amdgpu_url = settings.rocm_amdgpu_repo_url.format(amdgpu_version=settings.rocm_amdgpu_version)
    wanted = rocm_wanted(settings, kernel)
    packages = host.get_fact(DebPackages) or {}
    missing = [name for name in wanted if name not in packages]
    have = installed_rocm_version()
    upgrade = have is not None and have != settings.rocm_version
    change = (
        f"ROCm {have} -> {settings.rocm_version}"
        if upgrade
        else f"ROCm {settings.rocm_version} install"
        if missing
        else f"ROCm {settings.rocm_version}"
    )
    # Triggers of the span: the VM is snapshotted only when one of them plans a change.
    span.watch(
        change,
        lambda: _repository_and_packages(
            settings, apt_suite, rocm_url, amdgpu_url, wanted, upgrade
        ),
    )
    driver = driver_change_pending()
    if driver:
        logger.info(
            f"{host.name}: {change} ({', '.join(missing or wanted)}): amdgpu-dkms builds the"
            f" driver for {kernel}; it loads at boot, so the VM reboots before the proof"
        )
    # The admin user is not added: admin_user sets its groups exactly (it uses sudo for the GPU).
    for user in settings.rocm_gpu_users:
        server.user(
            name=f"{user} may use the GPU ({' and '.join(GPU_GROUPS)})",
            user=user,
            groups=list(GPU_GROUPS),
            append=True,
        )
    return driver


def _repository_and_packages(
    settings: Any, apt_suite: str, rocm_url: str, amdgpu_url: str, wanted: list[str], upgrade: bool
) -> None:
    files.directory(name="apt keyrings directory", path="/etc/apt/keyrings", mode="755")
    key = verified_keyring(
        name="AMD's ROCm signing key (fingerprint checked)",
        url=settings.rocm_key_url,
        url_key="rocm_key_url",
        fingerprint=settings.rocm_key_fingerprint,
        fingerprint_key="rocm_key_fingerprint",
        dest=KEYRING,
    )
    sources = files.template(
        name=f"AMD's ROCm {settings.rocm_version} apt sources",
        src=template_path("rocm.sources.j2"),
        dest=SOURCES,
        mode="644",
        user="root",
        group="root",
        version=settings.rocm_version,
        amdgpu_version=settings.rocm_amdgpu_version,
        rocm_url=rocm_url,
        amdgpu_url=amdgpu_url,
        suite=apt_suite,
        keyring=KEYRING,
    )
    pin = files.template(
        name="Pin AMD's repositories (priority 600)",
        src=template_path("rocm.pref.j2"),
        dest=PIN_FILE,
        mode="644",
        user="root",
        group="root",
        version=settings.rocm_version,
        origin=settings.rocm_repo_origin,
    )
    packages = host.get_fact(DebPackages) or {}
    needed = [name for name in wanted if name not in packages]
    apt.update(
        name="Refresh package lists for AMD's repositories",
        _if=lambda: bool(needed) or upgrade or any(changed(op) for op in (key, sources, pin)),
    )
    apt.packages(
        name="amdgpu-dkms, kernel headers and ROCm",
        packages=wanted,
        no_recommends=True,
    )
    if upgrade:
        # Same package names, newer versions from the new repository (pin 600 picks them).
        apt.packages(
            name=f"Upgrade ROCm to {settings.rocm_version}",
            packages=wanted,
            latest=True,
            no_recommends=True,
        )
