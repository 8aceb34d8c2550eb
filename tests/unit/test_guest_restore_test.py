"""The guests' restore test (files/homelab-guest-restore-test) against the Proxmox API test double.

The script runs as on the hypervisor, with the ``pvesh`` and ``pct`` test doubles
(``tests/doubles/bin``) first on PATH: every call it makes reaches the API test double, which
records it, holds the guests and the vzdump archives, and carries out restores, starts, stops
and destroys. Backups are made through the double's vzdump, so each archive holds the config
of the guest it was made from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.fixtures import TEST_SECRET, TOKEN, RunningDouble

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "files" / "homelab-guest-restore-test"
DOUBLES_BIN = ROOT / "tests" / "doubles" / "bin"
SCRATCH = "9999"

DNS_CONFIG = {
    "hostname": "dns",
    "memory": "512",
    "net0": "name=eth0,bridge=vmbr1,ip=10.10.0.53/24,gw=10.10.0.1,hwaddr=BC:24:11:00:00:53",
    "onboot": 1,
    "startup": "order=1",
    "mp0": "/mnt/hdd/shared,mp=/srv/shared",
    "rootfs": "ssd:subvol-120-disk-0,size=8G",
    "unprivileged": 1,
}
MONITORING_CONFIG = {
    "hostname": "monitoring",
    "memory": "2048",
    "net0": "name=eth0,bridge=vmbr1,ip=10.10.0.90/24,hwaddr=BC:24:11:00:00:90",
    "rootfs": "ssd:subvol-130-disk-0,size=32G",
    "unprivileged": 1,
}


@pytest.fixture
def site(pve_double: RunningDouble) -> RunningDouble:
    """A node with two LXC guests (dns 120, monitoring 130), one VM (ageis-node 110), an HDD
    storage for backups and an SSD storage for guest disks."""
    state = pve_double.double.state
    state.storages["hdd"] = {"storage": "hdd", "type": "dir", "path": "/mnt/hdd",
                             "content": "backup,iso,vztmpl"}  # fmt: skip
    state.storages["ssd"] = {"storage": "ssd", "type": "zfspool", "pool": "ssd",
                             "content": "images,rootdir"}  # fmt: skip
    for vmid, kind, config in (
        (110, "qemu", {"name": "ageis-node", "memory": "65536"}),
        (120, "lxc", DNS_CONFIG),
        (130, "lxc", MONITORING_CONFIG),
    ):
        state.guests[vmid] = {"kind": kind, "config": dict(config), "status": "running",
                              "snapshots": {}}  # fmt: skip
    return pve_double


def env(site: RunningDouble, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{DOUBLES_BIN}:{os.environ['PATH']}",
        "PVE_API_DOUBLE_URL": f"https://127.0.0.1:{site.port}",
        "PVE_API_DOUBLE_TOKEN": f"{TOKEN}={TEST_SECRET}",
        "PVE_API_DOUBLE_CA": str(site.ca_file),
        "PVE_DOUBLE_NODE": "pve",
        **extra,
    }


def vzdump(site: RunningDouble, *vmids: int) -> None:
    result = subprocess.run(
        [sys.executable, str(DOUBLES_BIN / "pvesh"), "create", "/nodes/pve/vzdump",
         "--vmid", ",".join(map(str, vmids)), "--storage", "hdd"],
        env=env(site), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def run(
    site: RunningDouble, tmp_path: Path, **extra: str
) -> tuple[subprocess.CompletedProcess, str]:
    output = tmp_path / "homelab-guest-restore.prom"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--node", "pve", "--backup-storage", "hdd",
         "--target-storage", "ssd", "--scratch-vmid", SCRATCH, "--poll", "0",
         "--output", str(output), "--state", str(tmp_path / "state.json")],
        env=env(site, **extra), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result, output.read_text() if output.exists() else ""


def metric(text: str, name: str, vmid: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"homelab_guest_restore_test_{name}{{") and f'vmid="{vmid}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no homelab_guest_restore_test_{name} for {vmid} in:\n{text}")


def calls(site: RunningDouble, since: int = 0) -> list[tuple[str, str, dict[str, Any]]]:
    """The state-changing requests the double accepted (task polls and reads left out)."""
    return [(m, p, params) for m, p, params, _ in site.double.requests[since:] if m != "GET"]


def test_each_lxc_guest_is_restored_started_checked_and_removed(
    site: RunningDouble, tmp_path: Path
) -> None:
    vzdump(site, 120, 130)
    vzdump(site, 120)  # a newer archive of 120: the one tested
    volumes = site.double.state.volumes
    newest_dns = max((v for v in volumes if "-lxc-120-" in v), key=lambda v: volumes[v]["ctime"])
    before = {vmid: dict(g["config"]) for vmid, g in site.double.state.guests.items()}
    mark = len(site.double.requests)

    result, prom = run(site, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert metric(prom, "ok", "120") == 1 and metric(prom, "ok", "130") == 1
    assert metric(prom, "backup_timestamp_seconds", "120") == volumes[newest_dns]["ctime"]
    assert metric(prom, "last_success_timestamp_seconds", "130") > 0
    assert 'vmid="110"' not in prom, "the VM is not restore-tested this way"
    done = calls(site, mark)
    base = f"/nodes/pve/lxc/{SCRATCH}"
    assert [(m, p) for m, p, _ in done] == 2 * [
        ("POST", "/nodes/pve/lxc"),
        ("PUT", f"{base}/config"),
        ("POST", f"{base}/status/start"),
        ("POST", f"{base}/status/stop"),
        ("DELETE", base),
    ]
    restore = done[0][2]
    assert restore["ostemplate"] == newest_dns
    assert (restore["vmid"], restore["restore"], restore["unique"], restore["storage"]) == (
        SCRATCH,
        "1",
        "1",
        "ssd",
    )
    # Before it starts, the copy loses its network, its bind mount and its autostart.
    assert set(done[1][2]["delete"].split(",")) == {"net0", "mp0", "onboot", "startup"}
    assert done[4][2]["purge"] == "1"
    # Nothing is left, the originals are as they were, and their backups are kept.
    assert int(SCRATCH) not in site.double.state.guests
    assert {vmid: g["config"] for vmid, g in site.double.state.guests.items()} == before
    assert all(g["status"] == "running" for g in site.double.state.guests.values())
    assert len([v for v in volumes if volumes[v]["content"] == "backup"]) == 3
    site.assert_all_accepted()


def test_a_guest_without_backup_fails_and_the_others_are_still_tested(
    site: RunningDouble, tmp_path: Path
) -> None:
    vzdump(site, 130)
    result, prom = run(site, tmp_path)
    assert result.returncode == 1
    assert metric(prom, "ok", "120") == 0 and metric(prom, "ok", "130") == 1
    assert metric(prom, "last_success_timestamp_seconds", "120") == 0
    assert "no backup of 120 on hdd" in result.stdout


def test_a_copy_that_does_not_come_up_fails_and_is_removed(
    site: RunningDouble, tmp_path: Path
) -> None:
    vzdump(site, 120, 130)
    result, prom = run(site, tmp_path, PCT_DOUBLE_SYSTEM_STATE="maintenance")
    assert result.returncode == 1
    assert metric(prom, "ok", "120") == 0
    assert "'maintenance', not running" in result.stdout
    assert int(SCRATCH) not in site.double.state.guests


def test_a_failed_restore_fails_that_guest_and_leaves_nothing(
    site: RunningDouble, tmp_path: Path
) -> None:
    vzdump(site, 120)
    site.double.fail_tasks["vzcreate"] = "unable to restore CT 9999 - no space left on device"
    result, prom = run(site, tmp_path)
    assert result.returncode == 1
    assert metric(prom, "ok", "120") == 0
    assert "no space left on device" in result.stdout
    assert int(SCRATCH) not in site.double.state.guests


def test_a_foreign_guest_at_the_scratch_id_stops_the_test_before_any_change(
    site: RunningDouble, tmp_path: Path
) -> None:
    vzdump(site, 120)
    site.double.state.guests[int(SCRATCH)] = {
        "kind": "lxc", "config": {"hostname": "someones", "description": "keep me"},
        "status": "running", "snapshots": {},
    }  # fmt: skip
    mark = len(site.double.requests)
    result, prom = run(site, tmp_path)
    assert result.returncode == 2
    assert "not this test's scratch guest" in result.stderr
    assert "guest_restore_test_vmid" in result.stderr
    assert calls(site, mark) == [] and prom == ""
    assert site.double.state.guests[int(SCRATCH)]["status"] == "running"


def test_a_scratch_guest_left_by_an_interrupted_run_is_removed_first(
    site: RunningDouble, tmp_path: Path
) -> None:
    vzdump(site, 120, 130)
    site.double.state.guests[int(SCRATCH)] = {
        "kind": "lxc",
        "config": {"hostname": "dns", "description": "homelab-guest-restore-test: 120 (dns)"},
        "status": "running", "snapshots": {},
    }  # fmt: skip
    result, prom = run(site, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert metric(prom, "ok", "120") == 1
    assert int(SCRATCH) not in site.double.state.guests


def test_the_last_success_is_kept_across_a_failed_run(site: RunningDouble, tmp_path: Path) -> None:
    vzdump(site, 120, 130)
    _, first = run(site, tmp_path)
    passed = metric(first, "last_success_timestamp_seconds", "120")
    result, second = run(site, tmp_path, PCT_DOUBLE_SYSTEM_STATE="starting")
    assert result.returncode == 1
    assert metric(second, "ok", "120") == 0
    assert metric(second, "last_success_timestamp_seconds", "120") == passed > 0
