"""The full rollout's operations in one order over every host, as pyinfra's CLI orders them.

pyinfra identifies an operation across hosts by the line numbers of its call stack, and joins
the hosts' operation sequences into one graph. Two different operations that share a call
stack on two hosts (tasks called from one loop line, at equal line numbers in their modules)
become one node with two places, a cycle, and the run stops before it starts: "Cycle detected
in operation ordering DAG". The modelled fleet is planned in one state here, with the VM's
cloud-init still active (a first install), whose hand-over is planned only there.
"""

from __future__ import annotations

from pathlib import Path

from tests.doubles.fixtures import RunningDouble
from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import fleet_order
from tests.plan.machines import Machine


def test_the_full_rollout_has_one_operation_order_over_all_hosts(
    controller_home: Path, fleet: dict[str, Machine], pve_double: RunningDouble
) -> None:
    fleet["ageis-node"].cloud_init = "active"  # the VM's first run: cloud-init's hand-over
    order = fleet_order(
        "deploys/full.py",
        {name: machine.facts() for name, machine in fleet.items()},
        home=controller_home,
        secrets=PLAN_SECRETS,
        override_data=pve_double.data,
    )
    # One operation may carry several names (hosts pass it different arguments), never
    # the names of two tasks (the text before " | " is the task's).
    merged = [n for n in order if len({name.split(" | ")[0] for name in n}) > 1]
    assert merged == [], f"operations of different tasks taken for one: {merged}"
    names = [" / ".join(n) for n in order]
    handover = next(i for i, n in enumerate(names) if "cloud-init hands the host over" in n)
    journal = next(i for i, n in enumerate(names) if "Journal size cap" in n)
    assert handover < journal, "BASE order: cloud-init's hand-over comes first"
