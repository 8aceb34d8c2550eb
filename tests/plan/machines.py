"""Simulated machines for plan tests: the real hosts' facts as pyinfra would gather them.

Test double. Each ``Machine`` holds what matters about a real host's state (OS release, files,
packages, users, services) and answers pyinfra's facts from it through ``FactTable``. The
figures are the seed's machines: a Proxmox VE 9 host (Debian 13, Xeon E5-2690 v4, R9700 at
0000:03:00.0), the ageis-node VM (Ubuntu 24.04 LTS) and the embedder (Debian 13, GTX 1650
Super), each freshly installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.plan.harness import FactTable


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class Machine:
    hostname: str
    os_release: dict[str, str]
    kernel: str
    files: dict[str, str] = field(default_factory=dict)
    # Symbolic links: path -> target (such as Ubuntu's /etc/resolv.conf -> resolved's stub).
    links: dict[str, str] = field(default_factory=dict)
    # File (and directory) modes other than 644 (755), such as {"/usr/local/sbin/tool": 755}.
    modes: dict[str, int] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)
    packages: dict[str, str] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    running: dict[str, bool] = field(default_factory=dict)
    enabled: dict[str, bool] = field(default_factory=dict)
    timezone: str = "Etc/UTC"
    container: str = "none"
    commands: set[str] = field(default_factory=set)
    apt_updated_seconds_ago: int | None = None
    openssh: tuple[int, int] = (10, 0)
    # What unattended-upgrades' dry run lists; None: unattended-upgrades is not installed.
    unattended_upgrades_pending: list[str] | None = None
    # The controller's address as the host sees pyinfra's SSH session (None: not over SSH).
    ssh_client: str | None = "192.168.1.2"
    # Whether the loaded nft table inet homelab is the one the last rollout loaded.
    firewall_loaded: bool = False
    # Keyring file -> fingerprints of its primary keys (KeyringFingerprints).
    keyrings: dict[str, list[str]] = field(default_factory=dict)
    # TailscaleState: None (not installed) or {"backend_state": ..., "prefs": {...}}.
    tailscale: dict[str, Any] | None = None
    # PipPackages (of any pip asked): name -> [versions].
    pip_packages: dict[str, list[str]] = field(default_factory=dict)
    # NvidiaState: loaded nvidia module version, nouveau loaded, cards nvidia-smi lists.
    nvidia: dict[str, Any] = field(
        default_factory=lambda: {"module": None, "nouveau": False, "cards": []}
    )
    # RAM in bytes as /proc/meminfo's MemTotal gives it (HostMemory).
    memory_bytes: int | None = None
    # PostgresqlClusters (pg_lsclusters) and MemoryStoreState (None: PostgreSQL not answering).
    pg_clusters: list[dict[str, Any]] = field(default_factory=list)
    memory_store: dict[str, Any] | None = None
    # PgbackrestInfo on the repository host: None (not installed) or {"status", "backups",
    # "cipher"}.
    pgbackrest_info: dict[str, Any] | None = None
    # SensorChipDrivers: what sensors-detect finds (None: lm-sensors not installed yet).
    sensor_drivers: list[str] | None = None
    # Hypervisor hardware (tasks/common/hardware_facts.py): PCI functions by address (PciDevices),
    # boot loader, running kernel command line, /proc/fb, CPU vendor, imported ZFS pools,
    # mounts, disks' signatures by device and units' `systemctl is-enabled` states.
    pci: dict[str, dict[str, Any]] = field(default_factory=dict)
    boot_loader: dict[str, Any] = field(
        default_factory=lambda: {"loader": "none", "proxmox_boot_tool": False, "efi": False}
    )
    cmdline: list[str] = field(default_factory=list)
    framebuffers: list[str] = field(default_factory=list)
    cpu_vendor: str = "intel"
    zfs: dict[str, dict[str, Any]] | None = None
    mounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    # Packages `apt-get dist-upgrade --dry-run` would upgrade (SimulateOperationWillChange).
    apt_upgradable: int = 0
    # PCI vendor:device IDs on the host's bus (PciDeviceIds, what lspci -n lists).
    pci_ids: list[str] = field(default_factory=list)
    # Models the local Ollama lists (OllamaModels); None: Ollama does not answer.
    ollama_models: list[str] | None = None
    # What OllamaDiscovery's command prints: "invocation <id>" and the discovery lines of
    # Ollama's journal since its start (empty: the unit has not run); its own parser reads it.
    ollama_discovery_output: list[str] = field(default_factory=list)
    # What RocmAgents's command prints (rocminfo's gfx agents, exit status and last lines);
    # the fresh VM has no rocminfo. And what UnitRuns's prints: ollama-model-ready's and
    # Ollama's current runs and the former's journal (empty: neither has run).
    rocminfo_output: list[str] = field(default_factory=lambda: ["#missing"])
    unit_runs_output: list[str] = field(default_factory=list)
    # What TorchInVenv's command prints: "venv" when the venv's python exists, then the torch
    # version pip installed there ("2.11.0+rocm7.2"); empty: no venv.
    torch_in_venv_output: list[str] = field(default_factory=list)
    # What ProxmoxKernels's command prints: the Proxmox kernels in /boot ("image <version>"),
    # proxmox-boot-tool's pins ("file <path> <version>"), the rollout's marker ("marker ...").
    proxmox_kernels_output: list[str] = field(default_factory=list)
    # Versions apt would install (AptPolicy's candidate), by package, as the lists hold them.
    apt_candidates: dict[str, str] = field(default_factory=dict)
    # CloudInitState: "absent" (not installed), "active" (runs at boot) or "disabled".
    cloud_init: str = "absent"
    # NetworkDevices (ip addr): interface -> {"ether", "ipv4": {"address", "mask_bits"}, ...}.
    network_devices: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _file(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        path = kwargs["path"]
        if path not in self.files:
            return None
        mode = self.modes.get(path, 644)
        return {"user": "root", "group": "root", "mode": mode, "size": len(self.files[path])}

    def _directory(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        path = kwargs["path"].rstrip("/") or "/"
        if path not in self.directories:
            return None
        return {"user": "root", "group": "root", "mode": self.modes.get(path, 755)}

    def _sha1_file(self, kwargs: Mapping[str, Any]) -> str | None:
        path = kwargs["path"]
        return _sha1(self.files[path]) if path in self.files else None

    def _sha256_file(self, kwargs: Mapping[str, Any]) -> str | None:
        import hashlib

        path = kwargs["path"]
        return hashlib.sha256(self.files[path].encode()).hexdigest() if path in self.files else None

    def _find_in_file(self, kwargs: Mapping[str, Any]) -> list[str] | None:
        import re

        path = kwargs["path"]
        if path not in self.files:
            return None
        pattern = re.compile(kwargs["pattern"])
        return [line for line in self.files[path].splitlines() if pattern.search(line)]

    def _link(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | bool | None:
        path = kwargs["path"]
        if path in self.links:
            return {"user": "root", "group": "root", "link_target": self.links[path]}
        return False if path in self.files else None

    def _home(self, kwargs: Mapping[str, Any]) -> str | None:
        user = self.users.get(kwargs["user"])
        return user["home"] if user else None

    def facts(self) -> FactTable:
        release = self.os_release
        distro = {
            "name": release["NAME"],
            "major": int(release["VERSION_ID"].split(".")[0]),
            "minor": None,
            "release_meta": release,
        }
        apt_stamp = "/var/lib/apt/periodic/update-success-stamp"
        return FactTable(
            {
                "Hostname": self.hostname,
                "Os": "Linux",
                "Kernel": self.kernel,
                "LinuxName": release["NAME"],
                "LinuxDistribution": distro,
                "Which": lambda kw: (
                    f"/usr/bin/{kw['command']}" if kw["command"] in self.commands else None
                ),
                "File": lambda kw: (
                    {
                        "user": "root",
                        "group": "root",
                        "mode": 644,
                        "size": 0,
                        "mtime": _now_minus(self.apt_updated_seconds_ago),
                    }
                    if kw["path"] == apt_stamp and self.apt_updated_seconds_ago is not None
                    else self._file(kw)
                ),
                "Directory": self._directory,
                "Link": self._link,
                "Sha1File": self._sha1_file,
                "Sha256File": self._sha256_file,
                "FileContents": lambda kw: (
                    self.files[kw["path"]].splitlines() if kw["path"] in self.files else None
                ),
                "FindInFile": self._find_in_file,
                "DebPackages": {name: [version] for name, version in self.packages.items()},
                "DebArch": "amd64",
                "Timezone": self.timezone,
                "Users": self.users,
                "Groups": self.groups,
                "Home": self._home,
                "SystemdStatus": lambda kw: {
                    f"{name}.service": state for name, state in self.running.items()
                },
                "SystemdEnabled": lambda kw: {
                    f"{name}.service": state for name, state in self.enabled.items()
                },
                "ContainerVirt": self.container,
                "AuthorizedKeys": lambda kw: [
                    line for line in self.files.get(kw["path"], "").splitlines() if line
                ],
                "TmpDir": "/tmp",
                "NetworkDevices": self.network_devices,
                "OpenSSHVersion": self.openssh,
                "UnattendedUpgradesPending": self.unattended_upgrades_pending,
                "SshSession": (
                    {"client": self.ssh_client, "port": 22} if self.ssh_client else None
                ),
                "NftTableMatches": self.firewall_loaded,
                "KeyringFingerprints": lambda kw: self.keyrings.get(kw["path"]),
                "TailscaleState": self.tailscale,
                "PipPackages": dict(self.pip_packages),
                "NvidiaState": self.nvidia,
                "HostMemory": self.memory_bytes,
                "PostgresqlClusters": self.pg_clusters,
                "MemoryStoreState": self.memory_store,
                "PgbackrestInfo": self.pgbackrest_info,
                "SensorChipDrivers": self.sensor_drivers,
                "PciDeviceIds": self.pci_ids,
                "OllamaModels": self.ollama_models,
                "OllamaDiscovery": lambda kw: _ollama_discovery(self.ollama_discovery_output),
                "TorchInVenv": lambda kw: _torch_in_venv(self.torch_in_venv_output),
                "RocmAgents": lambda kw: _processed("RocmAgents", self.rocminfo_output),
                "UnitRuns": lambda kw: _processed("UnitRuns", self.unit_runs_output),
                "ProxmoxKernels": lambda kw: _proxmox_kernels(self.proxmox_kernels_output),
                "AptPolicy": lambda kw: {
                    "installed": self.packages.get(kw["package"]),
                    "candidate": self.apt_candidates.get(kw["package"]),
                },
                "Date": _host_date(),
                "KernelVersion": self.kernel,
                "SimulateOperationWillChange": {
                    "upgraded": self.apt_upgradable,
                    "newly_installed": 0,
                    "removed": 0,
                    "not_upgraded": 0,
                },
                "PciDevices": self.pci,
                "BootLoader": self.boot_loader,
                "KernelCmdline": self.cmdline,
                "Framebuffers": self.framebuffers,
                "CpuVendor": self.cpu_vendor,
                "ZfsPoolRoots": self.zfs,
                "Mounts": self.mounts,
                "DiskSignatures": lambda kw: self.disks.get(
                    kw["device"], {"exists": False, "signatures": [], "partitions": []}
                ),
                "CloudInitState": self.cloud_init,
                "UnitStates": lambda kw: {
                    unit: self.units.get(unit, "not-found") for unit in kw["units"]
                },
            }
        )


# Ollama's discovery in the VM's journal, as OllamaDiscovery's command prints it, in the
# format of Ollama 0.20.7's slog lines (discover/types.go, discover/runner.go): the R9700 found
# through ROCm, and the CPU fallback after the probe timed out on an older kernel driver.
OLLAMA_ON_GPU = [
    "invocation 3f6c2a3e9d1b4c3f8a7e5d2c1b0a9f8e",
    'time=2026-05-02T09:14:01.904Z level=INFO source=types.go:42 msg="inference compute"'
    " id=0 filter_id=0 library=ROCm compute=gfx1201 name=ROCm0"
    ' description="AMD Radeon AI PRO R9700" libdirs=ollama,rocm driver=70152.80'
    ' pci_id=0000:01:00.0 type=discrete total="31.9 GiB" available="31.7 GiB"',
]
OLLAMA_CPU_FALLBACK = [
    "invocation 9a1e0c4b7d2f4e6a8c3b5d7f9e1a2c4b",
    "time=2026-05-02T09:14:31.512Z level=INFO source=runner.go:464"
    ' msg="failure during GPU discovery"'
    ' OLLAMA_LIBRARY_PATH="[/usr/lib/ollama /usr/lib/ollama/rocm]" extra_envs=map[]'
    ' error="failed to finish discovery before timeout"',
    "time=2026-05-02T09:14:31.512Z level=DEBUG source=runner.go:437"
    ' msg="bootstrap discovery took" duration=30.000960852s'
    ' OLLAMA_LIBRARY_PATH="[/usr/lib/ollama /usr/lib/ollama/rocm]" extra_envs=map[]',
    'time=2026-05-02T09:14:31.530Z level=INFO source=types.go:60 msg="inference compute"'
    ' id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama driver=""'
    ' pci_id="" type="" total="15.6 GiB" available="14.8 GiB"',
]


def _ollama_discovery(output: list[str]) -> Any:
    """The fact's answer from its command's output, by the fact's own ``process``."""
    from tasks.ageis_node.ollama_discovery import OllamaDiscovery

    return OllamaDiscovery().process(list(output))


