"""Plans of the hypervisor's own tasks (Proxmox VE, storage pools, GPU passthrough) on simulated
hosts: IOMMU layouts, boot loaders, CPU vendors, Proxmox VE 8 and 9, plain Debian 13.

The R9700 is at 0000:03:00.0 (1002:7551) and 0000:03:00.1 (1002:ab40), as in inventory.py; the
PCI functions, groups and drivers are those the kernel shows in /sys on the real board
(``tests/plan/machines.py``: ``xeon_pci``).
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

import pytest

from tasks.hypervisor.gpu_passthrough import PassthroughRefused, group_problems, preflight
from tasks.hypervisor.guest_bridge import BridgeRefused
from tasks.hypervisor.proxmox_ve import ProxmoxRefused
from tasks.hypervisor.storage_pools import PoolRefused
from tests.plan.harness import Plan
from tests.plan.machines import (
    DEBIAN_13,
    R9700_AT,
    Machine,
    debian_13_embedder,
    pci,
    real_fleet,
    xeon_pci,
)

DEPLOY = "deploys/hypervisor.py"
TASKS = ("Proxmox VE |", "Storage pools |", "GPU passthrough", "Kernel update |")
GRUB_DROPIN = "/etc/default/grub.d/homelab-iommu.cfg"
MODPROBE = "/etc/modprobe.d/homelab-vfio.conf"
MODULES = "/etc/modules-load.d/homelab-vfio.conf"
REBOOT = "( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &"
DEBIAN_12 = {
    "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
    "NAME": "Debian GNU/Linux",
    "VERSION_ID": "12",
    "VERSION": "12 (bookworm)",
    "VERSION_CODENAME": "bookworm",
    "ID": "debian",
}
TRIXIE_FINGERPRINTS = (
    "24B30F06ECC1836A4E5EFECBA7BCD1420BFE778E F4E136C67CDCE41AE6DE6FC81140AF8F639E0C39"
)
AMD_CPU = {"vendor": "amd", "model": "AMD EPYC 7302P", "cores": 16, "threads": 32}


def plan_pve(plan_of: Any, **kwargs: Any) -> Plan:
    return plan_of(DEPLOY, limit=["pve"], **kwargs)


def ours(result: Plan) -> list[tuple[str, list[str]]]:
    """The hypervisor tasks' operations that would change something: (name, commands)."""
    return [
        (op.name, op.commands)
        for op in result.for_host("pve")
        if op.name.startswith(TASKS) and op.commands
    ]


def steps(result: Plan, task: str = "GPU passthrough") -> list[str]:
    """One word per changing operation of ``task``, in order: what the host would go through."""
    found = []
    for name, commands in ours(result):
        if not name.startswith(task):
            continue
        text = "\n".join(commands)
        if REBOOT in text:
            found.append("reboot")
        elif f"upload {GRUB_DROPIN}" in text:
            found.append("grub-dropin")
        elif "upload /etc/kernel/cmdline" in text:
            found.append("kernel-cmdline")
        elif f"upload {MODULES}" in text:
            found.append("modules")
        elif f"upload {MODPROBE}" in text:
            found.append("modprobe")
        else:
            found.append(text)
    return found


def op_names(result: Plan) -> list[str]:
    return [op.name for op in result.for_host("pve")]


def refused(plan_of: Any, error: type[Exception], **kwargs: Any) -> str:
    """Plan the hypervisor and return the refusal's message (it must refuse)."""
    with pytest.raises(Exception) as caught:
        plan_pve(plan_of, **kwargs)
    original = getattr(caught.value, "exception", caught.value)
    assert isinstance(original, error), repr(original)
    return str(original)


def converge(machine: Machine) -> None:
    """The pve machine after a complete hypervisor rollout: IOMMU on, GPU on vfio-pci."""
    machine.pci = xeon_pci(gpu_driver="vfio-pci")
    machine.cmdline += ["intel_iommu=on", "iommu=pt"]
    machine.framebuffers = ["0 astdrmfb"]
    for path in ("pve-enterprise.sources", "ceph.sources"):
        full = f"/etc/apt/sources.list.d/{path}"
        machine.files[full] = "Enabled: no\n" + machine.files[full]
    machine.units = {"rpcbind.service": "masked", "rpcbind.socket": "masked"}
    machine.directories |= {
        "/etc/apt/sources.list.d",
        "/etc/default/grub.d",
        "/etc/modules-load.d",
        "/etc/modprobe.d",
    }
    machine.files.update(_rendered_files())


def _rendered_files() -> dict[str, str]:
    """The hypervisor task's files, rendered from the templates as a rollout wrote them."""
    import jinja2

    from tasks.common.templating import TEMPLATES

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True
    )
    r9700 = {
        "name": "r9700",
        "model": "AMD Radeon AI PRO R9700",
        "passthrough_to": "ageis-node",
        "functions": [
            {"address": R9700_AT[0], "id": "1002:7551", "kind": "display"},
            {"address": R9700_AT[1], "id": "1002:ab40", "kind": "audio"},
        ],
    }
    return {
        GRUB_DROPIN: env.get_template("grub-homelab-iommu.cfg.j2").render(
            flags=["intel_iommu=on", "iommu=pt"]
        ),
        MODULES: env.get_template("modules-load-homelab-vfio.conf.j2").render(
            modules=("vfio", "vfio_iommu_type1", "vfio_pci")
        ),
        MODPROBE: env.get_template("modprobe-homelab-vfio.conf.j2").render(
            gpus=[r9700],
            ids=["1002:7551", "1002:ab40"],
            softdeps=["amdgpu", "radeon", "snd_hda_intel"],
        ),
        "/etc/apt/sources.list.d/pve-install-repo.sources": env.get_template(
            "pve-install-repo.sources.j2"
        ).render(
            repo_url="http://download.proxmox.com/debian/pve",
            codename="trixie",
            keyring="/usr/share/keyrings/proxmox-archive-keyring.gpg",
        ),
    }


