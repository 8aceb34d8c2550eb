"""The hypervisor role's Proxmox API work, planned and applied against the API test double.

The real deploy file (``deploys/hypervisor.py``) over the real inventory, with the pve
machine's recorded facts; its API is the Proxmox API test double (``pve_double``), which checks
every request against Proxmox's schema. ``run_python`` applies what the plan would change (the
``python.call`` operations: API writes), as a run would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.common.datamodel.preflight import InvalidData
from tasks.hypervisor.proxmox_api import ProxmoxError, TaskFailed
from tests.doubles.fixtures import RunningDouble, start_double
from tests.plan.harness import Plan, PlannedOp

REPO = Path(__file__).resolve().parents[2]
API_OPS = (
    "Proxmox storage",
    "VM ",
    "Container ",
    "Nightly vzdump",
    "Cloud image",
    "LXC template",
    "PCI resource mapping",
    "Directory mapping",
)


def api_changes(plan: Plan) -> list[PlannedOp]:
    return [op for op in plan.changing("pve") if any(mark in op.name for mark in API_OPS)]


def writes(double: Any, method: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (m, path, params)
        for m, path, params, who in double.requests
        if m != "GET" and who != "login" and (method is None or m == method)
    ]


@pytest.fixture
def hypervisor(plan_of: Any) -> Any:
    def run(**kwargs: Any) -> Plan:
        return plan_of("deploys/hypervisor.py", limit=["pve"], **kwargs)

    return run


def test_a_fresh_node_plans_storages_guests_and_the_job_without_writing(
    hypervisor: Any, pve_double: RunningDouble
) -> None:
    plan = hypervisor()
    names = " | ".join(op.name for op in api_changes(plan))
    for expected in (
        "Proxmox storage ssd",
        "Proxmox storage hdd",
        "VM 100 (ageis-node)",
        "Container 110 (monitoring)",
        "Container 111 (dns)",
        "Nightly vzdump job homelab-nightly",
        "Cloud image",
        "LXC template",
    ):
        assert expected in names
    assert writes(pve_double.double) == [], "planning must not write to the API"
    pve_double.assert_all_accepted()


def test_creating_twice_creates_once(hypervisor: Any, pve_double: RunningDouble) -> None:
    double = pve_double.double
    hypervisor(run_python=True)
    created = [
        p for m, p, _ in writes(double, "POST") if p in ("/nodes/pve/qemu", "/nodes/pve/lxc")
    ]
    assert created == ["/nodes/pve/qemu", "/nodes/pve/lxc", "/nodes/pve/lxc"]
    vm = double.state.guests[100]["config"]
    assert vm["machine"] == "q35" and vm["bios"] == "ovmf" and vm["cpu"] == "host"
    assert vm["balloon"] == "0" and vm["onboot"] == "1" and vm["startup"] == "order=2"
    # The resolver's start_delay: Proxmox waits 10 s after it before the next guest.
    assert double.state.guests[111]["config"]["startup"] == "order=1,up=10"
    assert vm["hostpci0"] == "0000:03:00,pcie=1", "root@pam: the raw address, every function"
    assert vm["scsi0"].startswith("ssd:vm-100-disk-") and "size=256G" in vm["scsi0"]
    assert vm["efidisk0"].startswith("ssd:") and "efitype=4m" in vm["efidisk0"]
    assert double.state.guests[100]["status"] == "running"
    storages = double.state.storages
    assert storages["hdd"]["is_mountpoint"] == "yes" and storages["ssd"]["type"] == "zfspool"
    job = double.state.backup_jobs["homelab-nightly"]
    assert job["prune-backups"] == "keep-daily=7,keep-weekly=4,keep-monthly=6"
    assert (job["mode"], job["compress"], job["storage"]) == ("snapshot", "zstd", "hdd")
    before = len(writes(double))
    again = hypervisor(run_python=True)
    assert api_changes(again) == [], [op.name for op in api_changes(again)]
    assert len(writes(double)) == before, "a converged node gets no API write"
    pve_double.assert_all_accepted()


def test_new_guests_can_resolve_and_install_before_the_dns_guest_exists(
    hypervisor: Any, pve_double: RunningDouble
) -> None:
    """On a first install the dns guest does not exist when the others boot: every guest gets
    the router as its resolver, and the VM's cloud-init does no package upgrade of its own
    (it would race the rollout's apt)."""
    hypervisor(run_python=True)
    guests = pve_double.double.state.guests
    vm = guests[100]["config"]
    assert vm["nameserver"] == "192.168.1.1", vm["nameserver"]
    assert vm["ciupgrade"] == "0", "cloud-init's first-boot upgrade races the rollout's apt"
    assert vm["ciuser"] == "ops" and vm["ipconfig0"] == "ip=192.168.1.20/24,gw=192.168.1.1"
    assert vm["searchdomain"] == "home.arpa"
    for vmid in (110, 111):  # monitoring and the dns guest itself
        assert guests[vmid]["config"]["nameserver"] == "192.168.1.1", guests[vmid]["config"]
    pve_double.assert_all_accepted()


def test_changing_cores_in_the_data_updates_only_cores(
    hypervisor: Any, pve_double: RunningDouble, tmp_path: Path
) -> None:
    double = pve_double.double
    hypervisor(run_python=True)
    text = (REPO / "inventory.py").read_text()
    changed = text.replace(
        '"vmid": 100,\n                "cores": 4,', '"vmid": 100,\n                "cores": 6,'
    )
    assert changed != text
    inventory = tmp_path / "inventory.py"
    inventory.write_text(changed)
    before = len(writes(double))
    plan = hypervisor(run_python=True, inventory_file=str(inventory))
    assert [op.name for op in api_changes(plan)] == [
        "Proxmox guests | VM 100 (ageis-node) config: cores=6"
    ]
    [(method, path, params)] = writes(double)[before:]
    assert (method, path) == ("POST", "/nodes/pve/qemu/100/config")
    assert params == {"cores": "6"}
    assert double.state.guests[100]["config"]["cores"] == "6"


def test_api_token_passes_the_gpu_through_a_pci_mapping(
    hypervisor: Any, pve_double: RunningDouble
) -> None:
    double = pve_double.double
    hypervisor(run_python=True, override_data={"proxmox_api_token_name": "homelab"})
    assert double.state.guests[100]["config"]["hostpci0"] == "mapping=r9700,pcie=1"
    mapping = double.state.pci_mappings["r9700"]
    assert mapping["map"] == ["node=pve,path=0000:03:00,id=1002:7551"]
    assert {who for *_, who in double.requests} == {"root@pam!homelab"}
    pve_double.assert_all_accepted()


def test_the_vm_gets_its_own_directory_of_the_hdd_pool_through_virtiofs(
    hypervisor: Any, pve_double: RunningDouble
) -> None:
    """The share is a directory mapping of ``<hdd>/shares/ageis-node`` only (never the pool's
    root, which holds the backups), made before the VM names it; the node gets virtiofsd."""
    double = pve_double.double
    plan = hypervisor(run_python=True)
    host_ops = [op.name for op in plan.changing("pve")]
    for expected in (
        "Guest shares (virtiofs) | virtiofsd for the VMs' shares",
        "Guest shares (virtiofs) | Share of ageis-node: /mnt/hdd/shares/ageis-node",
        "Guest shares (virtiofs) | Share of ageis-node: /mnt/hdd/shares/ageis-node/archive/models",
    ):
        assert expected in host_ops, host_ops
    mapping = double.state.dir_mappings["ageis-node-hdd"]
    assert mapping["map"] == ["node=pve,path=/mnt/hdd/shares/ageis-node"]
    assert double.state.guests[100]["config"]["virtiofs0"] == "ageis-node-hdd,cache=auto"
    order = [path for _, path, _ in writes(double, "POST")]
    assert order.index("/cluster/mapping/dir") < order.index("/nodes/pve/qemu")
    assert "virtiofs0" not in double.state.guests[110]["config"], "containers get no share"
    pve_double.assert_all_accepted()


def test_a_vm_that_exists_gets_its_share_at_its_next_start(
    hypervisor: Any, pve_double: RunningDouble, tmp_path: Path, caplog: Any
) -> None:
    double = pve_double.double
    text = (REPO / "inventory.py").read_text()
    without = text.replace('                "share_pool": "hdd",\n', "")
    assert without != text
    inventory = tmp_path / "inventory.py"
    inventory.write_text(without)
    hypervisor(run_python=True, inventory_file=str(inventory))
    assert "virtiofs0" not in double.state.guests[100]["config"]
    plan = hypervisor(run_python=True)
    names = [op.name for op in api_changes(plan)]
    assert names == [
        "Proxmox guests | Directory mapping ageis-node-hdd: create"
        " node=pve,path=/mnt/hdd/shares/ageis-node",
        "Proxmox guests | VM 100 (ageis-node) config: virtiofs0=ageis-node-hdd,cache=auto",
    ], names
    assert "gets its share (ageis-node-hdd,cache=auto) at its next start" in caplog.text
    assert "qm reboot 100" in caplog.text
    assert api_changes(hypervisor(run_python=True)) == []


def test_a_share_on_a_container_or_an_unknown_pool_is_refused_before_any_write(
    hypervisor: Any, pve_double: RunningDouble, tmp_path: Path
) -> None:
    text = (REPO / "inventory.py").read_text()
    for old, new, key, expected in (
        ('"share_pool": "hdd"', '"share_pool": "tank"', "guest.share_pool", "a pool of pve"),
        ('"kind": "lxc",', '"kind": "lxc",\n                "share_pool": "hdd",', "guest.kind",
         "qemu for a virtiofs share_pool"),
    ):  # fmt: skip
        changed = text.replace(old, new, 1)
        assert changed != text
        inventory = tmp_path / f"inventory_{key.replace('.', '_')}.py"
        inventory.write_text(changed)
        with pytest.raises(InvalidData) as caught:
            hypervisor(inventory_file=str(inventory))
        assert key in caught.value.message and expected in caught.value.message
    assert writes(pve_double.double) == []


def test_a_failed_task_fails_the_run_with_its_log(
    hypervisor: Any, pve_double: RunningDouble
) -> None:
    pve_double.double.fail_tasks["qmcreate"] = "unable to create VM 100 - no space left"
    with pytest.raises(TaskFailed, match=r"(?s)creating VM 100.*TASK ERROR: unable to create"):
        hypervisor(run_python=True)


def test_proxmox_ve_8_schema_accepts_the_same_requests(
    hypervisor: Any, pve_double_cert: Any
) -> None:
    v8 = start_double(pve_double_cert, version=8)
    try:
        hypervisor(run_python=True, override_data=v8.data)
        hypervisor(run_python=True, override_data=v8.data)
        v8.assert_all_accepted()
        assert 100 in v8.double.state.guests
    finally:
        v8.double.stop()


def test_a_template_the_appliance_index_no_longer_offers_stops_before_any_write(
    hypervisor: Any, pve_double: RunningDouble
) -> None:
    stale = "debian-13-standard_13.0-1_amd64.tar.zst"
    with pytest.raises(Exception) as caught:  # pyinfra wraps what a deploy raises
        hypervisor(override_data={"proxmox_lxc_templates": {"debian-13": stale}})
    original = getattr(caught.value, "exception", caught.value)
    assert isinstance(original, ProxmoxError), repr(original)
    message = str(original)
    assert "host 'pve'" in message and "proxmox_lxc_templates" in message and stale in message
    assert "debian-13-standard_13.1-2_amd64.tar.zst" in message, "names what the index offers"
    assert "debian-12-standard" not in message, "lists the same family only"
    assert writes(pve_double.double) == []


UBUNTU_IMAGE = {
    "url": "https://cloud-images.ubuntu.com/releases/noble/release-20261101/"
    "ubuntu-24.04-server-cloudimg-amd64.img",
    "file": "ubuntu-24.04-server-cloudimg-amd64.qcow2",
}


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_a_pinned_cloud_image_checksum_goes_to_the_node(
    hypervisor: Any, pve_double: RunningDouble, algorithm: str
) -> None:
    digest = "ab" * (32 if algorithm == "sha256" else 64)
    images = {"ubuntu-24.04": {**UBUNTU_IMAGE, algorithm: digest}}
    hypervisor(run_python=True, override_data={"proxmox_cloud_images": images})
    [download] = [p for _, path, p in writes(pve_double.double) if path.endswith("download-url")]
    assert (download["checksum"], download["checksum-algorithm"]) == (digest, algorithm)
    pve_double.assert_all_accepted()


def test_both_checksums_for_one_image_are_refused_as_data_before_any_write(
    hypervisor: Any, pve_double: RunningDouble
) -> None:
    images = {"ubuntu-24.04": {**UBUNTU_IMAGE, "sha256": "ab" * 32, "sha512": "cd" * 64}}
    with pytest.raises(InvalidData) as caught:
        hypervisor(override_data={"proxmox_cloud_images": images})
    message = caught.value.message
    assert "host 'pve'" in message and 'key "proxmox_cloud_images' in message
    assert "at most one of sha256 and sha512" in message
    assert writes(pve_double.double) == []


def test_plain_debian_creates_the_guests_in_the_run_that_installs_proxmox_ve(
    plan_of: Any, fleet: dict[str, Any], pve_double: RunningDouble, tmp_path: Path
) -> None:
    """Plain Debian: the API work is one operation after the installation, whose reads and
    writes run then (against the double), so the first run creates the guests."""
    from pyinfra import context

    from tests.plan.machines import real_fleet
    from tests.plan.test_hypervisor_plan import plain_debian_13

    plain = plain_debian_13()
    plain.zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    installed = real_fleet()["pve"]  # what the same machine is once Proxmox VE is installed
    installed.files["/etc/pve/pve-root-ca.pem"] = pve_double.ca_file.read_text()
    plain_facts = plain.facts

    def facts() -> Any:
        table, after = plain_facts(), installed.facts()
        for name in ("DebPackages", "FileContents"):
            before_answer, after_answer = table.facts[name], after.facts[name]

            def answer(kw: Any, before: Any = before_answer, now: Any = after_answer) -> Any:
                chosen = now if context.state.is_executing else before
                return chosen(kw) if callable(chosen) else chosen

            table.facts[name] = answer
        return table

    plain.facts = facts  # type: ignore[method-assign]
    fleet["pve"] = plain
    records = tmp_path / "proxmox-ca"
    result = plan_of(
        "deploys/hypervisor.py",
        limit=["pve"],
        run_python=True,
        override_data={
            "proxmox_api_ca_file": None,
            "proxmox_api_ca_record_directory": str(records),
        },
    )
    names = [op.name for op in result.for_host("pve")]
    stage = names.index(
        "Proxmox VE API tasks (storages, guests, backup job), once this run has installed"
        " Proxmox VE"
    )
    assert names.index("Proxmox VE | Proxmox VE (proxmox-ve postfix open-iscsi chrony)") < stage
    assert names.index("Proxmox VE | Reboot into the Proxmox VE kernel") < stage
    guests = pve_double.double.state.guests
    assert sorted(guests) == [100, 110, 111], "the guests are created in this first run"
    assert (records / "pve.pem").is_file(), "the CA is read once Proxmox VE made it"
    pve_double.assert_all_accepted()


def test_plain_debian_with_an_api_token_leaves_the_api_work_to_the_next_run(
    plan_of: Any, fleet: dict[str, Any], pve_double: RunningDouble, caplog: Any
) -> None:
    import logging

    from tests.plan.test_hypervisor_plan import plain_debian_13

    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        result = plan_of(
            "deploys/hypervisor.py",
            limit=["pve"],
            run_python=True,
            override_data={"proxmox_api_token_name": "homelab"},
        )
    assert "Proxmox VE API tasks wait: the API token root@pam!homelab" in caplog.text
    assert not [op for op in result.for_host("pve") if "Proxmox VE API tasks" in op.name]
    assert pve_double.double.requests == [], "no API call: the token cannot exist yet"