# After the VM's boot with the ROCm 7 driver, as the GPU proof's facts print it
# (tasks/ageis_node/gpu_proof.py): rocminfo lists the R9700 (gfx1201); ollama-model-ready ran
# after Ollama's start and succeeded (the model partly in VRAM: offload is allowed).
ROCMINFO_R9700 = ["#exit 0", "#agent gfx1201", "*** Done ***"]
# The inbox amdgpu of Ubuntu's kernel is not ROCm 7's: rocminfo finds no GPU agent.
ROCMINFO_NO_GPU = [
    "#exit 1",
    "ROCk module version 6.8.0 is loaded",
    "hsa api call failure at: /longer_pathname_so_that_rpms_can_support_packaging_the_debug_"
    "info_for_all_os_flavors/src/rocminfo/rocminfo.cc:1306",
    "Call returned HSA_STATUS_ERROR_OUT_OF_RESOURCES: The runtime failed to allocate the"
    " necessary resources.",
]
MODEL_READY_AFTER_START = [
    "#unit ollama-model-ready.service",
    "ExecMainStartTimestampMonotonic=41862310",
    "Result=success",
    "ActiveState=active",
    "InvocationID=5c0b1e7f3a2d4e6f8a9b0c1d2e3f4a5b",
    "#unit ollama.service",
    "ExecMainStartTimestampMonotonic=38120977",
    "Result=success",
    "ActiveState=active",
    "InvocationID=3f6c2a3e9d1b4c3f8a7e5d2c1b0a9f8e",
    "#journal",
    "ollama-model-ready: llama3.1:70b-instruct-q4_K_M loaded in 71s: 39.6 GiB, 27.4 GiB (69%)"
    " of it in VRAM; kept loaded for 30m (ollama_keep_alive)",
]
# The unit's verdict when Ollama fell back to the CPU (files/ollama-model-ready, --require-gpu).
MODEL_READY_ON_CPU = [
    "#unit ollama-model-ready.service",
    "ExecMainStartTimestampMonotonic=41862310",
    "Result=exit-code",
    "ActiveState=failed",
    "InvocationID=5c0b1e7f3a2d4e6f8a9b0c1d2e3f4a5b",
    *MODEL_READY_AFTER_START[5:11],
    "ollama-model-ready: FAILED: llama3.1:70b-instruct-q4_K_M loaded on the CPU only (39.6 GiB,"
    " 0.0 GiB (0%) of it in VRAM, /api/ps size_vram 0), though the data declares an AMD GPU:"
    " Ollama found no usable GPU.",
]


