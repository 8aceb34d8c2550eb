"""Capacity preflight for Ollama's models: a model the host cannot hold is refused.

Pure arithmetic over the data (no host facts), so the answer is known before anything
connects: data validation (``capacity_problems``, a check of Ollama's schema) refuses such a
model before any host is touched, and Ollama's task repeats the assessment (``preflight``) to
report where each model goes in the plan and the rollout.

A host's budget:

- VRAM usable: the declared AMD GPUs' VRAM less ``ollama_gpu_overhead``, what Ollama needs
  there besides the weights (its runtime, the KV cache of the context, the compute graph);
- RAM left: the host's RAM (``memory``) less PostgreSQL's share (``postgresql_memory_percent``
  of the RAM the memory store is sized from: shared buffers, work and maintenance memory) less
  ``ollama_ram_reserve`` (the OS, actr-engine, the pipeline and Ollama's own buffers: the KV
  cache and compute buffers of offloaded layers, the ROCm runtime).

Verdicts, each with room to spare (zero or less is no room, and a refusal):

- ``gpu``: the weights fit the usable VRAM;
- ``offload``: they do not, the data allows CPU offload (``ollama_allow_cpu_offload``) and the
  rest fits the RAM left; reported with the split (slower: every token also runs the offloaded
  layers on the CPU);
- ``cpu``: the data declares no GPU, so everything runs from the RAM left;
- ``refused``: anything else, a model that needs offload where it is not allowed included (the
  GPU is the point). The message names the host, the model, its size, the budget and the fixes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra import logger

from tasks.ageis_node.memory_store import DATA as MEMORY_STORE
from tasks.common.datamodel.keys import Problem, check_key
from tasks.common.datamodel.machine import MACHINE

GIB = 1024**3
MIB = 1024**2
# Keys of other schemas the budget reads (the host's machine data and the memory store's).
MACHINE_KEYS = ("memory", "gpus")
MEMORY_STORE_KEYS = ("postgresql_memory", "postgresql_memory_percent")


def gib(size: int) -> str:
    """A byte count as GiB with one decimal ("42.0 GiB"); below 0.1 GiB in MiB ("12 MiB"), so
    a small amount never reads as "0.0 GiB"."""
    if size and abs(size) < GIB // 10:
        return f"{size / MIB:.0f} MiB"
    return f"{size / GIB:.1f} GiB"


@dataclass(frozen=True)
class Budget:
    """What one host offers Ollama's models: usable VRAM and the RAM the other services leave."""

    vram: int
    gpu_overhead: int
    ram: int
    postgresql: int
    postgresql_percent: int
    reserve: int
    allow_offload: bool

    @property
    def vram_usable(self) -> int:
        return max(self.vram - self.gpu_overhead, 0)

    @property
    def ram_left(self) -> int:
        return self.ram - self.postgresql - self.reserve

    def describe(self) -> str:
        vram = (
            f"VRAM usable {gib(self.vram_usable)} ({gib(self.vram)} - {gib(self.gpu_overhead)}"
            " ollama_gpu_overhead)"
            if self.vram
            else "no GPU declared"
        )
        return (
            f"{vram}; RAM left {gib(self.ram_left)} ({gib(self.ram)} - {gib(self.postgresql)}"
            f" PostgreSQL at postgresql_memory_percent {self.postgresql_percent} % -"
            f" {gib(self.reserve)} ollama_ram_reserve for the OS, actr-engine, the pipeline and"
            " Ollama's buffers)"
        )


