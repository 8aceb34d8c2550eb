"""Capacity preflight for Ollama's models: does each one fit the GPU, the RAM, or neither?

Pure arithmetic over the data (no host facts), so the answer is known before anything is
pulled or loaded and the same figures appear in the plan, the rollout and the unit tests.

A model of size S on a GPU with V bytes of VRAM: Ollama keeps ``gpu_overhead`` of VRAM for its
runtime, the KV cache of the configured context and the compute graph, so at most
``V - gpu_overhead`` of the weights sit on the GPU. The rest is offloaded to system RAM, which
must also keep ``ram_reserve`` for the operating system and the other services of the host
(PostgreSQL, actr-engine, the pipeline). Three outcomes:

- ``gpu``: the model fits in VRAM;
- ``offload``: it is split, ``on_gpu`` in VRAM and ``in_ram`` in system RAM (slower: every
  token also runs the offloaded layers on the CPU); the RAM it needs is reported;
- ``no-fit``: even split, it needs more RAM than the host has: the deploy stops with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


def gib(size: int) -> str:
    """A byte count as GiB with one decimal ("42.0 GiB")."""
    return f"{size / GIB:.1f} GiB"


@dataclass(frozen=True)
class Fit:
    """Where one model's weights go, and what that needs."""

    model: str
    size: int
    vram: int
    ram: int
    gpu_overhead: int
    ram_reserve: int
    on_gpu: int
    in_ram: int

    @property
    def ram_needed(self) -> int:
        """System RAM the host needs with this model loaded (offloaded part + reserve)."""
        return self.in_ram + self.ram_reserve

    @property
    def verdict(self) -> str:
        if self.in_ram == 0:
            return "gpu"
        return "offload" if self.ram_needed <= self.ram else "no-fit"

    def report(self) -> str:
        usable = max(self.vram - self.gpu_overhead, 0)
        if self.vram == 0:
            where = f"{self.model} ({gib(self.size)}): no GPU, runs on the CPU from system RAM"
        elif self.verdict == "gpu":
            return (
                f"{self.model} ({gib(self.size)}) fits the GPU: {gib(self.vram)} VRAM, "
                f"{gib(usable)} usable after the {gib(self.gpu_overhead)} overhead"
            )
        else:
            share = 100 * self.on_gpu / self.size
            where = (
                f"{self.model} ({gib(self.size)}) does not fit {gib(self.vram)} of VRAM: "
                f"CPU offload, {gib(self.on_gpu)} on the GPU ({share:.0f}%: "
                f"{gib(self.vram)} VRAM - {gib(self.gpu_overhead)} overhead) and "
                f"{gib(self.in_ram)} in system RAM"
            )
        needs = (
            f"needs {gib(self.ram_needed)} of RAM ({gib(self.in_ram)} of weights + "
            f"{gib(self.ram_reserve)} reserve), the host has {gib(self.ram)}"
        )
        if self.verdict == "no-fit":
            return (
                f"{where}; {needs}: it cannot be loaded ({gib(self.ram_needed - self.ram)} short)"
            )
        return f"{where}; {needs} ({gib(self.ram - self.ram_needed)} left)"


def fit(model: str, size: int, *, vram: int, ram: int, gpu_overhead: int, ram_reserve: int) -> Fit:
    """Split ``size`` bytes of weights between ``vram`` (less overhead) and ``ram``."""
    usable = max(vram - gpu_overhead, 0) if vram else 0
    on_gpu = min(size, usable)
    return Fit(model, size, vram, ram, gpu_overhead, ram_reserve, on_gpu, size - on_gpu)
