"""tasks/common/pyinfra_speedups.py gives exactly what pyinfra's own functions give."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pyinfra
import pytest

from tasks.common import pyinfra_speedups
from tasks.common.pyinfra_speedups import operation_order_from_stack, original


def test_this_pyinfra_has_the_functions_it_replaces() -> None:
    assert pyinfra_speedups.supported() is None


def both(state: Any) -> tuple[list[int], list[int]]:
    # One line: both see this frame at the same line number.
    return original("get_operation_order_from_stack")(state), operation_order_from_stack(state)


def middle(state: Any) -> tuple[list[int], list[int]]:
    return both(state)


def outer(state: Any) -> tuple[list[int], list[int]]:
    return (
        middle(state)  # a call over several lines: its position's line counts
    )


@pytest.mark.parametrize("cli", [True, False])
@pytest.mark.parametrize("deploy_file", [__file__, "/nowhere/deploy.py", None])
def test_the_operation_order_is_pyinfras_own(monkeypatch, cli: bool, deploy_file: Any) -> None:
    monkeypatch.setattr(pyinfra, "is_cli", cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    theirs, ours = outer(state)
    assert ours == theirs
    assert len(ours) >= (4 if deploy_file == __file__ else 0)


def test_the_global_arguments_are_pyinfras_own_each_time_a_new_list() -> None:
    theirs = original("all_global_arguments")()
    pyinfra_speedups.install()
    from pyinfra.api import arguments, facts

    first, second = arguments.all_global_arguments(), facts.all_global_arguments()
    assert first == second == theirs
    first.append(("_x", int))
    assert arguments.all_global_arguments() == theirs, "a caller's change stays its own"


def test_switched_off_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(pyinfra_speedups.ENV_SWITCH, "0")
    assert pyinfra_speedups.install() is False