# --- GPU passthrough: IOMMU layouts ---


def test_gpu_behind_its_own_switch_gets_exactly_the_passthrough_steps(plan_of) -> None:
    # Fresh PVE 9 (GRUB, Intel): group 30 holds the card's switch ports and its two functions.
    result = plan_pve(plan_of)
    assert steps(result) == [
        "grub-dropin",
        "update-grub",
        "modules",
        "modprobe",
        "update-initramfs -u -k all",
        "reboot",
    ]
    dropin = result.op("pve", "IOMMU flags in").commands
    assert (
        'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} intel_iommu=on iommu=pt"'
        in "\n".join(dropin)
    )
    modprobe = "\n".join(result.op("pve", "vfio-pci takes every GPU function").commands)
    assert "options vfio-pci ids=1002:7551,1002:ab40\n" in modprobe
    for module in ("amdgpu", "radeon", "snd_hda_intel"):
        assert f"softdep {module} pre: vfio-pci\n" in modprobe
    modules = "\n".join(result.op("pve", "VFIO modules loaded at boot").commands)
    assert modules.count("\nvfio\nvfio_iommu_type1\nvfio_pci\n") == 1
    assert "\nvfio_virqfd" not in modules  # merged into vfio since kernel 6.2
    # The proof comes last, after the reboot.
    names = op_names(result)
    assert names.index(
        "GPU passthrough (IOMMU, VFIO) | Every GPU function is bound to vfio-pci"
    ) > (names.index("GPU passthrough (IOMMU, VFIO) | Reboot so vfio-pci takes the GPU"))


def test_clean_group_with_only_the_gpu_functions(plan_of, fleet) -> None:
    # A switch with ACS: the two functions are alone in group 31.
    for address in ("0000:01:00.0", "0000:02:00.0"):
        fleet["pve"].pci[address]["iommu_group"] = "40" if address.startswith("0000:01") else "41"
    for address in R9700_AT:
        fleet["pve"].pci[address]["iommu_group"] = "31"
    assert steps(plan_pve(plan_of))[-2:] == ["update-initramfs -u -k all", "reboot"]


def test_gpu_sharing_its_group_with_a_sata_controller_stops_before_any_change(
    plan_of, fleet
) -> None:
    machine = fleet["pve"]
    machine.pci["0000:04:00.0"] = pci(
        "0000:04:00.0",
        "010601",
        "1b21:0612",
        "ahci",
        "30",
        "SATA controller: ASMedia Technology Inc. ASM1062 Serial ATA Controller (rev 02)",
    )
    message = refused(plan_of, PassthroughRefused)
    assert "GPU passthrough refused; nothing was changed" in message
    assert "holds 0000:04:00.0" in message
    # The group's full listing, every member with its class, ID and driver, and what to do.
    assert "IOMMU group 30:" in message
    for address in ("0000:01:00.0", "0000:02:00.0", *R9700_AT, "0000:04:00.0"):
        assert f"  {address}  class " in message
    assert "[1b21:0612]  driver ahci" in message and "NOT ALLOWED" in message
    assert "PCI bridge / switch port (allowed)" in message
    assert "another slot" in message and "ACS" in message
    assert "pcie_acs_override" in message


def test_preflight_lists_only_the_offending_device_as_not_allowed() -> None:
    devices = xeon_pci()
    devices["0000:04:00.0"] = pci("0000:04:00.0", "0c0330", "1912:0015", "xhci_hcd", "30", "USB")
    gpu = {
        "name": "r9700",
        "functions": [
            {"address": R9700_AT[0], "id": "1002:7551", "kind": "display"},
            {"address": R9700_AT[1], "id": "1002:ab40", "kind": "audio"},
        ],
    }
    listing, offending = group_problems(gpu, devices)
    assert offending == ["0000:04:00.0"]
    assert listing[0] == "IOMMU group 30:" and len(listing) == 6
    assert preflight("pve", [gpu], xeon_pci(), [], "intel", "intel", check_groups=True) == []


def test_console_on_the_gpu_stops_the_run(plan_of, fleet) -> None:
    machine = fleet["pve"]
    machine.pci["0000:07:00.0"]["boot_vga"] = False
    machine.pci[R9700_AT[0]]["boot_vga"] = True
    machine.framebuffers = ["0 EFI VGA"]
    message = refused(plan_of, PassthroughRefused)
    assert "boot display is 0000:03:00.0 (boot_vga=1" in message and "EFI VGA" in message
    assert "primary display" in message


def test_a_function_of_the_card_missing_from_the_data_stops_the_run(plan_of, fleet) -> None:
    fleet["pve"].pci["0000:03:00.2"] = pci(
        "0000:03:00.2", "0c0330", "1002:7552", "xhci_hcd", "30", "USB controller"
    )
    message = refused(plan_of, PassthroughRefused)
    assert "function 0000:03:00.2 [1002:7552] of the card is not in its functions" in message


def test_a_wrong_address_or_id_stops_the_run(plan_of, fleet) -> None:
    fleet["pve"].pci[R9700_AT[1]]["id"] = "1002:ab30"
    message = refused(plan_of, PassthroughRefused)
    assert "0000:03:00.1 is [1002:ab30]" in message and "not the declared 1002:ab40" in message


