"""The GPU proof's facts and verdicts (tasks/ageis_node/gpu_proof.py), from their commands'
output as the host prints it (tests/plan/machines.py holds the real cases)."""

from __future__ import annotations

import subprocess

from tasks.ageis_node.gpu_proof import (
    RocmAgents,
    UnitRuns,
    model_ready_problem,
    rocm_problem,
)
from tests.plan.machines import (
    MODEL_READY_AFTER_START,
    MODEL_READY_ON_CPU,
    ROCMINFO_NO_GPU,
    ROCMINFO_R9700,
)


def runs(lines: list[str]) -> dict:
    return UnitRuns().process(lines)


def test_rocminfo_lists_the_target_or_says_what_it_said() -> None:
    assert rocm_problem(RocmAgents().process(ROCMINFO_R9700), "gfx1201", card=True) is None
    other = RocmAgents().process(["#exit 0", "#agent gfx1100"])
    assert rocm_problem(other, "gfx1201", card=True) == (
        "rocminfo lists gfx1100 (exit status 0), not gfx1201: no output"
    )
    problem = rocm_problem(RocmAgents().process(ROCMINFO_NO_GPU), "gfx1201", card=True)
    assert problem and problem.startswith(
        "rocminfo lists no GPU agent (exit status 1), not gfx1201: ROCk module version 6.8.0"
    )
    # Without the card (the lab) rocminfo need only be there; missing, it is a failure.
    assert rocm_problem(RocmAgents().process(ROCMINFO_NO_GPU), "gfx1201", card=False) is None
    assert "not installed" in (rocm_problem(RocmAgents().process(["#missing"]), "gfx1201", False))


def test_the_rocminfo_command_reads_agents_from_rocminfo_output(tmp_path) -> None:
    # The fact's own command, with a stand-in rocminfo printing rocminfo's agent lines.
    fake = tmp_path / "rocminfo"
    fake.write_text(
        "#!/bin/sh\necho '*******'\necho 'Agent 2'\necho '  Name:                    gfx1201'\n"
        "echo '  Marketing Name:          AMD Radeon AI PRO R9700'\necho '*** Done ***'\n"
    )
    fake.chmod(0o755)
    command = RocmAgents().command().replace("command -v rocminfo", f"echo {fake}")
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    info = RocmAgents().process(output.stdout.splitlines())
    assert info["installed"] and info["status"] == 0 and info["agents"] == ["gfx1201"]
    assert info["tail"][-1] == "*** Done ***"


def test_model_ready_must_have_run_since_ollamas_start_and_succeeded() -> None:
    assert model_ready_problem(runs(MODEL_READY_AFTER_START)) is None
    failed = model_ready_problem(runs(MODEL_READY_ON_CPU))
    assert failed and failed.startswith(
        "ollama-model-ready.service is failed (result exit-code); its journal:"
        " ollama-model-ready: FAILED: llama3.1:70b-instruct-q4_K_M loaded on the CPU only"
    )
    # Active from a run before Ollama's current start: nothing loaded the model since.
    stale = [line.replace("=41862310", "=1000") for line in MODEL_READY_AFTER_START]
    assert "last ran before Ollama's current start" in (model_ready_problem(runs(stale)) or "")
    loading = list(MODEL_READY_AFTER_START)
    loading[loading.index("ActiveState=active")] = "ActiveState=activating"  # the unit's own
    assert "still loading the model after the wait (activating)" in (
        model_ready_problem(runs(loading)) or ""
    )
    assert model_ready_problem(runs([])) == "ollama.service is unknown, not active"
