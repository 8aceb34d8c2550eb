"""The capacity preflight's arithmetic (tasks/ageis_node/model_capacity.py)."""

from __future__ import annotations

from tasks.ageis_node.model_capacity import GIB, fit


def test_seed_70b_on_r9700_and_16g_vm_is_offloaded_with_the_split() -> None:
    result = fit("llama3.1:70b", 42 * GIB, vram=32 * GIB, ram=16 * GIB,
                 gpu_overhead=2 * GIB, ram_reserve=4 * GIB)  # fmt: skip
    assert result.verdict == "offload"
    assert (result.on_gpu, result.in_ram, result.ram_needed) == (30 * GIB, 12 * GIB, 16 * GIB)
    text = result.report()
    assert "30.0 GiB on the GPU" in text and "12.0 GiB in system RAM" in text
    assert "needs 16.0 GiB of RAM" in text and "the host has 16.0 GiB" in text


def test_small_model_fits_the_gpu() -> None:
    result = fit("qwen3:14b", 9 * GIB, vram=32 * GIB, ram=16 * GIB,
                 gpu_overhead=2 * GIB, ram_reserve=4 * GIB)  # fmt: skip
    assert result.verdict == "gpu" and result.in_ram == 0
    assert "fits the GPU" in result.report()


def test_too_big_is_no_fit_with_the_shortfall() -> None:
    result = fit("llama3.1:405b", 243 * GIB, vram=32 * GIB, ram=16 * GIB,
                 gpu_overhead=2 * GIB, ram_reserve=4 * GIB)  # fmt: skip
    assert result.verdict == "no-fit"
    assert "213.0 GiB in system RAM" in result.report()
    assert "cannot be loaded (201.0 GiB short)" in result.report()


def test_without_gpu_everything_is_in_ram() -> None:
    result = fit("tiny", GIB, vram=0, ram=16 * GIB, gpu_overhead=2 * GIB, ram_reserve=4 * GIB)
    assert (result.on_gpu, result.in_ram, result.verdict) == (0, GIB, "offload")
    assert "no GPU" in result.report()
