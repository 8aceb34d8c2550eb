"""The first run on each kind of fresh host: its login, sudo, resolver and the admin proof.

Cases: Proxmox VE 9 and Proxmox VE 8 as their ISOs install them, plain Debian 13 that becomes
Proxmox VE 9, and the Ubuntu 24.04 cloud-image VM. No login is recorded on this controller yet
(a first contact), so the login is the one the inventory chooses for a fresh host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import Plan, host_data
from tests.plan.machines import Machine
from tests.plan.test_hypervisor_plan import make_proxmox_ve_8, plain_debian_13

PROOF = "Admin login proven: ops by SSH key, with sudo"
ROOT_OFF = "SSH login: the admin group, root no (checked, installed)"


def _pve_8(fleet: dict[str, Machine]) -> None:
    make_proxmox_ve_8(fleet["pve"])


def _plain_debian(fleet: dict[str, Machine]) -> None:
    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}


HYPERVISORS: dict[str, Callable[[dict[str, Machine]], None]] = {
    "pve-9-iso": lambda fleet: None,
    "pve-8-iso": _pve_8,
    "debian-13-plain": _plain_debian,
}


def _names(plan: Plan, host: str) -> list[str]:
    return [op.name for op in plan.for_host(host)]


@pytest.mark.parametrize("case", HYPERVISORS)
def test_a_fresh_hypervisor_is_reached_as_root_and_left_to_the_admin(
    plan_of, fleet, controller_home: Path, case: str
) -> None:
    HYPERVISORS[case](fleet)
    data = host_data("pve", home=controller_home, secrets=PLAN_SECRETS)
    assert data["ssh_user"] == "root" and "_sudo" not in data
    result = plan_of("deploys/hypervisor.py", limit=["pve"])
    names = _names(result, "pve")
    proof = next(i for i, name in enumerate(names) if PROOF in name)
    root_off = next(i for i, name in enumerate(names) if ROOT_OFF in name)
    assert proof < root_off == len(names) - 2  # then only the reload
    if case == "debian-13-plain":  # its reboots (Proxmox VE's kernel) reconnect as root first
        assert any("Reboot into the Proxmox VE kernel" in name for name in names[:proof])
    # The first apt runs with the host's own resolver; the dns guest comes first once it exists.
    resolvers = [
        line for line in result.upload("pve", "/etc/resolv.conf").splitlines()
        if line.startswith("nameserver ")
    ]  # fmt: skip
    assert resolvers == ["nameserver 192.168.1.50", "nameserver 192.168.1.1"]


def test_the_fresh_vm_is_reached_as_cloud_inits_admin_with_sudo(
    full: Plan, controller_home: Path
) -> None:
    data = host_data("ageis-node", home=controller_home, secrets=PLAN_SECRETS)
    assert (data["ssh_user"], data["_sudo"], data["_temp_dir"]) == ("ops", True, "/tmp")
    names = _names(full, "ageis-node")
    assert not [name for name in names if PROOF in name]
    assert [name for name in names if "Admin login recorded: ops" in name]
    assert ROOT_OFF in " ".join(names)
    drop_in = full.upload("ageis-node", "/etc/systemd/resolved.conf.d/homelab.conf")
    assert "DNS=192.168.1.50 192.168.1.1" in drop_in


@pytest.mark.parametrize("guest", ["monitoring", "dns"])
def test_a_fresh_lxc_guest_is_reached_as_root(controller_home: Path, guest: str) -> None:
    data = host_data(guest, home=controller_home, secrets=PLAN_SECRETS)
    assert data["ssh_user"] == "root" and "_sudo" not in data