def _processed(fact: str, output: list[str]) -> Any:
    """The GPU proof's fact's answer from its command's output, by the fact's own ``process``."""
    from tasks.ageis_node import gpu_proof

    return getattr(gpu_proof, fact)().process(list(output))


def _proxmox_kernels(output: list[str]) -> Any:
    """The fact's answer from its command's output, by the fact's own ``process``."""
    from tasks.hypervisor.kernel_update import ProxmoxKernels

    return ProxmoxKernels().process(list(output))


def _torch_in_venv(output: list[str]) -> Any:
    """The fact's answer from its command's output, by the fact's own ``process``."""
    from tasks.ageis_node.pytorch import TorchInVenv

    return TorchInVenv().process(list(output))


def _now_minus(seconds: int | None) -> Any:
    """A file's mtime as pyinfra's File fact gives it: naive, in UTC."""
    import datetime

    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now - datetime.timedelta(seconds=seconds or 0)


def _host_date() -> Any:
    """The host's clock as pyinfra's Date fact gives it: zone-aware."""
    import datetime

    return datetime.datetime.now(datetime.UTC).astimezone()


def _user(name: str, uid: int, home: str, groups: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "home": home,
        "shell": "/bin/bash",
        "group": name,
        "groups": groups or [],
        "uid": uid,
        "gid": uid,
        "comment": None,
        "password": None,
    }


