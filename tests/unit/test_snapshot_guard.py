"""The snapshot guard, run for real by pyinfra against the Proxmox API test double.

Each test runs ``pyinfra`` (the CLI, as a user would) on this machine (``@local``) as the
guest ``ageis-node`` (VM 100 on the hypervisor ``pve``, whose API is the double): the guarded
step changes the VM (as a ROCm upgrade would) and then fails or succeeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.doubles.fixtures import TEST_SECRET, RunningDouble
from tests.doubles.pve_api import PveApiDouble

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")

VM_CONFIG = {"name": "ageis-node", "cores": "4", "memory": "16384", "machine": "q35"}


def _seed_vm(double: PveApiDouble) -> None:
    double.state.guests[100] = {
        "kind": "qemu", "config": dict(VM_CONFIG), "status": "running", "snapshots": {},
    }  # fmt: skip


def _run(
    tmp_path: Path, running: RunningDouble, step: str, policy: str = "rollback", wrap: bool = True
):
    """Run ``step`` inside ``snapshot_guard("test upgrade", ...)``, or (``wrap`` False) as the
    deploy's own code after ``change_vm``."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        textwrap.dedent(
            f"""
            hypervisor = [("pve", {{
                "lan_address": "127.0.0.1",
                "proxmox_api_host": "127.0.0.1",
                "proxmox_api_port": {running.port},
                "proxmox_api_ca_file": {str(running.ca_file)!r},
            }})]
            ageis_node = [("@local", {{
                "guest": {{"hypervisor": "pve", "kind": "qemu", "vmid": 100, "cores": 4,
                           "memory": "16G", "disk_size": "32G", "storage": "ssd",
                           "os": "debian-13"}},
                "snapshot_guard_on_failure": {policy!r},
            }})]
            """
        )
    )
    deploy = tmp_path / "deploy.py"
    deploy.write_text(
        textwrap.dedent(
            """
            from pyinfra.operations import files, python, server
            from tasks.hypervisor.proxmox_api import connect, hypervisor_named
            from tasks.ageis_node.snapshot_guard import snapshot_guard

            def change_vm():
                api = connect(hypervisor_named("pve"))
                api.call("POST", "nodes/pve/qemu/100/config", "test change", cores=8)
            """
        )
        + (
            "\ndef step():\n"
            + textwrap.indent(textwrap.dedent(step), "    ")
            + '\nsnapshot_guard("test upgrade", step)\n'
            if wrap
            else textwrap.dedent(step)
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOMELAB_SECRET_PROXMOX_API_SECRET": TEST_SECRET}
    env.pop("HOMELAB_SECRETS_FILE", None)
    return subprocess.run(
        [str(PYINFRA), "-y", str(inventory), str(deploy), "--limit", "@local"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def _paths(double: PveApiDouble, method: str) -> list[str]:
    return [path for m, path, _, _ in double.requests if m == method]


def test_a_failing_guarded_step_rolls_the_vm_back(tmp_path: Path, pve_double: RunningDouble):
    double = pve_double.double
    _seed_vm(double)
    step = """
        python.call(name="Change the VM", function=change_vm)
        server.shell(name="Risky step that fails", commands=["exit 3"])
    """
    result = _run(tmp_path, pve_double, step)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    vm = double.state.guests[100]
    assert vm["config"] == VM_CONFIG, "the VM was not rolled back"
    assert vm["status"] == "running", "the VM ran before the change: it must run again"
    assert vm["snapshots"] == {}, "the snapshot is removed after the rollback"
    assert any(p.endswith("/rollback") for p in _paths(double, "POST")), double.requests
    assert "rolled back to snapshot" in output
    pve_double.assert_all_accepted()


def test_keep_policy_keeps_the_snapshot_and_the_failed_state(
    tmp_path: Path, pve_double: RunningDouble
) -> None:
    double = pve_double.double
    _seed_vm(double)
    step = """
        python.call(name="Change the VM", function=change_vm)
        server.shell(name="Risky step that fails", commands=["exit 3"])
    """
    result = _run(tmp_path, pve_double, step, policy="keep")
    assert result.returncode != 0
    vm = double.state.guests[100]
    assert vm["config"]["cores"] == "8"
    [name] = vm["snapshots"]
    assert name.startswith("guard-test-upgrade-")
    assert vm["snapshots"][name]["config"] == VM_CONFIG
    assert "is kept" in result.stdout + result.stderr


def test_a_passing_guarded_step_leaves_no_snapshot(tmp_path: Path, pve_double: RunningDouble):
    double = pve_double.double
    _seed_vm(double)
    step = """
        python.call(name="Change the VM", function=change_vm)
        server.shell(name="Risky step that works", commands=["true"])
    """
    result = _run(tmp_path, pve_double, step)
    assert result.returncode == 0, result.stdout + result.stderr
    vm = double.state.guests[100]
    assert vm["config"]["cores"] == "8", "the change stays"
    assert vm["snapshots"] == {}
    assert any(p.endswith("/snapshot") for p in _paths(double, "POST")), "no snapshot was taken"
    assert any("/snapshot/guard-" in p for p in _paths(double, "DELETE"))
    output = result.stdout + result.stderr
    assert "snapshot 'guard-test-upgrade-" in output and "removed" in output, output[-2000:]
    pve_double.assert_all_accepted()


def test_nothing_to_change_takes_no_snapshot(tmp_path: Path, pve_double: RunningDouble):
    double = pve_double.double
    _seed_vm(double)
    step = f"""
        files.directory(name="Already there", path={str(tmp_path)!r})
    """
    result = _run(tmp_path, pve_double, step)
    assert result.returncode == 0, result.stdout + result.stderr
    assert double.requests == [], "a converged host must not touch the API"


@pytest.mark.parametrize("reason", ["ROCm 7.1 upgrade", "x" * 80, "!!!"])
def test_snapshot_names_fit_proxmox(reason: str) -> None:
    from tasks.ageis_node.snapshot_guard import snapshot_name
    from tests.doubles.pve_schema import NAMED_PATTERNS

    name = snapshot_name(reason, now=0)
    assert len(name) <= 40
    assert __import__("re").fullmatch(NAMED_PATTERNS["pve-configid"], name)


# A guarded step whose second operation runs only when the first changed something, as the
# ROCm task refreshes package lists only when its repository files changed. The guard asks
# both whether they will change before either has run.
_DEPENDENT_STEP = """
    from tasks.common.changes import changed
    marker = files.directory(name="Directory the step manages", path={path!r})
    server.shell(name="Runs only after a change", commands=["true"],
                 _if=lambda: changed(marker))
"""


def test_a_converged_step_with_a_dependent_operation_takes_no_snapshot(
    tmp_path: Path, pve_double: RunningDouble
):
    double = pve_double.double
    _seed_vm(double)
    result = _run(tmp_path, pve_double, _DEPENDENT_STEP.format(path=str(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert double.requests == [], "a converged host must not touch the API"


def test_a_changing_step_with_a_dependent_operation_is_snapshotted(
    tmp_path: Path, pve_double: RunningDouble
):
    double = pve_double.double
    _seed_vm(double)
    result = _run(tmp_path, pve_double, _DEPENDENT_STEP.format(path=str(tmp_path / "new")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(p.endswith("/snapshot") for p in _paths(double, "POST")), "no snapshot was taken"
    assert "Runs only after a change" in result.stdout + result.stderr
    pve_double.assert_all_accepted()


# A span whose proof comes after the guarded step: the step succeeds, the proof fails. The
# proof is inside the span, so its failure rolls the VM back, and the log names it.
_PROOF_STEP = """
    from tasks.ageis_node.snapshot_guard import open_span
    span = open_span("a test change")
    span.watch("test upgrade", lambda: python.call(name="Change the VM", function=change_vm))
    server.shell(name="Proof after the change", commands=["echo no GPU >&2; exit 4"],
                 _if=span.changed)
    span.close()
"""


def test_a_failing_proof_after_a_passing_step_rolls_the_vm_back(
    tmp_path: Path, pve_double: RunningDouble
) -> None:
    double = pve_double.double
    _seed_vm(double)
    result = _run(tmp_path, pve_double, _PROOF_STEP, wrap=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    vm = double.state.guests[100]
    assert vm["config"] == VM_CONFIG, "the VM was not rolled back"
    assert vm["snapshots"] == {}
    assert "test upgrade failed in 'Proof after the change'" in output, output[-3000:]
    assert "no GPU" in output
    pve_double.assert_all_accepted()


def test_a_passing_proof_releases_the_snapshot_after_it(
    tmp_path: Path, pve_double: RunningDouble
) -> None:
    double = pve_double.double
    _seed_vm(double)
    step = _PROOF_STEP.replace("echo no GPU >&2; exit 4", "true")
    result = _run(tmp_path, pve_double, step, wrap=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert double.state.guests[100]["config"]["cores"] == "8", "the change stays"
    assert double.state.guests[100]["snapshots"] == {}
    assert output.index("Proof after the change") < output.index("test upgrade done; snapshot")
    pve_double.assert_all_accepted()


def test_a_span_that_changes_nothing_runs_no_proof(tmp_path: Path, pve_double: RunningDouble):
    double = pve_double.double
    _seed_vm(double)
    step = _PROOF_STEP.replace(
        'lambda: python.call(name="Change the VM", function=change_vm)',
        f"lambda: files.directory(name='Already there', path={str(tmp_path)!r})",
    ).replace("echo no GPU >&2; exit 4", "exit 5")
    result = _run(tmp_path, pve_double, step, wrap=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert double.requests == [], "a converged host must not touch the API"
