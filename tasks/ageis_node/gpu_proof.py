"""The proof that a change to ROCm, Ollama or the model works, read after the reboot or restart.

Three checks, each one operation of the snapshot guard's span (``inference_guard.py``), so a
failure rolls the VM back and the guard's message names the check that failed:

1. **rocminfo** lists a GPU agent of ``rocm_gfx_target`` (the amdgpu driver is loaded and the
   ROCm runtime reaches the card). Where the data says the host lacks the card
   (``rocm_check_pci = False``, the lab) only that rocminfo is installed.
2. **Ollama's discovery** at its current start names a ROCm device of that target
   (``ollama_discovery.py``, the journal of the unit's current invocation), where
   ``ollama_gpu_proof`` is on.
3. **ollama-model-ready.service** ran since Ollama's current start and succeeded: it loaded the
   configured model and, where an AMD GPU is declared and checked, found part of it in VRAM
   (``/api/ps`` ``size_vram`` > 0, ``files/ollama-model-ready``).

Each check is a ``python.call`` on the controller that reads a fact of the host when it runs
(the fact cache holds no answer while a Python step runs, so every read is fresh): the
discovery's parser is Python and stays on the controller, and the host needs nothing new. A
failed check raises with what the host said (rocminfo's last lines, the discovery lines, the
unit's journal since its start).
"""

from __future__ import annotations

from typing import Any, TypedDict

from pyinfra import host, logger
from pyinfra.api import FactBase

from tasks.ageis_node.ollama_discovery import OllamaDiscovery, confirm_after_start

READY_UNIT = "ollama-model-ready.service"
OLLAMA_UNIT = "ollama.service"
# rocminfo stops on a hung driver; the lines kept of its output and of the unit's journal.
ROCMINFO_TIMEOUT = 60
TAIL_LINES = 6
JOURNAL_LINES = 15
LINE_CHARS = 400


class RocmInfo(TypedDict):
    installed: bool
    status: int | None  # rocminfo's exit status (None: it did not run)
    agents: list[str]  # the gfx targets of its GPU agents
    tail: list[str]  # its last lines, for the message


class RocmAgents(FactBase[RocmInfo]):
    """What ``rocminfo`` lists: the gfx targets of its GPU agents, its exit status, its tail."""

    reads_other_hosts = False

    def command(self) -> str:
        return (
            "r=$(command -v rocminfo || echo /opt/rocm/bin/rocminfo); "
            '[ -x "$r" ] || { echo "#missing"; exit 0; }; '
            f'out=$(timeout {ROCMINFO_TIMEOUT} "$r" 2>&1); echo "#exit $?"; '
            "printf '%s\\n' \"$out\" | sed -n 's/^ *Name: *\\(gfx[0-9a-f]*\\) *$/#agent \\1/p'"
            " | sort -u | head -n 16; "
            f"printf '%s\\n' \"$out\" | tail -n {TAIL_LINES} | cut -c1-{LINE_CHARS}"
        )

    def process(self, output: list[str]) -> RocmInfo:
        info = RocmInfo(installed=True, status=None, agents=[], tail=[])
        for line in output:
            word, _, rest = line.strip().partition(" ")
            if word == "#missing":
                info["installed"] = False
            elif word == "#exit" and rest.strip().isdigit():
                info["status"] = int(rest)
            elif word == "#agent":
                info["agents"].append(rest.strip())
            elif line.strip():
                info["tail"].append(line.strip())
        return info


