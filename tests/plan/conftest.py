"""Plan-test fixtures: a controller home with an admin public key, and the real fleet's facts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.common.datamodel.registry import secret_specs
from tests.doubles.fixtures import RunningDouble, pve_double, pve_double_cert  # noqa: F401
from tests.plan.harness import Plan, plan
from tests.plan.machines import Machine, real_fleet

# Plan tests need some value for each declared secret; these are not credentials of anything.
PLAN_SECRETS = {spec.name: "plan-test-double" for spec in secret_specs()}


@pytest.fixture(scope="session")
def controller_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir()
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "plan-test",
            "-f",
            str(home / ".ssh" / "id_ed25519"),
        ],
        check=True,
    )
    return home


@pytest.fixture
def fleet() -> dict[str, Machine]:
    return real_fleet()


@pytest.fixture
def plan_of(
    controller_home: Path,
    fleet: dict[str, Machine],
    pve_double: RunningDouble,  # noqa: F811
):
    """Plan a deploy file over the fleet; the hypervisor's Proxmox API is the test double
    (``pve_double``, empty unless a test fills it), every request checked against the schema."""

    def run(deploy_file: str, **kwargs) -> Plan:
        facts = {name: machine.facts() for name, machine in fleet.items()}
        kwargs["override_data"] = {**pve_double.data, **kwargs.get("override_data", {})}
        return plan(deploy_file, facts, home=controller_home, secrets=PLAN_SECRETS, **kwargs)

    return run


@pytest.fixture
def full(plan_of) -> Plan:
    """The whole fleet's plan of ``deploys/full.py``."""
    return plan_of("deploys/full.py")
