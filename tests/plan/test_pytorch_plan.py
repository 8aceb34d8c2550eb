"""Plans of PyTorch (ROCm build) on ageis-node's real facts (Ubuntu 24.04, R9700 declared)."""

from __future__ import annotations

import pytest

from tasks.common.datamodel.preflight import InvalidData
from tests.plan.harness import Plan

HOST = "ageis-node"
VENV = "/opt/pytorch/venv"
PIP = f"{VENV}/bin/pip"
INSTALL = (
    f"umask 022 && {PIP} install --disable-pip-version-check --no-input --no-cache-dir"
    " --index-url https://download.pytorch.org/whl/rocm7.2 torch==2.11.0"
)
UNINSTALL = f"{PIP} uninstall --yes --disable-pip-version-check torch"


def pytorch_ops(result: Plan) -> list[str]:
    return [op.name for op in result.for_host(HOST) if op.name.startswith("PyTorch (ROCm)")]


def install_op(result: Plan):
    (op,) = [op for op in result.for_host(HOST) if "(ROCm) from https://" in op.name]
    return op


@pytest.fixture
def installed(fleet):
    """ageis-node after an earlier run installed PyTorch 2.11.0 for ROCm 7.2."""
    machine = fleet[HOST]
    machine.packages["python3-venv"] = "3.12.3-0ubuntu2"
    machine.directories.add("/opt/pytorch")
    machine.torch_in_venv_output = ["venv", "2.11.0+rocm7.2"]
    return machine


def test_a_fresh_node_gets_the_rocm_wheel_in_its_own_venv(plan_of) -> None:
    result = plan_of("deploys/ageis_node.py", limit=[HOST])
    venv = result.op(HOST, f"PyTorch's venv {VENV}")
    assert venv.commands == [f"umask 022 && python3 -m venv {VENV}"]
    op = install_op(result)
    assert op.name.endswith("PyTorch 2.11.0 (ROCm) from https://download.pytorch.org/whl/rocm7.2")
    assert op.commands[0] == INSTALL  # nothing to uninstall
    # Then what came is checked: this release, a ROCm build.
    check = op.commands[1]
    assert check.startswith(f"{VENV}/bin/python -c ")
    assert "torch.version.hip" in check and "expected 2.11.0+rocm7.2" in check
    assert "python3-venv" in " ".join(result.op(HOST, "Python venv for PyTorch").commands)


def test_pytorch_comes_after_rocm_and_ollama(plan_of) -> None:
    names = [op.name for op in plan_of("deploys/ageis_node.py", limit=[HOST]).for_host(HOST)]

    def at(part: str) -> int:
        return next(i for i, name in enumerate(names) if part in name)

    assert at("amdgpu-dkms, kernel headers") < at("Ollama runs and starts at boot")
    assert at("Ollama runs and starts at boot") < at(f"PyTorch's venv {VENV}")
    assert at(f"PyTorch's venv {VENV}") < at("(ROCm) from https://")


def test_the_version_and_index_come_from_the_data(plan_of) -> None:
    result = plan_of(
        "deploys/ageis_node.py",
        limit=[HOST],
        override_data={
            "pytorch_version": "2.12.0",
            "pytorch_index_url": "https://wheels.example/torch/rocm7.2/",
            "pytorch_venv": "/srv/ssd/pytorch/venv",
        },
    )
    op = install_op(result)
    assert op.commands[0] == (
        "umask 022 && /srv/ssd/pytorch/venv/bin/pip install --disable-pip-version-check"
        " --no-input --no-cache-dir --index-url https://wheels.example/torch/rocm7.2/"
        " torch==2.12.0"
    )
    assert "expected 2.12.0+rocm7.2" in op.commands[1]


def test_installed_pytorch_changes_nothing(plan_of, installed) -> None:
    result = plan_of("deploys/ageis_node.py", limit=[HOST])
    names = pytorch_ops(result)
    assert len(names) == 4  # python3-venv, the directory, the venv, torch
    for name in names:
        assert result.op(HOST, name).commands == [], name
    assert install_op(result).name.endswith(
        "PyTorch 2.11.0 (ROCm) from https://download.pytorch.org/whl/rocm7.2"
    )


@pytest.mark.parametrize(
    ("found", "why"),
    [
        ("2.11.0", "the same release from PyPI: a CUDA build"),
        ("2.11.0+cpu", "a CPU build"),
        ("2.11.0+rocm7.1", "built for another ROCm release than the index's"),
        ("2.10.0+rocm7.1", "an older release"),
    ],
)
def test_another_torch_is_replaced_and_named(plan_of, installed, found: str, why: str) -> None:
    installed.torch_in_venv_output = ["venv", found]
    op = install_op(plan_of("deploys/ageis_node.py", limit=[HOST]))
    assert f"PyTorch {found} -> 2.11.0 (ROCm)" in op.name, why
    assert op.commands[:2] == [UNINSTALL, INSTALL], why


def test_a_venv_without_torch_installs_it_without_making_the_venv_again(plan_of, installed) -> None:
    installed.torch_in_venv_output = ["venv"]
    result = plan_of("deploys/ageis_node.py", limit=[HOST])
    assert result.op(HOST, f"PyTorch's venv {VENV}").commands == []
    assert install_op(result).commands[0] == INSTALL


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("pytorch_version", "2.11", 'a PyTorch release such as "2.11.0"'),
        ("pytorch_version", "2.11.0+rocm7.2", 'no "+rocm..." part'),
        ("pytorch_version", "latest", 'a PyTorch release such as "2.11.0"'),
        ("pytorch_index_url", "http://download.pytorch.org/whl/rocm7.2", "an https URL"),
        ("pytorch_venv", "venv", "absolute"),
    ],
)
def test_bad_values_stop_the_run_naming_host_key_and_form(
    plan_of, key: str, value: str, expected: str
) -> None:
    with pytest.raises(InvalidData) as caught:
        plan_of("deploys/ageis_node.py", limit=[HOST], override_data={key: value})
    message = caught.value.message
    assert f"host 'ageis-node': key '{key}' is '{value}'; expected" in message
    assert expected in message


@pytest.mark.parametrize(
    "data", [{"pytorch_install": False}, {"gpus": [], "guest": None, "ollama_models": []}]
)
def test_no_pytorch_where_it_is_off_or_no_amd_gpu_is_declared(plan_of, data) -> None:
    result = plan_of("deploys/ageis_node.py", limit=[HOST], override_data=data)
    assert pytorch_ops(result) == []
