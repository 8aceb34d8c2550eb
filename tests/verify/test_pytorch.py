"""PyTorch's ROCm build on ageis-node: installed as the data says, and computing on the GPU.

The GPU check needs the real R9700 and is marked ``hardware``: it skips where no AMD GPU is
declared, where ``pytorch_install`` is off (the lab: a container without GPU or internet) and on
the lab's stand-in ROCm.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tasks.ageis_node.pytorch import DATA as PYTORCH
from tasks.ageis_node.rocm import DATA as ROCM
from tasks.common.datamodel.machine import AGEIS_NODE
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify

ROLE = AGEIS_NODE
STANDIN = "/usr/share/homelab-standin/amdgpu-dkms"

# One matrix product on the GPU ("cuda" is HIP on a ROCm build) against the same on the CPU,
# in float32 (no reduced-precision shortcut), and what the build says about itself.
PROBE = """
import json, torch
torch.backends.cuda.matmul.allow_tf32 = False
available = torch.cuda.is_available()
found = {"version": torch.__version__, "hip": torch.version.hip, "available": available}
if available:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, generator=generator)
    b = torch.randn(512, 512, generator=generator)
    on_gpu = (a.to("cuda") @ b.to("cuda")).cpu()
    on_cpu = a @ b
    properties = torch.cuda.get_device_properties(0)
    found.update(
        device=torch.cuda.get_device_name(0),
        arch=properties.gcnArchName,
        max_abs_diff=float((on_gpu - on_cpu).abs().max()),
        close=bool(torch.allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)),
    )
print(json.dumps(found))
"""


def settings_or_skip(node: InventoryHost) -> dict:
    if not any(gpu.get("vendor") == "amd" for gpu in node.data.get("gpus") or []):
        pytest.skip(f"{node.name} declares no AMD GPU: no PyTorch")
    settings = PYTORCH.check(node.name, node.data)
    if not settings["pytorch_install"]:
        pytest.skip(f"{node.name}: pytorch_install is off (the lab: no GPU, no internet)")
    if node.testinfra.file(STANDIN).exists:
        pytest.skip("stand-in: no GPU (the installed ROCm is the lab's test double)")
    return settings


@pytest.mark.hardware
def test_a_matrix_product_on_the_gpu_matches_the_cpu(host_in: InventoryHost) -> None:
    settings = settings_or_skip(host_in)
    target = ROCM.check(host_in.name, host_in.data)["rocm_gfx_target"]
    python = f"{settings['pytorch_venv']}/bin/python"
    # Run as the rollout would leave any job: HSA_OVERRIDE_GFX_VERSION unset.
    found = json.loads(
        host_in.testinfra.check_output(
            f"env -u HSA_OVERRIDE_GFX_VERSION {shlex.quote(python)} -c {shlex.quote(PROBE)}"
        )
    )
    print(f"\n{host_in.name}: {found}")
    assert found["version"].split("+")[0] == settings["pytorch_version"], found
    assert found["hip"], f"{host_in.name}: torch {found['version']} is not a ROCm build"
    assert found["available"], f"{host_in.name}: torch.cuda.is_available() is False: no GPU"
    assert found["arch"].split(":")[0] == target, found
    assert found["close"], f"{host_in.name}: the GPU's product differs from the CPU's: {found}"