def test_iommu_off_sets_the_command_line_and_checks_the_groups_after_the_reboot(
    plan_of, fleet
) -> None:
    fleet["pve"].pci = xeon_pci(iommu=False)
    result = plan_pve(plan_of)
    assert steps(result) == [
        "grub-dropin",
        "update-grub",
        "reboot",
        "modules",
        "modprobe",
        "update-initramfs -u -k all",
        "reboot",
    ]
    names = [n for n in op_names(result) if n.startswith("GPU passthrough")]
    check = names.index("GPU passthrough (IOMMU, VFIO) | IOMMU groups after the reboot are safe")
    assert names.index(
        "GPU passthrough (IOMMU, VFIO) | Reboot into the IOMMU kernel command line"
    ) < (check)
    assert check < names.index(
        "GPU passthrough (IOMMU, VFIO) | VFIO modules loaded at boot (/etc/modules-load.d/"
        "homelab-vfio.conf)"
    )


def test_iommu_flags_on_but_no_groups_means_the_firmware_has_it_off(plan_of, fleet) -> None:
    fleet["pve"].pci = xeon_pci(iommu=False)
    fleet["pve"].cmdline += ["intel_iommu=on", "iommu=pt"]
    message = refused(plan_of, PassthroughRefused)
    assert "made no IOMMU groups" in message and "VT-d" in message


# --- boot loaders and CPU vendors ---


def test_systemd_boot_gets_etc_kernel_cmdline_and_proxmox_boot_tool(plan_of, fleet) -> None:
    machine = fleet["pve"]
    machine.boot_loader = {"loader": "systemd-boot", "proxmox_boot_tool": True, "efi": True}
    machine.files["/etc/kernel/cmdline"] = "root=ZFS=rpool/ROOT/pve-1 boot=zfs\n"
    result = plan_pve(plan_of)
    assert steps(result) == [
        "kernel-cmdline",
        "proxmox-boot-tool refresh",
        "modules",
        "modprobe",
        "update-initramfs -u -k all",
        "reboot",
    ]
    upload = "\n".join(result.op("pve", "IOMMU flags in /etc/kernel/cmdline").commands)
    assert (
        "upload /etc/kernel/cmdline\nroot=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on iommu=pt\n"
        in upload
    )
    assert "update-grub" not in "\n".join(result.commands("pve"))


def test_grub_kept_by_proxmox_boot_tool_is_refreshed_through_it(plan_of, fleet) -> None:
    fleet["pve"].boot_loader = {"loader": "grub", "proxmox_boot_tool": True, "efi": False}
    assert steps(plan_pve(plan_of))[:2] == ["grub-dropin", "proxmox-boot-tool refresh"]


def test_amd_cpu_gets_iommu_pt_only(plan_of, fleet) -> None:
    fleet["pve"].cpu_vendor = "amd"
    result = plan_pve(plan_of, override_data={"cpu": AMD_CPU})
    dropin = "\n".join(result.op("pve", "IOMMU flags in").commands)
    assert '"${GRUB_CMDLINE_LINUX_DEFAULT} iommu=pt"' in dropin and "intel_iommu" not in dropin


def test_cpu_vendor_in_the_data_must_be_the_hosts(plan_of, fleet) -> None:
    fleet["pve"].cpu_vendor = "amd"
    message = refused(plan_of, PassthroughRefused)
    assert "key 'cpu.vendor' is 'intel' but the host's CPU is amd" in message


# --- Proxmox VE 8 / 9, plain Debian ---


def test_pve_9_is_accepted_and_its_enterprise_repositories_disabled(plan_of) -> None:
    result = plan_pve(plan_of)
    proxmox = dict(ours(result))
    source = "\n".join(proxmox["Proxmox VE | Proxmox VE no-subscription repository (deb822)"])
    assert (
        "Types: deb\nURIs: http://download.proxmox.com/debian/pve\nSuites: trixie\n"
        "Components: pve-no-subscription\n"
        "Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg\n"
    ) in source
    for path in ("pve-enterprise.sources", "ceph.sources"):
        name = (
            f"Proxmox VE | Disable the enterprise repository in /etc/apt/sources.list.d/{path}"
            " (Enabled: no)"
        )
        assert proxmox[name] == [f"sed -i '/^Types:/i Enabled: no' /etc/apt/sources.list.d/{path}"]
    # The archive keyring belongs to Proxmox's package there: not downloaded again.
    assert not any("install-apt-key" in c and "proxmox" in c for c in result.commands("pve"))
    assert not any("proxmox-ve" in c and "apt-get" in c for c in result.commands("pve"))
    assert proxmox[
        "Proxmox VE | Mask rpcbind (no NFS storage: nothing may listen on port 111)"
    ] == ["systemctl mask --now rpcbind.service rpcbind.socket"]


def make_proxmox_ve_8(machine: Machine) -> None:
    """Turn the Proxmox VE 9 facts into those of Proxmox VE 8 as its ISO installs it."""
    machine.os_release = DEBIAN_12
    machine.kernel = "6.8.12-11-pve"
    machine.packages["pve-manager"] = "8.4.1"
    del machine.packages["proxmox-archive-keyring"]
    for path in ("pve-enterprise.sources", "ceph.sources"):
        del machine.files[f"/etc/apt/sources.list.d/{path}"]
    machine.files["/etc/apt/sources.list.d/pve-enterprise.list"] = (
        "deb https://enterprise.proxmox.com/debian/pve bookworm pve-enterprise\n"
    )


