"""No secret in pyinfra's output: a changed secret rolled out with ``--diff -vvv``.

The gateway token of ageis-node changes (a copy of the lab's secrets file, the token replaced);
the rollout with pyinfra's most talkative flags must print no value of the secrets file, the
old token or the new one, and the host must hold the new token. The original file is rolled
out again afterwards (also when the test fails), under the same check.
"""

from __future__ import annotations

import json
import os
import secrets as random_secrets
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tasks.ageis_node.openclaw_pipeline import TOKEN_FILE
from tests.lab import hosts, labctl

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
NODE = hosts.by_name("ageis-node")
SECRET = "openclaw_gateway_token"


def talkative_rollout(secrets_file: Path) -> str:
    result = subprocess.run(
        [str(PYINFRA), "-y", "--diff", "-vvv", "--limit", NODE.name,
         "tests/lab/inventory.py", "deploys/full.py"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "HOMELAB_SECRETS_FILE": str(secrets_file)},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def shown(values: dict[str, str], output: str) -> list[str]:
    """The names of the secrets whose value appears in ``output``."""
    return sorted(name for name, value in values.items() if value and value in output)


def test_a_changed_secret_rolled_out_with_diff_and_debug_output_is_never_printed(
    tmp_path: Path,
) -> None:
    original = dict(tomllib.loads(hosts.SECRETS_FILE.read_text()))
    new_token = random_secrets.token_urlsafe(32)
    changed = tmp_path / "secrets.toml"
    changed.write_text(
        "".join(
            f"{name} = {json.dumps(value)}\n"  # a TOML basic string
            for name, value in {**original, SECRET: new_token}.items()
        )
    )
    changed.chmod(0o600)
    values = {**original, f"new {SECRET}": new_token}
    try:
        output = talkative_rollout(changed)
        print(f"\n--diff -vvv rollout with a new {SECRET}: {len(output.splitlines())} lines")
        assert "Success" in output or "Changed" in output, output[-2000:]
        assert shown(values, output) == [], "secret values in pyinfra's output"
        held = subprocess.run(
            labctl.ssh_argv(NODE, f"cat {TOKEN_FILE}"),
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        assert held == new_token, "the host does not hold the new token"
    finally:
        restored = talkative_rollout(hosts.SECRETS_FILE)
        assert shown(values, restored) == [], "secret values in pyinfra's output (restore)"
