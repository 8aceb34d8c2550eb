"""Re-resolve the embedder's locks (``make embedder-lock``; runs on the controller).

For each device (cpu, cuda) pip resolves ``requirements-<device>.in`` for CPython 3.13 on
x86_64 (Debian 13's Python) without installing anything (``--dry-run --report``), and the
complete list of name==version becomes ``requirements-<device>.txt``. The CUDA lock leaves
out the CPU ``onnxruntime`` that piper-tts asks for: onnxruntime-gpu provides the same module,
and the two must not be installed together (the deploy installs with --no-deps).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 27, 28, 31, 34, 35, 39)] + [
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
]
HEADER = """\
# The embedder's Python lock ({device}): every package of /opt/embedder/venv, exact versions,
# installed with pip --no-deps (this list is complete). Resolved for CPython 3.13 (Debian 13)
# on x86_64 from files/embedder/requirements-{device}.in by `make embedder-lock`.
"""


def resolve(device: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
            "--target", str(Path(tmp) / "none"), "--report", str(report),
            "--python-version", "3.13", "--implementation", "cp",
            "--abi", "cp313", "--abi", "abi3", "--abi", "none", "--only-binary=:all:",
            *(arg for p in PLATFORMS for arg in ("--platform", p)),
            "-r", str(HERE / f"requirements-{device}.in"),
        ]  # fmt: skip
        subprocess.run(command, check=True)
        installs = json.loads(report.read_text())["install"]
    pins = sorted(f"{i['metadata']['name'].lower()}=={i['metadata']['version']}" for i in installs)
    if device == "cuda":
        pins = [p for p in pins if not p.startswith("onnxruntime==")]
    return pins


def main() -> None:
    for device in ("cpu", "cuda"):
        pins = resolve(device)
        (HERE / f"requirements-{device}.txt").write_text(
            HEADER.format(device=device) + "\n".join(pins) + "\n"
        )
        print(f"requirements-{device}.txt: {len(pins)} packages")


if __name__ == "__main__":
    main()
