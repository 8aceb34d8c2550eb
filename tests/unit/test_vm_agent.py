"""The lab's VM agent copies and restores a guest's files faithfully (tests/lab/vm_agent.py).

No container: plain temporary directories stand in for a lab host's root and pool, and
``ControlsTestDouble`` (a test double of labctl's freeze and power functions) records what the
agent asked of the container, and when. Needs rsync, as the lab does (labctl's HOST_PACKAGES).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.lab import vm_agent
from tests.lab.vm_agent import Controls, Disks


class ControlsTestDouble:
    """Test double of labctl's container controls: records each call with what the live root's
    ``etc/hostname`` held at that moment (so a test sees whether the copy came before or after)."""

    def __init__(self, disks: Disks, running: bool = True) -> None:
        self.disks = disks
        self.running = running
        self.events: list[tuple[str, str]] = []

    def _seen(self) -> str:
        path = self.disks.root / "etc/hostname"
        return path.read_text() if path.exists() else "<none>"

    @contextmanager
    def freeze(self, name: str) -> Iterator[None]:
        self.events.append(("freeze", name))
        try:
            yield
        finally:
            self.events.append(("thaw", name))

    def power_off(self, name: str) -> bool:
        self.events.append(("power_off", self._seen()))
        was, self.running = self.running, False
        return was

    def power_on(self, name: str) -> None:
        self.events.append(("power_on", self._seen()))
        self.running = True

    def controls(self) -> Controls:
        return Controls(freeze=self.freeze, power_off=self.power_off, power_on=self.power_on)


def _tree(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top``: type, mode, owner, and contents, mtime (ns) or link target."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(top.rglob("*")):
        info = path.lstat()
        relative = str(path.relative_to(top))
        if stat.S_ISLNK(info.st_mode):
            found[relative] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[relative] = ("dir", stat.S_IMODE(info.st_mode), info.st_uid)
        else:
            mode, owner = stat.S_IMODE(info.st_mode), info.st_uid
            found[relative] = ("file", mode, owner, path.read_bytes(), info.st_mtime_ns)
    return found


def _inodes(top: Path) -> dict[str, int]:
    return {str(p.relative_to(top)): p.lstat().st_ino for p in top.rglob("*") if p.is_file()}


@pytest.fixture
def disks(tmp_path: Path) -> Disks:
    if not vm_agent.shutil.which("rsync"):
        pytest.fail("rsync is missing: apt-get install rsync (the lab installs it: HOST_PACKAGES)")
    root, pool = tmp_path / "machines/ageis-node/root", tmp_path / "pools/ageis-node/ssd"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("ageis-node\n")
    (root / "etc/shadow").write_text("root:*:19000::::::\n")
    (root / "etc/shadow").chmod(0o640)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    (root / "usr/bin/tool").chmod(0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "bin").symlink_to("usr/bin")
    (root / "var/empty").mkdir(parents=True, mode=0o700)
    (pool / "models").mkdir(parents=True)
    (pool / "models/weights.bin").write_bytes(os.urandom(256 * 1024))
    return Disks("ageis-node", root, {"ssd": pool})


def test_a_snapshot_is_a_faithful_copy_taken_frozen(disks: Disks, tmp_path: Path) -> None:
    store, fake = tmp_path / "snapshots", ControlsTestDouble(disks)
    lines = vm_agent.take_snapshot(disks, "guard-a", store, fake.freeze)
    copy = store / "ageis-node/guard-a"
    assert _tree(copy / "root") == _tree(disks.root)
    assert _tree(copy / "pools/ssd") == _tree(disks.pools["ssd"])
    tool, alias = (copy / "root/usr/bin/tool").stat(), (copy / "root/usr/bin/tool-alias").stat()
    assert tool.st_ino == alias.st_ino, "a hard link in the root stays one in the copy"
    assert not set(_inodes(copy / "root").values()) & set(_inodes(disks.root).values())
    assert fake.events == [("freeze", "ageis-node"), ("thaw", "ageis-node")]
    assert not (store / "ageis-node/guard-a.partial").exists()
    assert lines[-1].startswith("snapshot guard-a of ageis-node: ") and "(full)" in lines[-1]


def test_after_a_delete_the_next_snapshot_links_unchanged_files(
    disks: Disks, tmp_path: Path
) -> None:
    store, fake = tmp_path / "snapshots", ControlsTestDouble(disks)
    vm_agent.take_snapshot(disks, "guard-a", store, fake.freeze)
    vm_agent.delete_snapshot(disks, "guard-a", store)
    base = store / "ageis-node/.base"
    assert not (store / "ageis-node/guard-a").exists() and base.is_dir()
    (disks.root / "etc/hostname").write_text("changed\n")
    lines = vm_agent.take_snapshot(disks, "guard-b", store, fake.freeze)
    second = store / "ageis-node/guard-b"
    assert _tree(second / "root") == _tree(disks.root)
    same = second / "root/usr/bin/tool", base / "root/usr/bin/tool"
    assert same[0].stat().st_ino == same[1].stat().st_ino, "unchanged: a link to the base"
    weights = second / "pools/ssd/models/weights.bin", base / "pools/ssd/models/weights.bin"
    assert weights[0].stat().st_ino == weights[1].stat().st_ino
    changed = second / "root/etc/hostname", base / "root/etc/hostname"
    assert changed[0].stat().st_ino != changed[1].stat().st_ino
    assert changed[0].read_text() == "changed\n" and changed[1].read_text() == "ageis-node\n"
    assert "(incremental)" in lines[-1]
    vm_agent.delete_snapshot(disks, "guard-b", store)
    assert (base / "root/etc/hostname").read_text() == "changed\n", "the newer copy is the base"


def test_a_rollback_restores_the_files_powered_off(disks: Disks, tmp_path: Path) -> None:
    store, fake = tmp_path / "snapshots", ControlsTestDouble(disks)
    vm_agent.take_snapshot(disks, "guard-a", store, fake.freeze)
    before = _tree(disks.root), _tree(disks.pools["ssd"])
    (disks.root / "etc/hostname").write_text("broken\n")  # modified
    (disks.root / "etc/shadow").chmod(0o666)  # mode changed
    (disks.root / "usr/bin/tool-alias").unlink()  # deleted
    (disks.root / "usr/bin/new").write_text("added\n")  # added
    (disks.pools["ssd"] / "models/weights.bin").write_bytes(b"truncated")
    fake.events.clear()
    lines = vm_agent.roll_back(disks, "guard-a", store, fake.controls(), start=True)
    assert (_tree(disks.root), _tree(disks.pools["ssd"])) == before
    copy = store / "ageis-node/guard-a"
    assert not set(_inodes(copy / "root").values()) & set(_inodes(disks.root).values())
    assert not set(_inodes(copy / "pools/ssd").values()) & set(_inodes(disks.pools["ssd"]).values())
    assert fake.events == [("power_off", "broken\n"), ("power_on", "ageis-node\n")]
    assert copy.is_dir(), "the API decides when a snapshot goes"
    assert "was running, started" in lines[-1]


def test_a_rollback_without_start_leaves_the_guest_off(disks: Disks, tmp_path: Path) -> None:
    store, fake = tmp_path / "snapshots", ControlsTestDouble(disks)
    vm_agent.take_snapshot(disks, "guard-a", store, fake.freeze)
    fake.events.clear()
    vm_agent.roll_back(disks, "guard-a", store, fake.controls(), start=False)
    assert [event for event, _ in fake.events] == ["power_off"]
    assert fake.running is False


def test_a_failing_copy_thaws_and_reports_host_action_and_stderr(
    disks: Disks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, fake = tmp_path / "snapshots", ControlsTestDouble(disks)
    monkeypatch.setattr(vm_agent, "RSYNC", (*vm_agent.RSYNC, "--no-such-option"))
    request = {"id": "1", "action": "snapshot", "guest": "ageis-node", "snapshot": "guard-a"}
    reply = vm_agent.handle(request, {"ageis-node": disks}, store, fake.controls())
    assert reply["ok"] is False
    assert "snapshot guard-a of ageis-node" in reply["error"]
    assert "no-such-option" in reply["error"] and "exited" in reply["error"]
    assert fake.events == [("freeze", "ageis-node"), ("thaw", "ageis-node")]
    assert not (store / "ageis-node/guard-a").exists()


def test_missing_snapshots_and_unknown_guests_are_refused(disks: Disks, tmp_path: Path) -> None:
    store, fake = tmp_path / "snapshots", ControlsTestDouble(disks)
    guests = {"ageis-node": disks}
    request = {"id": "1", "action": "rollback", "guest": "ageis-node", "snapshot": "nope"}
    reply = vm_agent.handle(request, guests, store, fake.controls())
    assert not reply["ok"] and "rollback of ageis-node to nope" in reply["error"]
    assert fake.events == [], "no power-off for a rollback that cannot happen"
    unknown = {**request, "guest": "pve", "snapshot": "g1"}
    reply = vm_agent.handle(unknown, guests, store, fake.controls())
    assert not reply["ok"] and "rollback g1 of pve: not a guest" in reply["error"]
    bad_name = {**request, "action": "snapshot", "snapshot": "../../etc"}
    reply = vm_agent.handle(bad_name, guests, store, fake.controls())
    assert not reply["ok"] and "not a Proxmox snapshot name" in reply["error"]
    assert not store.exists() or not any(store.rglob("*"))


def test_requests_are_answered_through_the_exchange_in_order(disks: Disks, tmp_path: Path) -> None:
    exchange, store = tmp_path / "pve-root/var/lib/homelab-lab-vm-agent", tmp_path / "snapshots"
    fake = ControlsTestDouble(disks)
    guests = {"ageis-node": disks}
    vm_agent.prepare_exchange(exchange, guests, tmp_path / "vm-agent.log")
    assert (exchange / "guests").read_text() == "ageis-node\n"
    for ident, action in (("002", "delete"), ("001", "snapshot")):
        request = {"id": ident, "action": action, "guest": "ageis-node", "snapshot": "g1"}
        vm_agent.write_json(exchange / "requests" / f"{ident}.json", request)
    assert vm_agent.serve_once(exchange, guests, store, fake.controls()) == 2
    assert list((exchange / "requests").iterdir()) == []
    first = json.loads((exchange / "replies/001.json").read_text())
    second = json.loads((exchange / "replies/002.json").read_text())
    assert first["ok"] and second["ok"], (first, second)
    assert (store / "ageis-node/.base/root/etc/hostname").is_file(), "snapshot ran before delete"


def test_freezing_a_cgroup_waits_for_frozen_and_always_thaws(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cgroup.freeze").write_text("0\n")
    (cgroup / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    with vm_agent.frozen(cgroup):
        assert (cgroup / "cgroup.freeze").read_text() == "1\n"
    assert (cgroup / "cgroup.freeze").read_text() == "0\n"
    (cgroup / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with (
        pytest.raises(vm_agent.AgentError, match="did not report itself frozen"),
        vm_agent.frozen(cgroup, timeout=0.2),
    ):
        pytest.fail("the copy must not run unfrozen")
    assert (cgroup / "cgroup.freeze").read_text() == "0\n"