DEBIAN_13 = {
    "PRETTY_NAME": "Debian GNU/Linux 13 (trixie)",
    "NAME": "Debian GNU/Linux",
    "VERSION_ID": "13",
    "VERSION": "13 (trixie)",
    "VERSION_CODENAME": "trixie",
    "ID": "debian",
}
UBUNTU_24_04 = {
    "PRETTY_NAME": "Ubuntu 24.04.3 LTS",
    "NAME": "Ubuntu",
    "VERSION_ID": "24.04",
    "VERSION": "24.04.3 LTS (Noble Numbat)",
    "VERSION_CODENAME": "noble",
    "ID": "ubuntu",
    "ID_LIKE": "debian",
}
DEBIAN_HOSTS = "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n"
# What the Debian installer leaves: the router the LAN's DHCP named.
DEBIAN_RESOLV_CONF = "domain home.arpa\nsearch home.arpa\nnameserver 192.168.1.1\n"
COMMON_DIRS = {"/etc", "/etc/ssh", "/etc/ssh/sshd_config.d", "/etc/sudoers.d", "/var/log"}
COMMANDS = {"hostnamectl", "timedatectl", "apt-get", "useradd", "groupadd", "usermod", "sshd"}
BASE_PACKAGES = {
    "ca-certificates": "20250419",
    "iproute2": "6.15.0-1",
    "openssh-server": "1:10.0p1-7",
    "sudo": "1.9.16p2-3",
    "systemd": "257.8-1~deb13u2",
}