def test_pve_8_on_bookworm(plan_of, fleet) -> None:
    make_proxmox_ve_8(fleet["pve"])
    result = plan_pve(plan_of)
    key = result.op("pve", "Proxmox's bookworm archive keyring").commands
    assert key == [
        "/usr/local/sbin/install-apt-key pve 'proxmox (release key URL)'"
        " https://enterprise.proxmox.com/debian/proxmox-release-bookworm.gpg"
        " 'proxmox (release key fingerprints)' F4E136C67CDCE41AE6DE6FC81140AF8F639E0C39"
        " /usr/share/keyrings/proxmox-release-bookworm.gpg"
    ]
    source = "\n".join(result.op("pve", "no-subscription repository").commands)
    assert "Suites: bookworm\n" in source
    assert "Signed-By: /usr/share/keyrings/proxmox-release-bookworm.gpg" in source
    assert result.op("pve", "pve-enterprise.list (commented out)").commands == [
        r"sed -i 's|^\(deb .*enterprise\.proxmox\.com.*\)$|# \1|'"
        " /etc/apt/sources.list.d/pve-enterprise.list"
    ]


def test_pve_8_on_trixie_is_refused(plan_of, fleet) -> None:
    fleet["pve"].packages["pve-manager"] = "8.4.1"
    message = refused(plan_of, ProxmoxRefused)
    assert "pve-manager 8.4.1 on Debian trixie; expected Proxmox VE 9" in message


def plain_debian_13() -> Machine:
    machine = debian_13_embedder()
    machine.hostname = "pve"
    machine.packages.update(
        {"linux-image-amd64": "6.12.48-1", "linux-image-6.12.48+deb13-amd64": "6.12.48-1"}
    )
    machine.pci = xeon_pci()
    machine.boot_loader = {"loader": "grub", "proxmox_boot_tool": False, "efi": True}
    machine.cmdline = ["BOOT_IMAGE=/boot/vmlinuz-6.12.48+deb13-amd64", "root=UUID=x", "ro"]
    machine.zfs = None
    machine.mounts = {
        "/mnt/hdd": {"device": "/dev/sde", "type": "ext4", "options": ["rw"]},
    }
    # As Debian's installer leaves a static address: ifupdown, no bridge.
    machine.files["/etc/network/interfaces"] = DEBIAN_INSTALLER_INTERFACES
    machine.network_devices = {
        "lo": {"ipv4": {"address": "127.0.0.1", "mask_bits": 8}},
        "enp5s0": {"ether": "a8:a1:59:00:00:10", "state": "UP", "ipv4": DEBIAN_INSTALLER_IPV4},
    }
    return machine


DEBIAN_INSTALLER_IPV4 = {"address": "192.168.1.10", "mask_bits": 24, "netmask": "255.255.255.0"}
DEBIAN_INSTALLER_INTERFACES = """\
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug enp5s0
iface enp5s0 inet static
\taddress 192.168.1.10/24
\tgateway 192.168.1.1
\t# dns-* options are implemented by the resolvconf package, if installed
\tdns-nameservers 192.168.1.1
\tdns-search home.arpa
"""


def test_plain_debian_13_gets_proxmox_ve_installed_step_by_step(plan_of, fleet) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    fleet["pve"].apt_upgradable = 14
    result = plan_pve(plan_of)
    proxmox = [
        (name.removeprefix("Proxmox VE | "), cmds)
        for name, cmds in ours(result)
        if name.startswith("Proxmox VE |")
    ]
    names = [name for name, _ in proxmox]
    assert names == [
        "Install the verified APT key installer",
        "Proxmox's trixie archive keyring (fingerprints checked)",
        "Proxmox VE no-subscription repository (deb822)",
        "Refresh package lists for Proxmox's repository",
        "Full upgrade before the Proxmox kernel (as the guide says)",
        "Proxmox VE kernel (proxmox-default-kernel)",
        "Reboot into the Proxmox VE kernel",
        "Preseed postfix (Local only) for proxmox-ve",
        "Load the postfix preseed",
        "Proxmox VE (proxmox-ve postfix open-iscsi chrony)",
        "Remove Debian's kernel (Proxmox VE brings its own)",
        "Update GRUB after removing Debian's kernel",
        # proxmox-ve brings rpcbind (nfs-common): masked in the same run, not the next one.
        "Mask rpcbind (no NFS storage: nothing may listen on port 111)",
    ]
    commands = dict(proxmox)
    assert commands["Proxmox's trixie archive keyring (fingerprints checked)"][0].endswith(
        "https://enterprise.proxmox.com/debian/proxmox-archive-keyring-trixie.gpg"
        f" 'proxmox (release key fingerprints)' '{TRIXIE_FINGERPRINTS}'"
        " /usr/share/keyrings/proxmox-archive-keyring.gpg"
    )
    assert any(
        "apt-get -y" in c and "install proxmox-default-kernel" in c
        for c in commands["Proxmox VE kernel (proxmox-default-kernel)"]
    )
    assert any(
        "install proxmox-ve postfix open-iscsi chrony" in c
        for c in commands["Proxmox VE (proxmox-ve postfix open-iscsi chrony)"]
    )
    removed = " ".join(commands["Remove Debian's kernel (Proxmox VE brings its own)"])
    assert "remove linux-image-6.12.48+deb13-amd64 linux-image-amd64" in removed


def bridge_ops(result: Plan) -> list[str]:
    return [op.name for op in result.changing("pve") if op.name.startswith("Guest bridge |")]