@dataclass(frozen=True)
class Fit:
    """Where one model's weights go on a host with ``budget``, and whether that is allowed."""

    model: str
    size: int
    budget: Budget

    @property
    def on_gpu(self) -> int:
        return min(self.size, self.budget.vram_usable)

    @property
    def in_ram(self) -> int:
        return self.size - self.on_gpu

    @property
    def ram_spare(self) -> int:
        """RAM still free with the model loaded; zero or less is no room."""
        return self.budget.ram_left - self.in_ram

    @property
    def fits_gpu(self) -> bool:
        return bool(self.budget.vram) and self.size < self.budget.vram_usable

    @property
    def verdict(self) -> str:
        if self.ram_spare <= 0:
            return "refused"
        if not self.budget.vram:
            return "cpu"
        if self.fits_gpu:
            return "gpu"
        return "offload" if self.budget.allow_offload else "refused"

    def report(self) -> str:
        """The placement of a model that passes (``refusal`` says why one does not)."""
        b, spare = self.budget, f"{gib(self.ram_spare)} of RAM to spare"
        head = f"{self.model} ({gib(self.size)})"
        if self.verdict == "gpu":
            return (
                f"{head} fits the GPU: {gib(b.vram_usable)} of VRAM usable ({gib(b.vram)} -"
                f" {gib(b.gpu_overhead)} overhead), {gib(b.vram_usable - self.size)} to spare"
            )
        if self.verdict == "cpu":
            return (
                f"{head}: no GPU declared, runs on the CPU: {gib(self.size)} in system RAM of"
                f" the {gib(b.ram_left)} the other services leave; {spare}"
            )
        if self.verdict == "offload":
            share = 100 * self.on_gpu / self.size
            text = (
                f"{head} does not fit {gib(b.vram_usable)} of usable VRAM ({gib(b.vram)} -"
                f" {gib(b.gpu_overhead)} overhead): CPU offload (ollama_allow_cpu_offload),"
                f" {gib(self.on_gpu)} on the GPU ({share:.0f}%) and {gib(self.in_ram)} in system"
                f" RAM of the {gib(b.ram_left)} the other services leave; {spare}"
            )
            return text + (" - tight" if self.ram_spare < GIB else "")
        return self.refusal()

    def _why(self) -> str:
        b = self.budget
        short = (
            "no room to spare" if self.ram_spare == 0 else f"{gib(max(-self.ram_spare, 0))} short"
        )
        if self.in_ram == 0 and self.ram_spare <= 0:
            return f"the host's other services leave no RAM for Ollama ({short})"
        if not b.vram:
            return (
                f"no GPU is declared, so all of it must sit in system RAM, and the other"
                f" services leave {gib(b.ram_left)}: {short}"
            )
        split = f"{gib(self.on_gpu)} on the GPU and {gib(self.in_ram)} in system RAM"
        if not b.allow_offload:
            ram = (
                f"would fit ({gib(self.ram_spare)} to spare)"
                if self.ram_spare > 0
                else f"does not fit either ({short})"
            )
            return (
                f"it does not fit {gib(b.vram_usable)} of usable VRAM with room to spare and CPU"
                " offload is not allowed (ollama_allow_cpu_offload is False: the GPU is the"
                f" point); split, {split}, the RAM part {ram}"
            )
        return f"split, {split}, but the other services leave {gib(b.ram_left)} of RAM: {short}"

    def _fix(self) -> str:
        b = self.budget
        more_ram = "more RAM (memory and guest.memory)"
        if b.vram and not self.fits_gpu and not b.allow_offload:
            offload = "set ollama_allow_cpu_offload = True"
            if self.ram_spare <= 0:
                offload += f" and give the VM {more_ram}"
            return (
                f"a smaller quantisation that fits {gib(b.vram_usable)} of VRAM, or {offload} to"
                " run it split between GPU and CPU"
            )
        return (
            f"a smaller quantisation, or give the VM {more_ram}; lower ollama_ram_reserve or"
            " postgresql_memory_percent only if those services really need less"
        )

    def refusal(self) -> str:
        return (
            f"{self.model} ({gib(self.size)}) is refused: {self._why()}. Budget:"
            f" {self.budget.describe()}. Nothing was pulled or changed. Fix: {self._fix()}"
        )


def fit(model: str, size: int, budget: Budget) -> Fit:
    return Fit(model, size, budget)


def budget_of(values: Mapping[str, Any]) -> Budget | None:
    """The budget from a host's normalised values; None when its RAM is not declared."""
    ram = values.get("memory")
    if ram is None:
        return None
    percent = values["postgresql_memory_percent"]
    return Budget(
        vram=sum(gpu["vram"] for gpu in values.get("gpus") or [] if gpu["vendor"] == "amd"),
        gpu_overhead=values["ollama_gpu_overhead"],
        ram=ram,
        # The memory store sizes itself from postgresql_memory when set, else the host's RAM.
        postgresql=(values.get("postgresql_memory") or ram) * percent // 100,
        postgresql_percent=percent,
        reserve=values["ollama_ram_reserve"],
        allow_offload=values["ollama_allow_cpu_offload"],
    )


def capacity_problems(values: Mapping[str, Any]) -> Iterator[Problem]:
    """Check of Ollama's schema at data validation: each model the host cannot hold.

    Validation hands it every key checked so far (the machine's and the memory store's come
    first); where they are missing (a task reading only its own keys) it says nothing, and
    ``preflight`` judges at plan time.
    """
    if not all(name in values for name in (*MACHINE_KEYS, *MEMORY_STORE_KEYS)):
        return
    budget = budget_of(values)
    if budget is None:
        return
    for index, model in enumerate(values["ollama_models"]):
        result = fit(model["name"], model["size"], budget)
        if result.verdict == "refused":
            given = {"name": model["name"], "size": gib(model["size"])}
            expected = f"a model this host can hold: {result.refusal()}"
            yield f"ollama_models[{index}]", given, expected


def host_values(target: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The values the budget reads for pyinfra host ``target``: Ollama's ``settings`` plus the
    machine's and the memory store's keys, checked as validation checks them."""
    keys = [MACHINE.keys[name] for name in MACHINE_KEYS]
    keys += [MEMORY_STORE.keys[name] for name in MEMORY_STORE_KEYS]
    return {**settings, **{key.name: check_key(target.name, key, target.data) for key in keys}}


def preflight(target: Any, settings: Mapping[str, Any]) -> list[str]:
    """Every model of ``ollama_models`` against ``target``'s budget: each placement is reported
    (offload as a warning); a refused model stops the run with the refusal."""
    if not settings["ollama_models"]:
        return []
    values = host_values(target, settings)
    budget = budget_of(values)
    if budget is None:
        raise RuntimeError(
            f"host {target.name!r}: key 'memory' is None; the capacity preflight of "
            'ollama_models needs the host\'s RAM, such as "16G"'
        )
    reports = []
    for model in settings["ollama_models"]:
        result = fit(model["name"], model["size"], budget)
        if result.verdict == "refused":
            raise RuntimeError(f"host {target.name!r}: key 'ollama_models': {result.refusal()}")
        text = f"{target.name}: capacity: {result.report()}"
        (logger.warning if result.verdict == "offload" else logger.info)(text)
        reports.append(text)
    return reports
