"""The hypervisor: Proxmox VE, its storage pools, and the GPU passed through by VFIO.

What needs the real machine (IOMMU groups, the GPU bound to vfio-pci, a Proxmox VE kernel) is
marked ``hardware``; on the lab's pve, a container with no kernel, IOMMU or PCI devices of its
own, those checks skip saying so. The rest runs against the lab and the real host alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasks.common.hardware_facts import PCI_COMMAND, PciDevice, PciDevices
from tasks.hypervisor.gpu_passthrough import (
    IOMMU_FLAGS,
    MODPROBE,
    MODULES_LOAD,
    VFIO_MODULES,
    group_problems,
    passthrough_gpus,
    softdeps,
    vfio_ids,
)
from tasks.hypervisor.proxmox_ve import DATA as PROXMOX_DATA
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "hypervisor"


def test_pool_paths_exist(host_in: InventoryHost) -> None:
    for name, pool in host_in.data["pools"].items():
        assert host_in.testinfra.file(pool["path"]).is_directory, f"pool {name}: {pool['path']}"


def test_pools_are_mounted(host_in: InventoryHost) -> None:
    # A pool that is only a directory on the root disk would let backups fill the SSD.
    for name, pool in host_in.data["pools"].items():
        result = host_in.testinfra.run(f"mountpoint -q {pool['path']}")
        assert result.rc == 0, f"pool {name}: nothing is mounted at {pool['path']}"


def _gpus(host_in: InventoryHost) -> list[dict[str, Any]]:
    gpus = passthrough_gpus(host_in.data)
    assert gpus, f"{host_in.name}: no GPU with passthrough_to in the data"
    return gpus


def _in_container(host_in: InventoryHost) -> bool:
    return host_in.testinfra.run("systemd-detect-virt --container").rc == 0


def _skip_in_a_container(host_in: InventoryHost, what: str) -> None:
    if _in_container(host_in):
        pytest.skip(f"{host_in.name} is a container (the lab): no {what} of its own")


def test_vfio_modules_load_at_boot(host_in: InventoryHost) -> None:
    _gpus(host_in)
    content = host_in.testinfra.file(MODULES_LOAD).content_string
    modules = [line.strip() for line in content.splitlines() if not line.startswith("#")]
    assert [m for m in modules if m] == list(VFIO_MODULES), f"{MODULES_LOAD}: {modules}"


def test_vfio_pci_claims_every_function_before_the_gpu_drivers(host_in: InventoryHost) -> None:
    gpus = _gpus(host_in)
    # modprobe's own reading of its configuration (what it will do, not only what a file says);
    # a host without kmod (the lab's container) has only the file to show.
    if host_in.testinfra.exists("modprobe"):
        text = host_in.testinfra.run("modprobe --showconfig").stdout
    else:
        text = host_in.testinfra.file(MODPROBE).content_string
    config = [line.strip().replace("-", "_") for line in text.splitlines()]
    options = [line for line in config if line.startswith("options vfio_pci ")]
    assert options, f"{host_in.name}: modprobe has no vfio-pci options ({MODPROBE})"
    ids = {
        word.split("=", 1)[1]
        for line in options
        for word in line.split()
        if word.startswith("ids=")
    }
    assert ids == {",".join(vfio_ids(gpus))}, f"{host_in.name}: vfio-pci ids {ids}"
    for function in (f for gpu in gpus for f in gpu["functions"]):
        assert function["id"] in ",".join(ids), f"{function['id']} not claimed by vfio-pci"
    for module in softdeps(gpus):
        wanted = f"softdep {module} pre: vfio-pci"
        assert wanted.replace("-", "_") in config, (
            f"{host_in.name}: no '{wanted}' in modprobe's configuration"
        )


def _pci(host_in: InventoryHost) -> dict[str, PciDevice]:
    result = host_in.testinfra.run(PCI_COMMAND)
    assert result.rc == 0, result.stderr
    return PciDevices().process(result.stdout.splitlines())


@pytest.mark.hardware
def test_iommu_is_on(host_in: InventoryHost) -> None:
    _skip_in_a_container(host_in, "kernel or IOMMU")
    groups = host_in.testinfra.run("ls /sys/kernel/iommu_groups").stdout.split()
    assert groups, f"{host_in.name}: no IOMMU groups: the IOMMU is off (firmware or cmdline)"
    cmdline = host_in.testinfra.file("/proc/cmdline").content_string.split()
    flags = IOMMU_FLAGS[host_in.data["cpu"]["vendor"]]
    assert all(flag in cmdline for flag in flags), f"{host_in.name}: /proc/cmdline {cmdline}"


@pytest.mark.hardware
def test_every_passthrough_function_is_bound_to_vfio_pci(host_in: InventoryHost) -> None:
    gpus = _gpus(host_in)
    _skip_in_a_container(host_in, "PCI devices")
    devices = _pci(host_in)
    for function in (f for gpu in gpus for f in gpu["functions"]):
        found = devices.get(function["address"])
        assert found, f"{host_in.name}: no PCI function at {function['address']}"
        assert found["id"] == function["id"], f"{function['address']} is {found['id']}"
        assert found["driver"] == "vfio-pci", (
            f"{host_in.name}: {function['address']} [{function['id']}] is bound to"
            f" {found['driver'] or 'no driver'}, not vfio-pci"
        )


@pytest.mark.hardware
def test_the_gpus_iommu_group_holds_only_its_functions_and_bridges(
    host_in: InventoryHost,
) -> None:
    gpus = _gpus(host_in)
    _skip_in_a_container(host_in, "PCI devices or IOMMU")
    devices = _pci(host_in)
    for gpu in gpus:
        listing, offending = group_problems(gpu, devices)
        assert listing, f"{host_in.name}: {gpu['name']} is in no IOMMU group"
        assert not offending, "\n".join(listing)


def test_rpcbind_does_not_listen_unless_the_data_keeps_it(host_in: InventoryHost) -> None:
    settings = PROXMOX_DATA.check(host_in.name, host_in.data)
    listening = host_in.testinfra.run("ss -Htln 'sport = :111'").stdout.strip()
    if settings["proxmox_rpcbind"]:
        assert listening, f"{host_in.name}: proxmox_rpcbind is true but nothing listens on 111"
    else:
        assert not listening, f"{host_in.name}: rpcbind listens on 111: {listening}"


@pytest.mark.hardware
def test_proxmox_ve_runs_the_release_of_its_debian(host_in: InventoryHost) -> None:
    settings = PROXMOX_DATA.check(host_in.name, host_in.data)
    if not settings["proxmox_ve_install"]:
        pytest.skip(f"{host_in.name}: proxmox_ve_install is false (the lab): plain Debian")
    version = host_in.testinfra.run("pveversion").stdout
    codename = host_in.testinfra.system_info.codename
    wanted = {"bookworm": "pve-manager/8.", "trixie": "pve-manager/9."}[codename]
    assert version.startswith(wanted), f"{host_in.name}: {version!r} on Debian {codename}"
    assert host_in.testinfra.service("pveproxy").is_running
    kernel = host_in.testinfra.run("uname -r").stdout.strip()
    assert kernel.endswith("-pve"), f"{host_in.name}: runs kernel {kernel}, not Proxmox's"


@pytest.mark.hardware
def test_the_guest_bridge_holds_the_host_address(host_in: InventoryHost) -> None:
    """vmbr0 (the ISO's, or guest_bridge's on plain Debian) has a port and the host's address."""
    settings = PROXMOX_DATA.check(host_in.name, host_in.data)
    if not settings["proxmox_ve_install"]:
        pytest.skip(f"{host_in.name}: proxmox_ve_install is false (the lab): no guest bridge")
    shown = json.loads(host_in.testinfra.check_output("ip -j addr show dev vmbr0"))
    held = [a["local"] for link in shown for a in link.get("addr_info", [])]
    assert host_in.data["lan_address"] in held, f"{host_in.name}: vmbr0 holds {held}"
    ports = host_in.testinfra.check_output("ls /sys/class/net/vmbr0/brif").split()
    assert ports, f"{host_in.name}: vmbr0 has no port (the uplink is not in the bridge)"


@pytest.mark.hardware
def test_sensor_chip_drivers_are_loaded_and_report(host_in: InventoryHost) -> None:
    """The drivers the deploy recorded are loaded, and the kernel lists a temperature sensor
    (the fan alerts need the board's chip driven)."""
    _skip_in_a_container(host_in, "sensor chips")
    conf = host_in.testinfra.file("/etc/modules-load.d/homelab-sensors.conf").content_string
    modules = [line for line in conf.splitlines() if line and not line.startswith("#")]
    loaded = host_in.testinfra.check_output("cut -d' ' -f1 /proc/modules").split()
    missing = [m for m in modules if m.replace("-", "_") not in loaded]
    assert not missing, f"{host_in.name}: sensor drivers not loaded: {missing}"
    temps = host_in.testinfra.run("ls /sys/class/hwmon/*/temp*_input")
    assert temps.rc == 0 and temps.stdout.strip(), f"{host_in.name}: no hwmon temperature"