def pci(
    address: str,
    pci_class: str,
    pci_id: str,
    driver: str | None,
    group: str | None,
    description: str,
    boot_vga: bool = False,
) -> dict[str, Any]:
    """One PCI function as the PciDevices fact reads it from /sys/bus/pci/devices."""
    return {
        "address": address,
        "pci_class": pci_class,
        "id": pci_id,
        "driver": driver,
        "iommu_group": group,
        "boot_vga": boot_vga,
        "description": description,
    }


# The hypervisor's PCI functions (Supermicro X10 board, Xeon E5-2690 v4, C612 chipset), with
# the IOMMU groups the kernel gives them with VT-d on. The R9700 sits behind its own PCIe
# switch (Navi 48's upstream and downstream ports), below CPU root port 00:02.0; the switch
# has no ACS, so its ports share the card's group. The console is on the BMC's ASPEED VGA.
R9700_AT = ("0000:03:00.0", "0000:03:00.1")


def xeon_pci(iommu: bool = True, gpu_driver: str | None = "amdgpu") -> dict[str, dict[str, Any]]:
    def group(number: str) -> str | None:
        return number if iommu else None

    audio_driver = "snd_hda_intel" if gpu_driver == "amdgpu" else gpu_driver
    devices = [
        pci(
            "0000:00:00.0",
            "060000",
            "8086:6f00",
            None,
            group("0"),
            "Host bridge: Intel Corporation Xeon E7 v4/Xeon E5 v4/Xeon E3 v4/Xeon D DMI2",
        ),
        pci(
            "0000:00:02.0",
            "060400",
            "8086:6f04",
            "pcieport",
            group("29"),
            "PCI bridge: Intel Corporation Xeon E7 v4/Xeon E5 v4/Xeon E3 v4/Xeon D PCI Express"
            " Root Port 2",
        ),
        pci(
            "0000:00:1c.0",
            "060400",
            "8086:8d10",
            "pcieport",
            group("34"),
            "PCI bridge: Intel Corporation C610/X99 series chipset PCI Express Root Port #1",
        ),
        pci(
            "0000:00:1c.4",
            "060400",
            "8086:8d18",
            "pcieport",
            group("35"),
            "PCI bridge: Intel Corporation C610/X99 series chipset PCI Express Root Port #5",
        ),
        pci(
            "0000:00:1f.2",
            "010601",
            "8086:8d02",
            "ahci",
            group("37"),
            "SATA controller: Intel Corporation C610/X99 series chipset 6-Port SATA Controller"
            " [AHCI mode]",
        ),
        pci(
            "0000:01:00.0",
            "060400",
            "1002:1478",
            "pcieport",
            group("30"),
            "PCI bridge: Advanced Micro Devices, Inc. [AMD/ATI] Navi 10 XL Upstream Port of"
            " PCI Express Switch (rev 24)",
        ),
        pci(
            "0000:02:00.0",
            "060400",
            "1002:1479",
            "pcieport",
            group("30"),
            "PCI bridge: Advanced Micro Devices, Inc. [AMD/ATI] Navi 10 XL Downstream Port of"
            " PCI Express Switch (rev 24)",
        ),
        pci(
            R9700_AT[0],
            "030000",
            "1002:7551",
            gpu_driver,
            group("30"),
            "VGA compatible controller: Advanced Micro Devices, Inc. [AMD/ATI] Navi 48"
            " [Radeon AI PRO R9700] (rev c0)",
        ),
        pci(
            R9700_AT[1],
            "040300",
            "1002:ab40",
            audio_driver,
            group("30"),
            "Audio device: Advanced Micro Devices, Inc. [AMD/ATI] Navi 48 HDMI/DP Audio Controller",
        ),
        pci(
            "0000:05:00.0",
            "020000",
            "8086:1533",
            "igb",
            group("36"),
            "Ethernet controller: Intel Corporation I210 Gigabit Network Connection (rev 03)",
        ),
        pci(
            "0000:07:00.0",
            "030000",
            "1a03:2000",
            "ast",
            group("38"),
            "VGA compatible controller: ASPEED Technology, Inc. ASPEED Graphics Family (rev 30)",
            boot_vga=True,
        ),
    ]
    return {device["address"]: device for device in devices}


