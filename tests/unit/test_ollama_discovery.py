"""Reading Ollama's GPU discovery from its journal (tasks/ageis_node/ollama_discovery.py).

The lines are in the format of Ollama's own slog output (discover/types.go, discover/runner.go
of 0.20.7 and 0.32): the R9700 found through ROCm, the CPU fallback after the probe timed out
(the shape of https://github.com/ollama/ollama/issues/13236), and the wording of later releases.
The shell command runs for real against stand-ins of systemctl and journalctl (test doubles on
PATH that print a recorded journal).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tasks.ageis_node.ollama_discovery import (
    HEAD_LINES,
    KEEP_LINES,
    LINE_CHARS,
    Discovery,
    OllamaDiscovery,
    command,
    confirm_after_start,
    fields,
    gpu_problem,
    parse,
)
from tests.plan.machines import OLLAMA_CPU_FALLBACK, OLLAMA_ON_GPU

TARGET = "gfx1201"
SERVER_CONFIG = (
    'time=2026-05-02T09:14:01.100Z level=INFO source=routes.go:1600 msg="server config"'
    ' env="map[HSA_OVERRIDE_GFX_VERSION: OLLAMA_DEBUG:INFO OLLAMA_HOST:http://127.0.0.1:11434]"'
)
DISCOVERING = (
    "time=2026-05-02T09:14:01.200Z level=INFO source=runner.go:67"
    ' msg="discovering available GPUs..."'
)
GIN = '[GIN] 2026/05/02 - 09:15:00 | 200 |      35.2µs |       127.0.0.1 | GET      "/api/version"'
# Ollama 0.30 and later: the probe runs through llama-server, with a watchdog.
LLAMA_SERVER_FAILURE = (
    "time=2026-08-01T08:00:30.010Z level=INFO source=runner.go:522"
    ' msg="failure during llama-server GPU discovery"'
    ' OLLAMA_LIBRARY_PATH="[/usr/lib/ollama /usr/lib/ollama/rocm_v7_2]" extra_envs=map[]'
    ' error="failed to finish discovery before timeout" detail=""'
)
WATCHDOG = (
    "time=2026-08-01T08:00:30.000Z level=WARN source=runner.go:584"
    ' msg="llama-server GPU discovery watchdog timed out"'
    ' OLLAMA_LIBRARY_PATH="[/usr/lib/ollama /usr/lib/ollama/rocm_v7_2]" extra_envs=map[]'
    ' error="context deadline exceeded"'
)


def test_fields_reads_slogs_quoting() -> None:
    line = (
        'time=t level=INFO msg="entering low vram mode" "total vram"="0 B" threshold="20.0 GiB"'
        ' note="a \\"quoted\\" word" empty=""'
    )
    assert fields(line) == {
        "time": "t",
        "level": "INFO",
        "msg": "entering low vram mode",
        "total vram": "0 B",
        "threshold": "20.0 GiB",
        "note": 'a "quoted" word',
        "empty": "",
    }


def test_the_r9700_through_rocm_is_the_gpu_proof() -> None:
    discovery = parse(OLLAMA_ON_GPU)
    device = discovery.rocm(TARGET)
    assert device is not None
    assert (device.library, device.compute, device.name, device.description, device.total) == (
        "ROCm",
        "gfx1201",
        "ROCm0",
        "AMD Radeon AI PRO R9700",
        "31.9 GiB",
    )
    assert gpu_problem(discovery, TARGET) is None
    assert discovery.rocm("gfx1100") is None


def test_the_13236_timeout_and_cpu_fallback_is_named_with_its_lines() -> None:
    discovery = parse(OLLAMA_CPU_FALLBACK)
    assert discovery.started and discovery.reported
    assert [d.library for d in discovery.devices] == ["cpu"] and discovery.devices[0].is_cpu
    assert gpu_problem(discovery, TARGET) == (
        'the log says: msg="failure during GPU discovery"'
        ' error="failed to finish discovery before timeout";'
        ' msg="bootstrap discovery took" duration="30.000960852s";'
        ' msg="inference compute" library=cpu total="15.6 GiB"'
    )


def test_a_vulkan_device_of_the_card_is_not_rocm() -> None:
    vulkan = (
        OLLAMA_ON_GPU[1]
        .replace("library=ROCm", "library=Vulkan")
        .replace("name=ROCm0", "name=Vulkan0")
    )
    problem = gpu_problem(parse([OLLAMA_ON_GPU[0], vulkan]), TARGET)
    assert problem is not None and 'library=Vulkan compute="gfx1201"' in problem


def test_later_releases_wording_counts_as_a_failure() -> None:
    discovery = parse(["invocation 1", WATCHDOG, LLAMA_SERVER_FAILURE])
    assert discovery.started and not discovery.reported
    assert gpu_problem(discovery, TARGET) == (
        'its journal since the start has no "inference compute" line'
        ' (msg="llama-server GPU discovery watchdog timed out" error="context deadline exceeded";'
        ' msg="failure during llama-server GPU discovery"'
        ' error="failed to finish discovery before timeout")'
    )


def test_repeated_failures_are_named_once() -> None:
    repeated = [OLLAMA_CPU_FALLBACK[0], *[OLLAMA_CPU_FALLBACK[1]] * 5, OLLAMA_CPU_FALLBACK[-1]]
    problem = gpu_problem(parse(repeated), TARGET) or ""
    assert problem.count("failure during GPU discovery") == 1


@pytest.mark.parametrize("output", [[], [SERVER_CONFIG]])
def test_no_invocation_means_not_started(output: list[str]) -> None:
    discovery = parse(output)
    assert not discovery.started
    assert gpu_problem(discovery, TARGET) == (
        "ollama.service has not run (no invocation to read the journal of)"
    )


def test_a_started_unit_without_lines_has_reported_nothing() -> None:
    discovery = OllamaDiscovery().process(["invocation 42"])
    assert discovery.started and not discovery.reported
    assert "no discovery line at all" in (gpu_problem(discovery, TARGET) or "")


def test_after_a_start_it_asks_again_until_discovery_reported() -> None:
    answers = [parse(["invocation 7"]), parse(["invocation 7"]), parse(OLLAMA_ON_GPU)]
    pauses: list[float] = []
    problem = confirm_after_start(lambda: answers.pop(0), TARGET, attempts=5, sleep=pauses.append)
    assert problem is None and pauses == [2.0, 2.0] and answers == []


def test_after_a_start_it_gives_up_and_says_what_it_saw() -> None:
    reads: list[Discovery] = []

    def read() -> Discovery:
        reads.append(parse(["invocation 7", WATCHDOG]))
        return reads[-1]

    problem = confirm_after_start(read, TARGET, attempts=3, pause=0.5, sleep=lambda _: None)
    assert len(reads) == 3
    assert problem is not None and "watchdog timed out" in problem


def test_a_cpu_answer_after_a_start_is_final_at_once() -> None:
    answers = [parse(OLLAMA_CPU_FALLBACK), parse(OLLAMA_ON_GPU)]
    problem = confirm_after_start(lambda: answers.pop(0), TARGET, sleep=lambda _: None)
    assert problem is not None and "library=cpu" in problem


def _run(tmp_path: Path, invocation: str, journal: list[str]) -> list[str]:
    """The fact's command with test doubles of systemctl and journalctl first on PATH."""
    (tmp_path / "journal").write_text("".join(f"{line}\n" for line in journal))
    doubles = {
        "systemctl": f"#!/bin/sh\necho '{invocation}'\n",
        "journalctl": (
            '#!/bin/sh\ncase "$*" in *"_SYSTEMD_INVOCATION_ID=' + invocation + '"*) '
            f'cat "{tmp_path}/journal" ;; esac\n'
        ),
    }
    for name, text in doubles.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", "-c", command()], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout.splitlines()


