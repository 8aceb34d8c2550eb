"""promtool and amtool for the tests: unpacked by ``make promtools``, else from PATH.

A test that needs them fails (never skips) when neither is there, saying how to get them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from pyinfra.api.util import get_template

REPO = Path(__file__).resolve().parents[1]
UNPACKED = REPO / "build" / "prometheus-tools" / "root" / "usr" / "bin"
RULES_TEMPLATE = REPO / "templates" / "prometheus-homelab.rules.yml.j2"


def tool(name: str) -> str:
    local = UNPACKED / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise AssertionError(f"{name} is missing: run `make promtools` (Debian's packages)")
    return found


def run(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(name), *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def render_rules(variables: dict) -> str:
    """The alert rules as the deploy renders them (same template, same Jinja settings)."""
    return get_template(str(RULES_TEMPLATE)).render(**variables)


def without_annotations(rules: str) -> str:
    """The rules minus their annotations, for ``promtool test rules``: the tests check when an
    alert fires and with which labels; the annotations' wording is checked separately."""
    return re.sub(r"\n        annotations:\n(?:          .*\n)+", "\n", rules)