def test_plain_debian_gets_the_guest_bridge_before_the_reboot_that_brings_it_up(
    plan_of, fleet
) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    result = plan_pve(plan_of)
    names = [op.name for op in result.changing("pve")]
    bridge = names.index(
        "Guest bridge | Guest bridge vmbr0 over enp5s0 (/etc/network/interfaces)"
        " (checked, installed)"
    )
    assert names.index("Guest bridge | bridge-utils (ifupdown builds the bridge at boot)") < bridge
    assert bridge < names.index("Proxmox VE | Reboot into the Proxmox VE kernel"), names
    interfaces = result.upload("pve", "/etc/homelab/staged/etc_network_interfaces")
    assert "iface enp5s0 inet manual\n" in interfaces
    assert (
        "auto vmbr0\niface vmbr0 inet static\n\taddress 192.168.1.10/24\n"
        "\tgateway 192.168.1.1\n\thwaddress a8:a1:59:00:00:10\n\tbridge-ports enp5s0\n"
    ) in interfaces
    assert "allow-hotplug enp5s0" not in interfaces, "the uplink holds no address of its own"
    check = " ".join(result.op("pve", names[bridge]).commands)
    assert "ifquery --interfaces=" in check
    # No live change: nothing brings the bridge up or restarts networking in this run.
    everything = " ".join(c for op in result.for_host("pve") for c in op.commands)
    assert "ifup -" not in everything and "ifreload" not in everything
    assert "restart networking" not in everything


def test_the_bridge_keeps_the_installers_gateway_and_dhcp(plan_of, fleet) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    path = "/etc/network/interfaces"
    fleet["pve"].files[path] = fleet["pve"].files[path].replace("192.168.1.1\n", "192.168.1.254\n")
    staged = "/etc/homelab/staged/etc_network_interfaces"
    assert "\tgateway 192.168.1.254\n" in plan_pve(plan_of).upload("pve", staged)
    fleet["pve"].files[path] = "auto lo\niface lo inet loopback\nallow-hotplug enp5s0\n"
    fleet["pve"].files[path] += "iface enp5s0 inet dhcp\n"
    interfaces = plan_pve(plan_of).upload("pve", staged)
    assert "iface vmbr0 inet dhcp\n\thwaddress a8:a1:59:00:00:10\n" in interfaces
    assert "\taddress " not in interfaces and "gateway" not in interfaces


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("iface enp5s0 inet static", "iface other0 inet static", "has no stanza for enp5s0"),
        (
            "\tdns-search home.arpa",
            "\tdns-search home.arpa\nauto bond0\niface bond0 inet manual",
            "also configures bond0",
        ),
        ("\tgateway 192.168.1.1", "\tgateway 192.168.1.1\n\tbond-slaves eno1", "cannot be a port"),
    ],
    ids=["another tool configures the NIC", "other interfaces", "not a plain port"],
)
def test_a_network_the_bridge_cannot_replace_safely_stops_before_anything(
    plan_of, fleet, old: str, new: str, expected: str
) -> None:
    fleet["pve"] = plain_debian_13()
    path = "/etc/network/interfaces"
    assert old in fleet["pve"].files[path]
    fleet["pve"].files[path] = fleet["pve"].files[path].replace(old, new)
    message = refused(plan_of, BridgeRefused)
    assert expected in message and "Nothing was changed" in message, message


def test_a_host_already_on_a_proxmox_kernel_is_rebooted_for_its_bridge(plan_of, fleet) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    fleet["pve"].kernel = "6.14.11-4-pve"
    names = [op.name for op in plan_pve(plan_of).for_host("pve")]
    bridge = names.index(
        "Guest bridge | Guest bridge vmbr0 over enp5s0 (/etc/network/interfaces)"
        " (checked, installed)"
    )
    reboot = names.index(
        "Guest bridge | Reboot to bring up vmbr0 (the Proxmox kernel already runs)"
    )
    assert bridge < reboot


def test_the_guest_bridge_is_left_alone_where_it_exists_or_proxmox_ve_runs(plan_of, fleet) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    fleet["pve"].network_devices["vmbr0"] = {"ipv4": DEBIAN_INSTALLER_IPV4}
    fleet["pve"].network_devices["enp5s0"].pop("ipv4")
    assert not bridge_ops(plan_pve(plan_of)), "the bridge exists"
    fleet["pve"].network_devices.pop("vmbr0")
    plain = plan_pve(plan_of, override_data={"proxmox_ve_install": False})
    assert not bridge_ops(plain), "a host that stays plain Debian (the lab)"
    fleet["pve"] = real_fleet()["pve"]
    assert fleet["pve"].network_devices == {}
    assert not bridge_ops(plan_pve(plan_of)), "Proxmox VE runs: its network is the user's"


def test_a_lan_address_no_interface_holds_stops_before_the_bridge_is_written(
    plan_of, fleet
) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].network_devices["enp5s0"]["ipv4"] = {"address": "192.168.1.99", "mask_bits": 24}
    message = refused(plan_of, BridgeRefused)
    assert "'pve'" in message and "'192.168.1.10'" in message
    assert "enp5s0 192.168.1.99" in message


def test_plain_debian_stays_plain_with_the_lab_override(plan_of, fleet) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    result = plan_pve(plan_of, override_data={"proxmox_ve_install": False})
    assert [name for name, _ in ours(result) if name.startswith("Proxmox VE |")] == []


def test_a_release_proxmox_does_not_run_on_is_refused(plan_of, fleet) -> None:
    fleet["pve"].os_release = {**DEBIAN_13, "VERSION_CODENAME": "forky", "VERSION_ID": "14"}
    assert "runs on Debian 12 (bookworm) or 13 (trixie)" in refused(plan_of, ProxmoxRefused)


# --- a converged host ---


def test_a_converged_hypervisor_plans_zero_changes(plan_of, fleet) -> None:
    converge(fleet["pve"])
    result = plan_pve(plan_of)
    assert ours(result) == []
    names = op_names(result)
    assert not any("Reboot" in name for name in names)
    assert not any("update-initramfs" in c for c in result.commands("pve"))