PVE_ENTERPRISE_SOURCES = (
    "Types: deb\nURIs: https://enterprise.proxmox.com/debian/pve\nSuites: trixie\n"
    "Components: pve-enterprise\nSigned-By: /usr/share/keyrings/proxmox-archive-keyring.gpg\n"
)
CEPH_ENTERPRISE_SOURCES = (
    "Types: deb\nURIs: https://enterprise.proxmox.com/debian/ceph-squid\nSuites: trixie\n"
    "Components: enterprise\nSigned-By: /usr/share/keyrings/proxmox-archive-keyring.gpg\n"
)


def proxmox_ve_9() -> Machine:
    """The hypervisor after a Proxmox VE 9 install: root only, PVE's packages, no tuning."""
    return Machine(
        hostname="pve",
        os_release=DEBIAN_13,
        kernel="6.14.8-2-pve",
        files={
            "/etc/hosts": (
                "127.0.0.1 localhost.localdomain localhost\n192.168.1.10 pve.home.arpa pve\n"
            ),
            "/etc/chrony/chrony.conf": "pool 2.debian.pool.ntp.org iburst\n",
            # Written by the Proxmox VE installer (and its GUI's System > DNS).
            "/etc/resolv.conf": "search home.arpa\nnameserver 192.168.1.1\n",
            # The installer's enterprise repositories (they fail without a subscription).
            "/etc/apt/sources.list.d/pve-enterprise.sources": PVE_ENTERPRISE_SOURCES,
            "/etc/apt/sources.list.d/ceph.sources": CEPH_ENTERPRISE_SOURCES,
        },
        directories=COMMON_DIRS | {"/etc/chrony", "/etc/chrony/sources.d", "/var/log/journal"},
        packages={
            **BASE_PACKAGES,
            "proxmox-ve": "9.0.0",
            "pve-manager": "9.0.10",
            "chrony": "4.6.1-3",
            "curl": "8.14.1-2",
            "pciutils": "1:3.13.0-2",
            "proxmox-archive-keyring": "4.0",
            # The kernel's meta package: its version names no kernel (it depends on the series').
            "proxmox-default-kernel": "2.0.0",
            "rpcbind": "1.2.7-1",
            "zfsutils-linux": "2.3.4-pve1",
        },
        users={"root": _user("root", 0, "/root")},
        groups={"root", "sudo", "systemd-journal"},
        running={"ssh": True, "chrony": True, "pveproxy": True},
        enabled={"ssh": True, "chrony": True},
        timezone="Europe/Berlin",
        commands=COMMANDS,
        apt_updated_seconds_ago=3 * 86400,
        # Debian 13's own pgBackRest (what apt would install without PGDG).
        apt_candidates={"pgbackrest": "2.55.1-1", "proxmox-default-kernel": "2.0.0"},
        # The one Proxmox kernel in /boot: the running one; no pin.
        proxmox_kernels_output=["image 6.14.8-2-pve"],
        # Installed on ext4/LVM (UEFI): GRUB. The PVE kernel turns the Intel IOMMU on by
        # default, so the groups exist before the command line names it.
        pci=xeon_pci(),
        boot_loader={"loader": "grub", "proxmox_boot_tool": False, "efi": True},
        cmdline=[
            "BOOT_IMAGE=/boot/vmlinuz-6.14.8-2-pve",
            "root=/dev/mapper/pve-root",
            "ro",
            "quiet",
        ],
        framebuffers=["0 astdrmfb", "1 amdgpudrmfb"],
        cpu_vendor="intel",
        # The pools as the operator made them (docs/hypervisor.md): ZFS "ssd", the HDD mounted.
        zfs={"ssd": {"mountpoint": "/ssd", "mounted": True}},
        mounts={
            "/": {"device": "/dev/mapper/pve-root", "type": "ext4", "options": ["rw"]},
            "/ssd": {"device": "ssd", "type": "zfs", "options": ["rw"]},
            "/mnt/hdd": {
                "device": "/dev/sde",
                "type": "ext4",
                "options": ["rw", "relatime"],
            },
        },
        units={"rpcbind.service": "enabled", "rpcbind.socket": "enabled"},
    )


