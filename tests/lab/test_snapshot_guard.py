"""The snapshot guard in the lab: pyinfra on the lab's ageis-node, the VM on the API double.

The lab's ageis-node is a container, but in the inventory it is VM 100 of pve, whose API is the
Proxmox API test double on pve:8006 (labctl serves it; the rollout made VM 100 there). A guarded
step that changes the VM and then fails must leave VM 100 as it was before (rolled back,
running, no snapshot left); a guarded step that succeeds must leave no snapshot behind. Both
leave the lab converged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

from tasks.hypervisor.proxmox_api import connect, forget_clients
from tests.lab import hosts

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
VM = "nodes/pve/qemu/100"


@pytest.fixture(scope="module")
def api() -> Any:
    os.environ.setdefault("HOMELAB_SECRETS_FILE", str(hosts.SECRETS_FILE))
    with ctx_state.use(State()):
        inventory = make_inventory_from_files("tests/lab/inventory.py", cwd=str(REPO))
    forget_clients()
    return connect(inventory.get_host("pve"))


def guarded_run(tmp_path: Path, step: str) -> subprocess.CompletedProcess[str]:
    deploy = tmp_path / "guarded.py"
    deploy.write_text(
        textwrap.dedent(
            """
            from pyinfra import inventory
            from pyinfra.operations import python, server
            from tasks.hypervisor.proxmox_api import connect
            from tasks.ageis_node.snapshot_guard import snapshot_guard

            def change_vm():
                api = connect(inventory.get_host("pve"))
                api.call("POST", "nodes/pve/qemu/100/config", "lab change", cores=7)

            def step():
            """
        )
        + textwrap.indent(textwrap.dedent(step), "    ")
        + '\nsnapshot_guard("lab guard test", step)\n'
    )
    return subprocess.run(
        [str(PYINFRA), "-y", "tests/lab/inventory.py", str(deploy), "--limit", "ageis-node"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_a_failing_guarded_step_rolls_vm_100_back(tmp_path: Path, api: Any) -> None:
    before = {k: v for k, v in api.get(f"{VM}/config").items() if k != "digest"}
    result = guarded_run(
        tmp_path,
        """
        python.call(name="Change the VM", function=change_vm)
        server.shell(name="Risky step that fails", commands=["exit 3"])
        """,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "rolled back to snapshot" in output, output[-3000:]
    after = {k: v for k, v in api.get(f"{VM}/config").items() if k not in ("digest", "parent")}
    assert after == {k: v for k, v in before.items() if k != "parent"}
    assert api.get(f"{VM}/status/current")["status"] == "running"
    snapshots = [s["name"] for s in api.get(f"{VM}/snapshot") if s["name"] != "current"]
    assert not [s for s in snapshots if s.startswith("guard-")], snapshots


def test_a_passing_guarded_step_leaves_no_snapshot(tmp_path: Path, api: Any) -> None:
    result = guarded_run(
        tmp_path, 'server.shell(name="Risky step that works", commands=["true"])\n'
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "snapshot 'guard-lab-guard-test-" in output, "the change must have been guarded"
    snapshots = [s["name"] for s in api.get(f"{VM}/snapshot") if s["name"] != "current"]
    assert not [s for s in snapshots if s.startswith("guard-")], snapshots


def test_the_verify_check_fails_for_a_stopped_vm(api: Any) -> None:
    """tests/verify/test_proxmox_api.py can fail: with VM 100 stopped it must."""
    api.call("POST", f"{VM}/status/stop", "stopping VM 100 for the verify check")
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("pytest")),
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/verify/test_proxmox_api.py",
                "--inventory",
                "tests/lab/inventory.py",
                "-k",
                "every_guest_exists_and_runs",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        api.call("POST", f"{VM}/status/start", "starting VM 100 again")
    assert result.returncode != 0, result.stdout[-2000:]
    assert "ageis-node (qemu 100) is stopped" in result.stdout, result.stdout[-2000:]
    assert api.get(f"{VM}/status/current")["status"] == "running"
