"""What Ollama's GPU discovery found at its last start, read from its journal.

At every start Ollama probes the GPUs its bundled libraries can drive, then logs one line per
device it will use (``discover/types.go``, ``LogDetails``), before its API answers::

    msg="inference compute" id=0 filter_id="" library=ROCm compute=gfx1201 name=ROCm0
        description="AMD Radeon AI PRO R9700" libdirs=ollama,rocm driver=70152.80
        pci_id=0000:01:00.0 type=discrete total="31.9 GiB" available="31.7 GiB"

With no usable GPU it logs the CPU instead (``id=cpu library=cpu compute=""``). When the probe
hangs, as it does on a kernel driver older than Ollama's ROCm 7 libraries
(https://github.com/ollama/ollama/issues/13236; Ollama's troubleshooting, "AMD Driver Version
Mismatch"), it first logs ``msg="failure during GPU discovery" ... error="failed to finish
discovery before timeout"`` (``failure during llama-server GPU discovery`` and ``llama-server
GPU discovery watchdog timed out`` in releases from 0.30) and, with ``OLLAMA_DEBUG``,
``msg="bootstrap discovery took" duration=30s``.

:class:`OllamaDiscovery` reads those lines from the journal of the unit's current run only
(its systemd invocation), with bounded output; :func:`gpu_problem` says whether they name a
ROCm device of the wanted target, and if not, what they said instead. Pure parsing: the
decisions (fail the run, wait, skip) are the deploy's (``ollama.py``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyinfra.api import FactBase

UNIT = "ollama.service"
# The messages that tell what discovery found or why it failed (0.12 to 0.32 wording).
MESSAGES = (
    "inference compute",
    "failure during GPU discovery",
    "failure during llama-server GPU discovery",
    "llama-server GPU discovery watchdog timed out",
    "bootstrap discovery took",
    "GPU bootstrap discovery took",
)
# Discovery is logged within the first lines of a run; read no further than this many.
HEAD_LINES = 3000
# Of the matching lines, keep the last ones, each cut to this length (a fact's output stays small).
KEEP_LINES = 40
LINE_CHARS = 1500
INVOCATION = "invocation "
# slog's text format: key=value, either side quoted with Go's escapes when needed.
_PAIR = re.compile(r'("(?:[^"\\]|\\.)*"|[^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def _unquote(text: str) -> str:
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def fields(line: str) -> dict[str, str]:
    """The key=value pairs of one slog text line (the first of a repeated key wins)."""
    found: dict[str, str] = {}
    for key, value in _PAIR.findall(line):
        found.setdefault(_unquote(key), _unquote(value))
    return found


@dataclass(frozen=True)
class Device:
    """One ``inference compute`` line: a device Ollama will schedule models on."""

    library: str
    compute: str
    name: str
    description: str
    total: str
    line: str

    @property
    def is_cpu(self) -> bool:
        return self.library.lower() == "cpu"

    def summary(self) -> str:
        """Its telling fields, in slog's form."""
        if self.is_cpu:
            return f'library=cpu total="{self.total}"'
        return (
            f'library={self.library} compute="{self.compute}" name={self.name}'
            f' description="{self.description}" total="{self.total}"'
        )


@dataclass(frozen=True)
class Discovery:
    """The discovery lines of the unit's current run; ``started`` False: it has none."""

    started: bool
    devices: tuple[Device, ...] = ()
    failures: tuple[str, ...] = field(default=())

    @property
    def reported(self) -> bool:
        """Discovery has finished (it logs its devices, or the CPU, last)."""
        return bool(self.devices)

    def rocm(self, target: str) -> Device | None:
        """The ROCm device of ``target`` (such as gfx1201) discovery found, None if none."""
        for device in self.devices:
            if device.library == "ROCm" and device.compute == target:
                return device
        return None


def parse(lines: list[str]) -> Discovery:
    """The fact's output: ``invocation <id>`` (absent: the unit has not run), then the lines."""
    if not lines or not lines[0].startswith(INVOCATION):
        return Discovery(started=False)
    devices: list[Device] = []
    failures: list[str] = []
    for line in lines[1:]:
        values = fields(line)
        message = values.get("msg", "")
        if message == "inference compute":
            devices.append(
                Device(
                    library=values.get("library", ""),
                    compute=values.get("compute", ""),
                    name=values.get("name", ""),
                    description=values.get("description", ""),
                    total=values.get("total", ""),
                    line=line.strip(),
                )
            )
        elif message in MESSAGES:
            failures.append(line.strip())
    return Discovery(started=True, devices=tuple(devices), failures=tuple(failures))


def command() -> str:
    """One shell command: the unit's invocation, then its discovery lines (bounded)."""
    # Plain words, spaces and hyphens: literal in an ERE as they are (grep warns on a stray \).
    pattern = "|".join(MESSAGES)
    return (
        f"id=$(systemctl show -p InvocationID --value {UNIT} 2>/dev/null); "
        '[ -n "$id" ] || exit 0; '
        f'echo "{INVOCATION}$id"; '
        f'journalctl -q -o cat --no-pager "_SYSTEMD_INVOCATION_ID=$id" 2>/dev/null'
        f" | head -n {HEAD_LINES} | grep -E 'msg=\"({pattern})\"'"
        f" | tail -n {KEEP_LINES} | cut -c1-{LINE_CHARS}; true"
    )


class OllamaDiscovery(FactBase[Discovery]):
    """Ollama's GPU discovery in its journal since the unit's last start (bounded output)."""

    reads_other_hosts = False

    def command(self) -> str:
        return command()

    def process(self, output: list[str]) -> Discovery:
        return parse(output)


def said(line: str) -> str:
    """A discovery failure line as its telling fields: msg, error, duration (slog's form)."""
    values = fields(line)
    parts = [f'msg="{values.get("msg", "")}"']
    parts += [f'{key}="{values[key]}"' for key in ("error", "duration") if values.get(key)]
    return " ".join(parts)


def gpu_problem(discovery: Discovery, target: str) -> str | None:
    """None when discovery found a ROCm device of ``target``; else what the log said."""
    if discovery.rocm(target) is not None:
        return None
    if not discovery.started:
        return "ollama.service has not run (no invocation to read the journal of)"
    # The failures first, once each (a retried probe repeats them), at most three.
    failures = list(dict.fromkeys(said(line) for line in discovery.failures))[:3]
    if not discovery.reported:
        lines = "; ".join(failures) or "no discovery line at all"
        return f'its journal since the start has no "inference compute" line ({lines})'
    found = ", ".join(device.summary() for device in discovery.devices)
    log = "; ".join([*failures, f'msg="inference compute" {found}'])
    return f"the log says: {log}"


def confirm_after_start(
    read: Callable[[], Discovery],
    target: str,
    attempts: int = 10,
    pause: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """``gpu_problem`` once discovery has reported, asking ``read`` up to ``attempts`` times
    (the journal may lag the API by a moment); what is wrong, or None."""
    discovery = read()
    for _ in range(attempts - 1):
        if discovery.reported:
            break
        sleep(pause)
        discovery = read()
    return gpu_problem(discovery, target)
