"""ageis-node's side of the HDD share, planned on the VM's recorded facts (Ubuntu 24.04)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.common.datamodel.keys import DataError
from tasks.common.datamodel.preflight import InvalidData
from tests.plan.harness import Plan

HOST = "ageis-node"
UNIT = "/etc/systemd/system/srv-hdd.mount"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def node(plan_of) -> Plan:
    return plan_of("deploys/ageis_node.py", limit=[HOST])


def test_the_share_is_mounted_by_its_mapping_tag_and_never_stops_the_boot(node: Plan) -> None:
    unit = node.upload(HOST, UNIT)
    for line in (
        "What=ageis-node-hdd",
        "Where=/srv/hdd",
        "Type=virtiofs",
        "Options=defaults,noatime,nodev,nosuid",
        "WantedBy=local-fs.target",
    ):
        assert line in unit.splitlines(), (line, unit)
    assert unit.startswith("# Managed by homelab-as-code")
    assert "RequiredBy" not in unit
    names = [op.name for op in node.for_host(HOST)]
    assert any("srv-hdd.mount is mounted at boot" in name for name in names)


def test_a_share_that_is_not_mounted_yet_is_mounted_or_the_run_says_to_restart_the_vm(
    node: Plan,
) -> None:
    [command] = node.op(HOST, "Mount /srv/hdd").commands
    assert command.startswith("systemctl start srv-hdd.mount || { echo ")
    assert "restart it from Proxmox (qm reboot)" in command and "exit 1; }" in command


def test_a_mounted_share_is_left_as_it_is(plan_of, fleet) -> None:
    fleet[HOST].mounts["/srv/hdd"] = {"device": "ageis-node-hdd", "type": "virtiofs",
                                      "options": ["rw"]}  # fmt: skip
    result = plan_of("deploys/ageis_node.py", limit=[HOST])
    assert not any(op.name.endswith("Mount /srv/hdd") for op in result.for_host(HOST))


def test_the_tiers_paths_come_from_the_data(plan_of) -> None:
    result = plan_of(
        "deploys/ageis_node.py", limit=[HOST], override_data={"storage_tier_down_days": 45}
    )
    config = json.loads(result.upload(HOST, "/etc/homelab/storage-tier.json"))
    assert config == {
        "kinds": ["datasets", "checkpoints", "media"],
        "models_archive": "archive/models",
        "models_dir": "/srv/ssd/ollama/models",
        "mount_point": "/srv/hdd",
        "mount_unit": "srv-hdd.mount",
        "ollama_url": "http://127.0.0.1:11434",
        "tier_down_days": 45,
        "work_dir": "/srv/ssd/work",
    }
    service = result.upload(HOST, "/etc/systemd/system/homelab-tier-down.service")
    assert "RequiresMountsFor=/srv/hdd" in service
    assert (
        "ExecStart=/usr/local/sbin/homelab-storage-tier tier-down --textfile"
        " /var/lib/prometheus/node-exporter/homelab-storage-tier.prom" in service
    )
    timer = result.upload(HOST, "/etc/systemd/system/homelab-tier-down.timer")
    assert "OnCalendar=*-*-* 04:30:00" in timer


def test_no_share_pool_means_no_share(plan_of, tmp_path) -> None:
    text = (REPO / "inventory.py").read_text()
    without = text.replace('                "share_pool": "hdd",\n', "")
    assert without != text
    inventory = tmp_path / "inventory_noshare.py"
    inventory.write_text(without)
    result = plan_of("deploys/ageis_node.py", limit=[HOST], inventory_file=str(inventory))
    assert result.upload_or_none(HOST, UNIT) is None
    assert result.upload_or_none(HOST, "/etc/homelab/storage-tier.json") is None


def test_a_ram_snapshot_guard_with_a_share_is_refused(plan_of) -> None:
    with pytest.raises(Exception) as caught:
        plan_of("deploys/ageis_node.py", limit=[HOST],
                override_data={"snapshot_guard_vmstate": True})  # fmt: skip
    error = caught.value
    while not isinstance(error, DataError) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    assert isinstance(error, DataError), repr(caught.value)
    assert "key 'snapshot_guard_vmstate' is True" in str(error)
    assert "cannot save the RAM of a VM with a VirtIO-FS device" in str(error)


@pytest.mark.parametrize(
    ("action", "model", "command"),
    [
        ("archive", "qwen3:32b", "/usr/local/sbin/homelab-storage-tier models-archive qwen3:32b"),
        ("load", "someone/model:q4_K_M",
         "/usr/local/sbin/homelab-storage-tier models-load someone/model:q4_K_M"),
        ("list", None, "/usr/local/sbin/homelab-storage-tier models-list"),
    ],
)  # fmt: skip
def test_make_models_runs_the_tier_script_on_the_vm(plan_of, action, model, command) -> None:
    data = {"models_action": action, **({"model": model} if model else {})}
    result = plan_of("deploys/models.py", override_data=data)
    [op] = result.for_host(HOST)
    assert op.commands == [command]
    assert result.for_host("pve") == [] and result.for_host("embedder") == []


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"models_action": "archive", "model": "qwen3:32b; rm -rf /"}, "model"),
        ({"models_action": "archive", "model": "$(reboot)"}, "model"),
        ({"models_action": "archive"}, "model"),
        ({"models_action": "move", "model": "qwen3:32b"}, "models_action"),
    ],
)
def test_make_models_refuses_a_bad_name_before_anything_runs(plan_of, data, key) -> None:
    """A bad name stops the run in the data check (InvalidData), a missing one when read."""
    with pytest.raises(BaseException) as caught:  # pyinfra wraps what the deploy file raises
        plan_of("deploys/models.py", override_data=data)
    error: BaseException = caught.value
    while not isinstance(error, (InvalidData, DataError)) and (
        error.__cause__ or error.__context__
    ):
        error = error.__cause__ or error.__context__
    text = error.message if isinstance(error, InvalidData) else str(error)
    assert f"host 'ageis-node': key '{key}'" in text, text
