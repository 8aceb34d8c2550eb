"""The capacity preflight's arithmetic and refusals (tasks/ageis_node/model_capacity.py)."""

from __future__ import annotations

import re

import pytest

from tasks.ageis_node.model_capacity import GIB, Budget, capacity_problems, fit, gib


def budget(ram: int = 16, *, vram: int = 32, allow_offload: bool = False) -> Budget:
    """The R9700 (32 GiB, 2 GiB overhead) in a VM with ``ram`` GiB: PostgreSQL 12 %, 4 GiB
    reserve for the OS, actr-engine, the pipeline and Ollama's buffers."""
    return Budget(
        vram=vram * GIB,
        gpu_overhead=2 * GIB,
        ram=ram * GIB,
        postgresql=ram * GIB * 12 // 100,
        postgresql_percent=12,
        reserve=4 * GIB,
        allow_offload=allow_offload,
    )


def test_budget_counts_postgresqls_share_and_the_reserve() -> None:
    b = budget(16)
    assert b.vram_usable == 30 * GIB
    assert b.ram_left == 16 * GIB - 16 * GIB * 12 // 100 - 4 * GIB  # 10.1 GiB
    text = b.describe()
    assert "VRAM usable 30.0 GiB (32.0 GiB - 2.0 GiB ollama_gpu_overhead)" in text
    assert "RAM left 10.1 GiB (16.0 GiB - 1.9 GiB PostgreSQL at postgresql_memory_percent 12 %" in (
        text
    )


def test_a_small_model_fits_the_gpu() -> None:
    result = fit("qwen3:14b", 9 * GIB, budget())
    assert (result.verdict, result.on_gpu, result.in_ram) == ("gpu", 9 * GIB, 0)
    assert result.report() == (
        "qwen3:14b (9.0 GiB) fits the GPU: 30.0 GiB of VRAM usable (32.0 GiB - 2.0 GiB"
        " overhead), 21.0 GiB to spare"
    )


def test_the_seed_70b_in_16_gib_is_refused_even_with_offload_allowed() -> None:
    """The run that printed "0.0 GiB left - tight" and pulled 42 GB: PostgreSQL's share was
    not counted. Counted, 12 GiB of weights do not fit the 10.1 GiB the services leave."""
    result = fit("llama3.1:70b-instruct-q4_K_M", 42 * GIB, budget(16, allow_offload=True))
    assert result.verdict == "refused"
    assert (result.on_gpu, result.in_ram) == (30 * GIB, 12 * GIB)
    text = result.refusal()
    assert text.startswith(
        "llama3.1:70b-instruct-q4_K_M (42.0 GiB) is refused: split, 30.0 GiB on the GPU and"
        " 12.0 GiB in system RAM, but the other services leave 10.1 GiB of RAM: 1.9 GiB short."
    )
    assert "Budget: VRAM usable 30.0 GiB" in text and "RAM left 10.1 GiB" in text
    assert "Nothing was pulled or changed" in text
    assert "give the VM more RAM (memory and guest.memory)" in text


def test_offload_where_allowed_passes_with_the_split() -> None:
    result = fit("llama3.1:70b-instruct-q4_K_M", 42 * GIB, budget(24, allow_offload=True))
    assert result.verdict == "offload"
    text = result.report()
    assert "CPU offload (ollama_allow_cpu_offload), 30.0 GiB on the GPU (71%)" in text
    assert "12.0 GiB in system RAM of the 17.1 GiB the other services leave" in text
    assert text.endswith("; 5.1 GiB of RAM to spare")


def test_offload_not_allowed_is_refused_though_the_ram_would_hold_it() -> None:
    result = fit("llama3.1:70b-instruct-q4_K_M", 42 * GIB, budget(24))
    assert result.verdict == "refused"
    text = result.refusal()
    assert "CPU offload is not allowed (ollama_allow_cpu_offload is False: the GPU is" in text
    assert "the RAM part would fit (5.1 GiB to spare)" in text
    assert "Fix: a smaller quantisation that fits 30.0 GiB of VRAM, or set" in text
    assert "ollama_allow_cpu_offload = True to run it split between GPU and CPU" in text