def ubuntu_24_04_vm() -> Machine:
    """ageis-node as cloud-init leaves it: the default ubuntu user, nothing else."""
    return Machine(
        hostname="ageis-node",
        os_release=UBUNTU_24_04,
        kernel="6.8.0-86-generic",
        openssh=(9, 6),
        files={
            "/etc/hosts": "127.0.0.1 localhost\n127.0.1.1 ageis-node\n",
            # systemd-resolved's upstreams: netplan's DHCP server (the router).
            "/run/systemd/resolve/resolv.conf": "nameserver 192.168.1.1\nsearch .\n",
            "/run/systemd/resolve/stub-resolv.conf": (
                "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
            ),
        },
        links={"/etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf"},
        directories=COMMON_DIRS | {"/home/ubuntu"},
        packages={**BASE_PACKAGES, "curl": "8.5.0-2ubuntu10.6"},
        users={
            "root": _user("root", 0, "/root"),
            "ubuntu": _user("ubuntu", 1000, "/home/ubuntu", ["sudo"]),
        },
        groups={"root", "sudo", "ubuntu", "systemd-journal", "render", "video"},
        # The R9700 passed through (q35 puts it behind the VM's own root port).
        pci_ids=["8086:29c0", "1b36:000c", "1002:7550", "1002:7551", "1002:ab40"],
        running={"ssh": True, "systemd-resolved": True},
        enabled={"ssh": True, "systemd-resolved": True},
        commands=COMMANDS,
        apt_updated_seconds_ago=None,
        # 24 GiB given to the VM; the kernel keeps some (MemTotal about 2 % below it, as with
        # the 16 GiB the VM had before: 16,365,432 kB).
        memory_bytes=24_622_848 * 1024,
        # Ubuntu 24.04's own pgBackRest (universe; what apt would install without PGDG).
        apt_candidates={"pgbackrest": "2.50-1build2"},
        cloud_init="active",
    )