# --- kernel updates: the running kernel stays the fallback until the new one is proven ---

RUNNING = "6.14.8-2-pve"
KERNEL_MARKER = "/var/lib/homelab/kernel-update"
KERNEL_UPDATE = {"proxmox_kernel_update": True}


def kernel_ops(result: Plan) -> list[tuple[str, list[str]]]:
    """The kernel update's operations, each with its commands (the proof has none at plan
    time: it reads the host's facts when it runs, after the reboot)."""
    return [(op.name, op.commands) for op in result.for_host("pve") if "Kernel update |" in op.name]


def with_newer_kernel_available(machine: Machine) -> Machine:
    """Converged, and the repository's proxmox-default-kernel is newer than the installed."""
    converge(machine)
    machine.apt_candidates["proxmox-default-kernel"] = "2.0.1"
    return machine


def test_no_kernel_change_plans_nothing(plan_of, fleet) -> None:
    converge(fleet["pve"])
    result = plan_pve(plan_of, override_data=KERNEL_UPDATE)
    assert kernel_ops(result) == []
    assert not any("Reboot" in name for name in op_names(result))


def test_a_kernel_upgrade_pins_the_running_kernel_boots_the_new_once_proves_then_unpins(
    plan_of, fleet
) -> None:
    with_newer_kernel_available(fleet["pve"])
    result = plan_pve(plan_of, override_data=KERNEL_UPDATE)
    ops = kernel_ops(result)
    assert [name.split(" | ", 1)[1] for name, _ in ops] == [
        f"Keep {RUNNING} the boot default while a new kernel is proven (kernel pin)",
        "Upgrade the Proxmox kernel (proxmox-default-kernel 2.0.0 -> 2.0.1)",
        "Boot the newest kernel once (kernel pin --next-boot); the default stays",
        f"Reboot into the new kernel, once ({RUNNING} stays the default)",
        "Proof: the new kernel runs, IOMMU groups are there, the GPU is bound to vfio-pci",
        "Make the new kernel the boot default (kernel unpin: the newest, proven kernel)",
    ]
    pin, upgrade, next_boot, reboot, proof, unpin = (commands for _, commands in ops)
    # GRUB on the root file system: the pin runs update-grub itself, no refresh.
    assert pin == [
        f"mkdir -p /var/lib/homelab && echo fallback {RUNNING} > {KERNEL_MARKER}",
        f"proxmox-boot-tool kernel pin {RUNNING}",
    ]
    assert upgrade[0].endswith(
        ' install -y -o Dpkg::Options::="--force-confdef" -o Dpkg::Options::="--force-confold"'
        " proxmox-default-kernel"
    )
    (command,) = next_boot
    assert command.startswith(
        "new=$(ls /boot/vmlinuz-*-pve | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n 1);"
        f' if [ -z "$new" ] || [ "$new" = {RUNNING} ] || [ "$(printf \'%s\\n\' {RUNNING}'
        ' "$new" | sort -V | tail -n 1)" != "$new" ]; then echo "host \'pve\': no Proxmox'
        f' kernel newer than {RUNNING} in /boot" >&2; exit 1; fi;'
    )
    assert command.endswith(
        f'proxmox-boot-tool kernel pin "$new" --next-boot && echo "trial $new" >> {KERNEL_MARKER}'
    )
    assert REBOOT in reboot
    assert proof == []  # decided at run time, with the facts after the reboot
    assert unpin == ["proxmox-boot-tool kernel unpin", f"rm -f {KERNEL_MARKER}"]
    # After the VFIO setup (its proof), before the guests' API tasks.
    names = op_names(result)
    assert names.index(next(n for n in names if "Every GPU function is bound to vfio-pci" in n)) < (
        names.index(ops[0][0])
    )


def test_the_next_boot_step_picks_the_newest_kernel_in_boot_or_fails(
    plan_of, fleet, tmp_path
) -> None:
    # The planned command in a real shell, on a stand-in /boot and a proxmox-boot-tool that
    # echoes (test doubles): the newest by version, not by name; none newer is a failure.
    with_newer_kernel_available(fleet["pve"])
    ops = kernel_ops(plan_pve(plan_of, override_data=KERNEL_UPDATE))
    (command,) = next(commands for name, commands in ops if "--next-boot" in name)
    boot, marker = tmp_path / "boot", tmp_path / "marker"
    boot.mkdir()
    for version in (RUNNING, "6.14.11-1-pve", "6.8.12-4-pve"):
        (boot / f"vmlinuz-{version}").write_text("")
    stand_in = (
        command.replace("/boot/", f"{boot}/")
        .replace("proxmox-boot-tool", "echo proxmox-boot-tool")
        .replace(KERNEL_MARKER, str(marker))
    )

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", stand_in], capture_output=True, text=True, check=False)

    done = run()
    assert done.stdout == "proxmox-boot-tool kernel pin 6.14.11-1-pve --next-boot\n", done
    assert marker.read_text() == "trial 6.14.11-1-pve\n"
    (boot / "vmlinuz-6.14.11-1-pve").unlink()
    refused = run()
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == f"host 'pve': no Proxmox kernel newer than {RUNNING} in /boot\n"


def test_an_installed_newer_kernel_is_booted_the_same_way_without_an_upgrade(
    plan_of, fleet
) -> None:
    machine = fleet["pve"]
    converge(machine)
    machine.proxmox_kernels_output = [f"image {RUNNING}", "image 6.14.11-1-pve"]
    ops = kernel_ops(plan_pve(plan_of, override_data=KERNEL_UPDATE))
    names = [name for name, _ in ops]
    assert not any("Upgrade the Proxmox kernel" in name for name in names)
    assert [name.split(" | ", 1)[1].split(" ")[0] for name in names] == [
        "Keep", "Boot", "Reboot", "Proof:", "Make",
    ]  # fmt: skip


