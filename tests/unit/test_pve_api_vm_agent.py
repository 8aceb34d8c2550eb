"""The Proxmox API double hands snapshots of lab hosts to the lab's VM agent, as background tasks.

An in-process double (its ``handle``: schema check, token auth, lock, state) with a temporary
exchange directory; ``AgentTestDouble`` (a test double of ``tests/lab/vm_agent.py``'s loop, in a
thread) records the requests and answers them when and how a test says.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.pve_api import INTERRUPTED, ApiError, PveApiDouble

TOKEN, SECRET = "root@pam!homelab", "unit-test-double"
HEADERS = {"Authorization": f"PVEAPIToken={TOKEN}={SECRET}"}


class AgentTestDouble:
    """Test double of the lab's VM agent: answers each request with ``reply`` once ``release``
    is set; ``requests`` holds what it was asked, in order."""

    def __init__(self, exchange: Path, guests: list[str]) -> None:
        self.exchange = exchange
        (exchange / "requests").mkdir(parents=True)
        (exchange / "replies").mkdir()
        (exchange / "guests").write_text("".join(f"{g}\n" for g in guests))
        (exchange / "log").write_text("/var/lib/homelab-lab/logs/vm-agent.log\n")
        self.requests: list[dict[str, Any]] = []
        self.reply: dict[str, Any] = {"ok": True, "lines": ["copied (test double)"], "error": ""}
        self.release = threading.Event()
        self.release.set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            for path in sorted((self.exchange / "requests").glob("*.json")):
                request = json.loads(path.read_text())
                if request not in self.requests:
                    self.requests.append(request)
                if not self.release.is_set():
                    continue
                reply = self.exchange / "replies" / path.name
                tmp = reply.with_name(f".{path.name}.tmp")
                tmp.write_text(json.dumps(self.reply))
                tmp.replace(reply)
                path.unlink()
            time.sleep(0.02)


@pytest.fixture
def exchange(tmp_path: Path) -> Path:
    return tmp_path / "homelab-lab-vm-agent"


@pytest.fixture
def agent(exchange: Path) -> Iterator[AgentTestDouble]:
    running = AgentTestDouble(exchange, ["ageis-node", "embedder"])
    yield running
    running.stop.set()
    running.thread.join(2)


def _double(exchange: Path, **kwargs: Any) -> PveApiDouble:
    kwargs.setdefault("running_polls", 0)
    return PveApiDouble(tokens={TOKEN: SECRET}, lab_vm_agent=exchange, **kwargs)


def _call(double: PveApiDouble, method: str, path: str, **params: Any) -> Any:
    return double.handle(method, path, {k: str(v) for k, v in params.items()}, HEADERS)


def _make_vm(double: PveApiDouble, vmid: int, name: str) -> None:
    _call(double, "POST", "/nodes/pve/qemu", vmid=vmid, name=name, cores=2, start=1)


def _status(double: PveApiDouble, upid: str) -> dict[str, Any]:
    return _call(double, "GET", f"/nodes/pve/tasks/{upid}/status")


def _wait(double: PveApiDouble, upid: str, timeout: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (status := _status(double, upid))["status"] == "running":
        assert time.monotonic() < deadline, f"task {upid} still running after {timeout} s"
        time.sleep(0.02)
    return status


def _snapshots(double: PveApiDouble, vmid: int) -> list[str]:
    listing = _call(double, "GET", f"/nodes/pve/qemu/{vmid}/snapshot")
    return [s["name"] for s in listing if s["name"] != "current"]


def test_a_snapshot_runs_until_the_agent_answers(exchange: Path, agent: AgentTestDouble) -> None:
    double = _double(exchange)
    _make_vm(double, 100, "ageis-node")
    agent.release.clear()
    upid = _call(double, "POST", "/nodes/pve/qemu/100/snapshot", snapname="guard-one")
    deadline = time.monotonic() + 5
    while not agent.requests:
        assert time.monotonic() < deadline, "no request reached the agent"
        time.sleep(0.02)
    time.sleep(0.2)  # several polls: still running, nothing recorded
    assert _status(double, upid)["status"] == "running"
    assert _status(double, upid)["status"] == "running"
    assert _snapshots(double, 100) == []
    assert upid not in [t["upid"] for t in _call(double, "GET", "/nodes/pve/tasks")]
    with pytest.raises(ApiError, match="locked"):  # Proxmox locks the guest meanwhile
        _call(double, "POST", "/nodes/pve/qemu/100/snapshot", snapname="guard-two")
    agent.release.set()
    status = _wait(double, upid)
    assert status["exitstatus"] == "OK"
    assert _snapshots(double, 100) == ["guard-one"]
    request = agent.requests[0]
    assert (request["action"], request["guest"], request["snapshot"]) == (
        "snapshot",
        "ageis-node",
        "guard-one",
    )
    log = [line["t"] for line in _call(double, "GET", f"/nodes/pve/tasks/{upid}/log")]
    assert log == ["copied (test double)", "snapshot 'guard-one' created", "TASK OK"]
    assert list((exchange / "replies").iterdir()) == [], "the double leaves the reply behind"


def test_a_failed_agent_action_fails_the_task_with_its_error(
    exchange: Path, agent: AgentTestDouble
) -> None:
    double = _double(exchange)
    _make_vm(double, 100, "ageis-node")
    agent.reply = {"ok": False, "lines": [], "error": "snapshot g1 of ageis-node: rsync exited 23"}
    upid = _call(double, "POST", "/nodes/pve/qemu/100/snapshot", snapname="g1")
    status = _wait(double, upid)
    assert status["exitstatus"] == "lab VM agent: snapshot g1 of ageis-node: rsync exited 23"
    assert _snapshots(double, 100) == []


def test_a_guest_the_agent_does_not_serve_stays_bookkeeping(
    exchange: Path, agent: AgentTestDouble
) -> None:
    double = _double(exchange)
    _make_vm(double, 101, "not-a-lab-host")
    agent.release.clear()  # a request would hang the task: it must not be sent
    upid = _call(double, "POST", "/nodes/pve/qemu/101/snapshot", snapname="g1", vmstate=1)
    assert _status(double, upid)["exitstatus"] == "OK"
    assert _snapshots(double, 101) == ["g1"]
    time.sleep(0.1)
    assert agent.requests == []
    assert list((exchange / "requests").iterdir()) == []


def test_delete_and_rollback_reach_the_agent_with_start(
    exchange: Path, agent: AgentTestDouble
) -> None:
    double = _double(exchange)
    _make_vm(double, 100, "ageis-node")
    for method, path, params in (
        ("POST", "/nodes/pve/qemu/100/snapshot", {"snapname": "g1"}),
        ("POST", "/nodes/pve/qemu/100/snapshot/g1/rollback", {"start": 1}),
        ("POST", "/nodes/pve/qemu/100/snapshot/g1/rollback", {"start": 0}),
        ("DELETE", "/nodes/pve/qemu/100/snapshot/g1", {}),
    ):
        upid = _call(double, method, path, **params)
        assert _wait(double, upid)["exitstatus"] == "OK", path
    asked = [(r["action"], r["snapshot"], r["start"]) for r in agent.requests]
    assert asked == [
        ("snapshot", "g1", False),
        ("rollback", "g1", True),
        ("rollback", "g1", False),
        ("delete", "g1", False),
    ]
    assert _snapshots(double, 100) == []
    assert _call(double, "GET", "/nodes/pve/qemu/100/status/current")["status"] == "stopped"


def test_ram_state_is_refused_for_a_lab_host(exchange: Path, agent: AgentTestDouble) -> None:
    double = _double(exchange)
    _make_vm(double, 100, "ageis-node")
    with pytest.raises(ApiError, match="cannot save a container's RAM"):
        _call(double, "POST", "/nodes/pve/qemu/100/snapshot", snapname="g1", vmstate=1)
    assert agent.requests == []


def test_an_agent_that_never_answers_fails_the_task_naming_its_log(exchange: Path) -> None:
    (exchange / "requests").mkdir(parents=True)  # the layout, but no agent reading it
    (exchange / "guests").write_text("ageis-node\n")
    (exchange / "log").write_text("/var/lib/homelab-lab/logs/vm-agent.log\n")
    double = _double(exchange, agent_timeout=0.3)
    _make_vm(double, 100, "ageis-node")
    upid = _call(double, "POST", "/nodes/pve/qemu/100/snapshot", snapname="g1")
    status = _wait(double, upid)
    assert "gave no answer in 0 s" in status["exitstatus"]
    assert "/var/lib/homelab-lab/logs/vm-agent.log" in status["exitstatus"]
    assert list((exchange / "requests").iterdir()) == [], "a late agent would still act"


def test_a_restarted_double_fails_the_task_it_was_running(
    exchange: Path, agent: AgentTestDouble, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    double = _double(exchange, state_file=state)
    _make_vm(double, 100, "ageis-node")
    agent.release.clear()
    upid = _call(double, "POST", "/nodes/pve/qemu/100/snapshot", snapname="g1")
    assert json.loads(state.read_text())["tasks"][upid]["exitstatus"] is None
    again = _double(exchange, state_file=state)  # the process died; a new one loads the state
    status = _status(again, upid)
    assert (status["status"], status["exitstatus"]) == ("stopped", INTERRUPTED)
    # the guest is no longer locked by the dead task
    agent.release.set()
    retry = _call(again, "POST", "/nodes/pve/qemu/100/snapshot", snapname="g2")
    assert _wait(again, retry)["exitstatus"] == "OK"