def test_the_command_prints_the_invocation_and_only_the_discovery_lines(tmp_path: Path) -> None:
    journal = [SERVER_CONFIG, DISCOVERING, *OLLAMA_CPU_FALLBACK[1:], GIN, GIN]
    output = _run(tmp_path, "9a1e0c4b", journal)
    assert output == ["invocation 9a1e0c4b", *OLLAMA_CPU_FALLBACK[1:]]
    assert parse(output) == parse(["invocation 9a1e0c4b", *OLLAMA_CPU_FALLBACK[1:]])


def test_the_command_prints_nothing_for_a_unit_that_has_not_run(tmp_path: Path) -> None:
    assert _run(tmp_path, "", OLLAMA_ON_GPU[1:]) == []


def test_the_commands_output_is_bounded(tmp_path: Path) -> None:
    long_failure = OLLAMA_CPU_FALLBACK[1] + " detail=" + "x" * 5000
    early = [long_failure] * (KEEP_LINES + 10)
    late = [GIN] * HEAD_LINES + [OLLAMA_ON_GPU[1]]  # past the head: not read
    output = _run(tmp_path, "abc", [*early, *late])
    assert output[0] == "invocation abc" and len(output) == KEEP_LINES + 1
    assert all(len(line) <= LINE_CHARS for line in output)
    assert parse(output).rocm(TARGET) is None