@pytest.mark.parametrize("spare", [0, -1, -GIB])
def test_zero_or_negative_headroom_is_refused(spare: int) -> None:
    b = budget(16, allow_offload=True)
    size = b.vram_usable + b.ram_left - spare  # in RAM: exactly what is left, then more
    result = fit("edge", size, b)
    assert result.ram_spare == spare
    assert result.verdict == "refused"
    assert ("no room to spare" if spare == 0 else "short") in result.refusal()


def test_a_little_room_passes_as_tight_and_never_reads_as_zero() -> None:
    b = budget(16, allow_offload=True)
    result = fit("edge", b.vram_usable + b.ram_left - 50 * 1024**2, b)
    assert result.verdict == "offload"
    assert result.report().endswith("; 50 MiB of RAM to spare - tight")
    assert not re.search(r"(?<![0-9])0\.0 GiB", result.report())


def test_a_model_exactly_the_size_of_usable_vram_has_no_room_on_the_gpu() -> None:
    b = budget(24)
    result = fit("edge", b.vram_usable, b)
    assert not result.fits_gpu and result.verdict == "refused"


def test_without_a_gpu_everything_is_in_ram_and_must_fit_it() -> None:
    tiny = fit("tiny", GIB, budget(16, vram=0))
    assert (tiny.verdict, tiny.on_gpu, tiny.in_ram) == ("cpu", 0, GIB)
    assert "no GPU declared, runs on the CPU" in tiny.report()
    big = fit("big", 12 * GIB, budget(16, vram=0))
    assert big.verdict == "refused"
    assert "no GPU is declared, so all of it must sit in system RAM" in big.refusal()


def test_services_that_take_all_the_ram_refuse_even_a_model_on_the_gpu() -> None:
    b = Budget(32 * GIB, 2 * GIB, 4 * GIB, GIB, 25, 4 * GIB, False)
    result = fit("qwen3:4b", 3 * GIB, b)
    assert result.fits_gpu and result.verdict == "refused"
    assert "the host's other services leave no RAM for Ollama" in result.refusal()


def values(**changes: object) -> dict[str, object]:
    """A host's normalised values as data validation hands them to the schema's check."""
    base: dict[str, object] = {
        "memory": 16 * GIB,
        "gpus": [{"name": "r9700", "vendor": "amd", "vram": 32 * GIB}],
        "postgresql_memory": None,
        "postgresql_memory_percent": 12,
        "ollama_gpu_overhead": 2 * GIB,
        "ollama_ram_reserve": 4 * GIB,
        "ollama_allow_cpu_offload": False,
        "ollama_models": [{"name": "llama3.1:70b-instruct-q4_K_M", "size": 42 * GIB}],
    }
    return {**base, **changes}


def test_validation_names_the_refused_model_with_its_size_and_budget() -> None:
    ((key, given, expected),) = capacity_problems(values())
    assert key == "ollama_models[0]"
    assert given == {"name": "llama3.1:70b-instruct-q4_K_M", "size": "42.0 GiB"}
    assert expected.startswith("a model this host can hold: llama3.1:70b-instruct-q4_K_M")
    assert "VRAM usable 30.0 GiB" in expected and "RAM left 10.1 GiB" in expected


def test_validation_sizes_postgresql_as_the_memory_store_does() -> None:
    # postgresql_memory, when set, is what PostgreSQL is sized from: 50 % of 20 GiB = 10 GiB.
    fits = [{"name": "qwen3:14b", "size": 9 * GIB}]
    assert list(capacity_problems(values(ollama_models=fits))) == []
    starved = values(ollama_models=fits, postgresql_memory=20 * GIB, postgresql_memory_percent=80)
    ((_, _, expected),) = capacity_problems(starved)
    assert "16.0 GiB PostgreSQL at postgresql_memory_percent 80 %" in expected
    assert "the host's other services leave no RAM for Ollama" in expected


def test_validation_leaves_a_host_without_declared_ram_to_the_plan() -> None:
    assert list(capacity_problems(values(memory=None))) == []
    partial = values()
    del partial["postgresql_memory_percent"]  # a task reading only its own schema
    assert list(capacity_problems(partial)) == []


def test_small_amounts_read_in_mib_never_as_zero() -> None:
    assert gib(1024**2) == "1 MiB"
    assert gib(42 * GIB) == "42.0 GiB"
    assert gib(0) == "0.0 GiB"