def test_where_proxmox_boot_tool_keeps_the_esps_each_pin_is_refreshed(plan_of, fleet) -> None:
    machine = with_newer_kernel_available(fleet["pve"])
    machine.boot_loader = {"loader": "systemd-boot", "proxmox_boot_tool": True, "efi": True}
    machine.files["/etc/kernel/cmdline"] = (
        "root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on iommu=pt\n"
    )
    ops = dict(kernel_ops(plan_pve(plan_of, override_data=KERNEL_UPDATE)))
    pin = next(c for n, c in ops.items() if "(kernel pin)" in n)
    assert pin[-2:] == [f"proxmox-boot-tool kernel pin {RUNNING}", "proxmox-boot-tool refresh"]
    (next_boot,) = next(c for n, c in ops.items() if "--next-boot" in n)
    assert "--next-boot && proxmox-boot-tool refresh && echo" in next_boot
    unpin = next(c for n, c in ops.items() if "kernel unpin" in n)
    assert unpin == [
        "proxmox-boot-tool kernel unpin", "proxmox-boot-tool refresh", f"rm -f {KERNEL_MARKER}",
    ]  # fmt: skip


def test_without_the_key_a_rollout_boots_no_kernel_and_says_one_is_waiting(
    plan_of, fleet, caplog
) -> None:
    machine = with_newer_kernel_available(fleet["pve"])
    machine.proxmox_kernels_output = [f"image {RUNNING}", "image 6.14.11-1-pve"]
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        result = plan_pve(plan_of)
    assert kernel_ops(result) == []
    said = " ".join(record.getMessage() for record in caplog.records)
    assert f"pve: kernel 6.14.11-1-pve is installed, {RUNNING} runs" in said
    assert "proxmox_kernel_update = True lets a rollout boot it" in said


def test_a_kernel_on_trial_that_runs_is_proven_and_unpinned_without_a_reboot(
    plan_of, fleet
) -> None:
    # The last rollout's proof failed (or it stopped after the reboot): the new kernel runs,
    # the old one is still pinned.
    machine = fleet["pve"]
    converge(machine)
    machine.kernel = "6.14.11-1-pve"
    machine.proxmox_kernels_output = [
        f"image {RUNNING}", "image 6.14.11-1-pve", f"file /etc/kernel/proxmox-boot-pin {RUNNING}",
        f"marker fallback {RUNNING}", "marker trial 6.14.11-1-pve",
    ]  # fmt: skip
    ops = kernel_ops(plan_pve(plan_of, override_data=KERNEL_UPDATE))
    assert [name.split(" | ", 1)[1] for name, _ in ops] == [
        "Proof: 6.14.11-1-pve runs, IOMMU groups are there, the GPU is bound to vfio-pci",
        "Make 6.14.11-1-pve the boot default (kernel unpin: the newest, proven kernel)",
    ]


@pytest.mark.parametrize(
    "pins, says",
    [
        # The kernel on trial did not pass, and the host runs the old one again.
        (
            [f"file /etc/kernel/proxmox-boot-pin {RUNNING}", f"marker fallback {RUNNING}",
             "marker trial 6.14.11-1-pve"],
            "kernel 6.14.11-1-pve was booted once by an earlier rollout and 6.14.8-2-pve runs"
            " now: 6.14.11-1-pve failed its IOMMU/VFIO proof or did not come up, and"
            f" {RUNNING} stays the pinned default. The rollout does not try 6.14.11-1-pve"
            f" again by itself: fix the cause, then `rm {KERNEL_MARKER}`",
        ),
        # An operator's pin.
        (
            [f"file /etc/kernel/proxmox-boot-pin {RUNNING}"],
            f"a kernel is pinned by hand (/etc/kernel/proxmox-boot-pin: {RUNNING},"
            " /etc/kernel/next-boot-pin: None): the rollout updates no kernel while it is",
        ),
    ],
)  # fmt: skip
def test_a_failed_trial_or_a_pin_by_hand_leaves_the_kernels_alone(
    plan_of, fleet, caplog, pins: list[str], says: str
) -> None:
    machine = with_newer_kernel_available(fleet["pve"])
    machine.proxmox_kernels_output = [f"image {RUNNING}", "image 6.14.11-1-pve", *pins]
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        result = plan_pve(plan_of, override_data=KERNEL_UPDATE)
    assert kernel_ops(result) == []
    assert says in " ".join(record.getMessage() for record in caplog.records)


# --- storage pools ---


SSD_DISKS = (
    "/dev/disk/by-id/ata-TEAM_T253X2001T_EXAMPLE1",
    "/dev/disk/by-id/ata-TEAM_T253X2001T_EXAMPLE2",
    "/dev/disk/by-id/ata-Samsung_SSD_870_EVO_1TB_EXAMPLE",
    "/dev/disk/by-id/nvme-Samsung_SSD_960_EVO_500GB_EXAMPLE",
)
HDD = "/dev/disk/by-id/ata-WDC_WD220EDGZ_EXAMPLE"
BLANK = {"exists": True, "signatures": [], "partitions": []}


def pools_to_create() -> dict[str, Any]:
    """The real inventory's pools and disks, opted in for creation (override data reaches
    every host, so each carries them; only the hypervisor acts on them)."""
    disks = [
        {"device": device, "model": "disk", "size": "1T", "kind": "ssd", "pool": "ssd"}
        for device in SSD_DISKS
    ]
    disks.append({"device": HDD, "model": "WD", "size": "22T", "kind": "hdd", "pool": "hdd"})
    return {"disks": disks, "pools": _pools()}