# The deb822 sources the Debian 13 installer writes (its mirror's name replaced by an example).
DEBIAN_13_SOURCES = (
    "Types: deb\nURIs: http://mirror.example/debian/\nSuites: trixie trixie-updates\n"
    "Components: main non-free-firmware\n"
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
    "Types: deb\nURIs: http://security.example/debian-security/\nSuites: trixie-security\n"
    "Components: main non-free-firmware\n"
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
)
# The embedder's PCI bus (a desktop board): host bridge, PCIe root port, the GTX 1650 Super
# (TU116: VGA 10de:2187, HD audio 10de:1aeb; its USB-C/UCSI functions are absent on this
# board's card), SATA, USB, Ethernet.
EMBEDDER_PCI = {
    address: pci(address, pci_class, pci_id, driver, group, description)
    for address, pci_class, pci_id, driver, group, description in (
        ("0000:00:00.0", "060000", "8086:3e0f", None, "0", "Host bridge"),
        ("0000:00:01.0", "060400", "8086:1901", "pcieport", "1", "PCIe root port"),
        ("0000:00:14.0", "0c0330", "8086:a36d", "xhci_hcd", "2", "USB 3.1 xHCI"),
        ("0000:00:17.0", "010601", "8086:a352", "ahci", "3", "SATA AHCI"),
        ("0000:00:1f.0", "060100", "8086:a308", None, "4", "LPC/eSPI"),
        ("0000:01:00.0", "030000", "10de:2187", "nouveau", "1", "GeForce GTX 1650 SUPER"),
        ("0000:01:00.1", "040300", "10de:1aeb", "snd_hda_intel", "1", "TU116 HD Audio"),
        ("0000:02:00.0", "020000", "10ec:8168", "r8169", "5", "RTL8111 Ethernet"),
    )
}


def debian_13_embedder() -> Machine:
    """The embedder fresh from the Debian 13 installer (hostname still "debian").

    The installer loads nouveau for the GTX 1650 Super; no NVIDIA package is installed.
    """
    return Machine(
        hostname="debian",
        os_release=DEBIAN_13,
        kernel="6.12.48+deb13-amd64",
        pci=dict(EMBEDDER_PCI),
        nvidia={"module": None, "nouveau": True, "cards": []},
        files={
            "/etc/hosts": DEBIAN_HOSTS,
            "/etc/resolv.conf": DEBIAN_RESOLV_CONF,
            "/etc/apt/sources.list.d/debian.sources": DEBIAN_13_SOURCES,
        },
        directories=COMMON_DIRS,
        packages=dict(BASE_PACKAGES),
        users={"root": _user("root", 0, "/root")},
        groups={"root", "sudo", "systemd-journal"},
        running={"ssh": True},
        enabled={"ssh": True},
        commands=COMMANDS,
        apt_updated_seconds_ago=None,
    )


def debian_13_lxc(hostname: str) -> Machine:
    """A service guest: an LXC container from the Debian 13 template."""
    machine = debian_13_embedder()
    machine.hostname = hostname
    machine.container = "lxc"
    machine.pci = {}
    machine.nvidia = {"module": None, "nouveau": False, "cards": []}
    # Proxmox VE writes the guest's resolv.conf from its own at every guest start.
    machine.files["/etc/resolv.conf"] = (
        "# --- BEGIN PVE ---\nsearch home.arpa\nnameserver 192.168.1.1\n# --- END PVE ---\n"
    )
    return machine


def real_fleet() -> dict[str, Machine]:
    return {
        "pve": proxmox_ve_9(),
        "ageis-node": ubuntu_24_04_vm(),
        "embedder": debian_13_embedder(),
        "monitoring": debian_13_lxc("monitoring"),
        "dns": debian_13_lxc("dns"),
    }