class UnitRuns(FactBase[dict[str, Any]]):
    """ollama-model-ready's and Ollama's current runs (``systemctl show``), and the journal of
    ollama-model-ready's current invocation (its last lines)."""

    reads_other_hosts = False

    def command(self) -> str:
        props = "-p ActiveState -p Result -p ExecMainStartTimestampMonotonic -p InvocationID"
        return (
            f'for u in {READY_UNIT} {OLLAMA_UNIT}; do echo "#unit $u";'
            f' systemctl show {props} "$u" 2>/dev/null; done; echo "#journal";'
            f" id=$(systemctl show -p InvocationID --value {READY_UNIT} 2>/dev/null);"
            ' [ -n "$id" ] && journalctl -q -o cat --no-pager "_SYSTEMD_INVOCATION_ID=$id"'
            f" 2>/dev/null | tail -n {JOURNAL_LINES} | cut -c1-{LINE_CHARS}; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        runs: dict[str, Any] = {READY_UNIT: {}, OLLAMA_UNIT: {}, "journal": []}
        current: str | None = None
        for line in output:
            text = line.strip()
            if text.startswith("#unit "):
                current = text.removeprefix("#unit ")
            elif text == "#journal":
                current = "journal"
            elif current == "journal":
                runs["journal"].append(text)
            elif current in runs and "=" in text:
                key, _, value = text.partition("=")
                runs[current][key] = value
        return runs


def _monotonic(unit: dict[str, str]) -> int:
    value = unit.get("ExecMainStartTimestampMonotonic", "0")
    return int(value) if value.isdigit() else 0


def model_ready_problem(runs: dict[str, Any]) -> str | None:
    """None when ollama-model-ready ran since Ollama's current start and succeeded."""
    ready, ollama = runs[READY_UNIT], runs[OLLAMA_UNIT]
    state, result = ready.get("ActiveState", "unknown"), ready.get("Result", "unknown")
    journal = "; ".join(runs["journal"]) or "no journal lines"
    if ollama.get("ActiveState") != "active":
        return f"{OLLAMA_UNIT} is {ollama.get('ActiveState', 'unknown')}, not active"
    if state == "active" and _monotonic(ready) < _monotonic(ollama):
        return (
            f"{READY_UNIT} last ran before Ollama's current start: it was not run again, so"
            " nothing loaded the model since"
        )
    if state == "active" and result == "success":
        return None
    if state in ("activating", "reloading"):
        return f"{READY_UNIT} is still loading the model after the wait ({state}): {journal}"
    if state == "inactive" and result == "success":
        return f"{READY_UNIT} has not run since Ollama's start (inactive)"
    return f"{READY_UNIT} is {state} (result {result}); its journal: {journal}"


def rocm_problem(info: RocmInfo, target: str, card: bool) -> str | None:
    """None when rocminfo lists ``target`` (``card``), or is installed (no card here)."""
    if not info["installed"]:
        return "rocminfo is not installed (package rocminfo, part of rocm_packages by default)"
    if not card or target in info["agents"]:
        return None
    listed = ", ".join(info["agents"]) or "no GPU agent"
    tail = "; ".join(info["tail"]) or "no output"
    return f"rocminfo lists {listed} (exit status {info['status']}), not {target}: {tail}"


def _failed(what: str, check: str, problem: str, hint: str) -> RuntimeError:
    return RuntimeError(
        f"host {host.name!r}: the proof after {what} failed: {check}: {problem}. {hint}"
    )


def prove_rocm(span: Any, target: str, card: bool, amdgpu: str) -> None:
    """python.call: rocminfo lists ``target`` (or, without the card, is installed)."""
    problem = rocm_problem(host.get_fact(RocmAgents), target, card)
    if problem:
        raise _failed(
            span.reason(),
            "rocminfo",
            problem,
            f"The amdgpu driver (amdgpu-dkms of amdgpu {amdgpu}) is not working at this boot:"
            " `dkms status` must show amdgpu built for the running kernel; `sudo dmesg | grep"
            " -i -e amdgpu -e kfd` shows why it did not load",
        )
    said = f"lists {target}" if card else "is installed (no card here: not run for a GPU)"
    logger.info(f"{host.name}: proof: rocminfo {said}")


def prove_discovery(span: Any, target: str) -> None:
    """python.call: Ollama's discovery since its current start names a ROCm ``target``."""
    problem = confirm_after_start(lambda: host.get_fact(OllamaDiscovery), target)
    if problem:
        raise _failed(
            span.reason(),
            f"Ollama's GPU discovery since its start found no ROCm device {target}",
            problem,
            "Ollama runs on the CPU. Its ROCm 7 libraries need the ROCm 7 kernel driver"
            ' (Ollama\'s troubleshooting, "AMD Driver Version Mismatch"); leave'
            " HSA_OVERRIDE_GFX_VERSION unset",
        )
    logger.info(f"{host.name}: proof: Ollama runs on the GPU (ROCm {target})")


def prove_model_ready(span: Any) -> None:
    """python.call: ollama-model-ready ran since Ollama's start and succeeded."""
    problem = model_ready_problem(host.get_fact(UnitRuns))
    if problem:
        raise _failed(
            span.reason(),
            "the model is not ready",
            problem,
            f"`journalctl -u {READY_UNIT} -b` has the whole story (where an AMD GPU is"
            " declared the unit requires the model in VRAM: /api/ps size_vram > 0)",
        )
    logger.info(f"{host.name}: proof: {READY_UNIT} loaded the model since Ollama's start")