def _pools() -> dict[str, Any]:
    return {
        "ssd": {
            "type": "zfs",
            "zfs_name": "ssd",
            "path": "/ssd",
            "layout": "single",
            "create": True,
            "content": ["images", "rootdir"],
        },
        "hdd": {
            "type": "dir",
            "path": "/mnt/hdd",
            "create": True,
            # As in inventory.py: the guests' cloud image and template live here too.
            "content": ["backup", "iso", "vztmpl", "snippets", "import"],
        },
    }


def test_a_missing_pool_without_create_stops_the_run(plan_of, fleet) -> None:
    fleet["pve"].zfs = {}
    message = refused(plan_of, PoolRefused)
    assert "ZFS pool 'ssd' is not imported" in message and "create" in message


def test_pools_are_created_on_blank_disks_when_opted_in(plan_of, fleet) -> None:
    machine = fleet["pve"]
    machine.zfs = {}
    del machine.mounts["/mnt/hdd"]
    machine.disks = {device: BLANK for device in (*SSD_DISKS, HDD)}
    # The real inventory's pools, opted in for creation (every host shares override data).
    result = plan_pve(plan_of, override_data=pools_to_create())
    storage = dict(ours(result))
    assert storage["Storage pools | Pool ssd: create ZFS pool ssd (single)"] == [
        "zpool create -o ashift=12 -O compression=lz4 -O atime=off -O xattr=sa"
        " -O acltype=posixacl -m /ssd ssd " + " ".join(SSD_DISKS)
    ]
    assert storage[f"Storage pools | Pool hdd: ext4 on {HDD}"] == [f"mkfs.ext4 -q -L hdd {HDD}"]
    fstab = storage[f"Storage pools | Pool hdd: {HDD} on /mnt/hdd in /etc/fstab"]
    assert any(
        f"{HDD} /mnt/hdd auto defaults,nofail,x-systemd.device-timeout=30s 0 2" in c for c in fstab
    )
    assert storage["Storage pools | Pool hdd: mount /mnt/hdd"][-1] == "mount /mnt/hdd"


@pytest.mark.parametrize(
    "state, named",
    [
        ({"exists": True, "signatures": ["gpt", "PMBR"], "partitions": []}, "gpt"),
        ({"exists": True, "signatures": ["ext4"], "partitions": []}, "ext4"),
        ({"exists": True, "signatures": ["zfs_member"], "partitions": []}, "zfs_member"),
        ({"exists": True, "signatures": [], "partitions": ["/dev/sdb1"]}, "partition /dev/sdb1"),
        ({"exists": False, "signatures": [], "partitions": []}, "no such block device"),
    ],
)
def test_creating_a_pool_on_a_disk_that_holds_anything_is_refused(
    plan_of, fleet, state: dict, named: str
) -> None:
    machine = fleet["pve"]
    machine.zfs = {}
    machine.disks = {device: BLANK for device in (*SSD_DISKS, HDD)}
    machine.disks[SSD_DISKS[1]] = state
    message = refused(plan_of, PoolRefused, override_data=pools_to_create())
    assert "key 'pools['ssd'].create' is true" in message and "nothing was changed" in message
    assert SSD_DISKS[1] in message and named in message
    assert SSD_DISKS[0] not in message  # the blank ones are not blamed


RESTORE_UNIT = "/etc/systemd/system/homelab-guest-restore-test.service"
RESTORE_TIMER = "/etc/systemd/system/homelab-guest-restore-test.timer"


def test_the_guests_restore_test_runs_weekly_on_the_backup_storage(plan_of) -> None:
    result = plan_pve(plan_of)
    assert "pct" in result.upload("pve", "/usr/local/sbin/homelab-guest-restore-test")
    unit = result.upload("pve", RESTORE_UNIT)
    assert (
        "ExecStart=/usr/local/sbin/homelab-guest-restore-test"
        " --output /var/lib/prometheus/node-exporter/homelab-guest-restore.prom"
        " --backup-storage hdd --target-storage ssd --scratch-vmid 9999"
    ) in unit
    assert "RequiresMountsFor=/mnt/hdd" in unit
    assert "OnCalendar=Sun *-*-* 05:00:00" in result.upload("pve", RESTORE_TIMER)
    commands = "\n".join(result.commands("pve"))
    assert "systemctl enable homelab-guest-restore-test.timer" in commands


def test_the_restore_test_is_off_with_the_backup_job(plan_of) -> None:
    result = plan_pve(plan_of, override_data={"proxmox_backup_enabled": False})
    commands = "\n".join(result.commands("pve"))
    assert "systemctl enable homelab-guest-restore-test.timer" not in commands
    assert result.upload_or_none("pve", RESTORE_UNIT) is not None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"guest_restore_test_vmid": 110}, "an ID no guest uses (monitoring has it)"),
        ({"guest_restore_test_storage": "hdd"}, "a pool of this host with rootdir content (ssd)"),
        ({"guest_restore_test_storage": "nvme"}, "a pool of this host with rootdir content (ssd)"),
    ],
)
def test_a_scratch_id_or_storage_the_restore_test_cannot_use_stops_the_plan(
    plan_of, data: dict[str, Any], expected: str
) -> None:
    with pytest.raises(Exception) as caught:  # pyinfra wraps what a deploy raises
        plan_pve(plan_of, override_data=data)
    message = str(getattr(caught.value, "exception", caught.value))
    [(key, value)] = data.items()
    assert f"host 'pve': key {key!r} is {value!r}; expected {expected}" == message
