"""Tailscale on a lab node, for real against the lab's stand-in repository and test double.

The key download and fingerprint check, the deb822 source, apt's signature check, the install
and tailscaled run for real; the login goes to the stand-in daemon (a test double), which
refuses keys the way Tailscale's control server does. A refused key must fail the run with a
message naming the host, without showing the key; the right key then logs the node in, and
the run after that changes nothing. A key whose fingerprint differs from the data's is never
trusted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.base.tailscale import KEYRING
from tests.lab import hosts, labctl

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
NODE = hosts.by_name("embedder")
# A key the stand-in refuses ("invalid" in it), as Tailscale refuses a revoked or mistyped one.
# A key of the real format that the stand-in refuses (it contains "invalid"); a fixture file.
REFUSED_KEY = (Path(__file__).parent / "fixtures" / "refused_tailscale_key.txt").read_text()
REFUSED_KEY = REFUSED_KEY.strip()
REAL_TAILSCALE_FINGERPRINT = "2596A99EAAB33821893C0A79458CA832957F5868"


def rollout(*extra: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    env = os.environ.copy()
    if secret is not None:
        env["HOMELAB_SECRET_TAILSCALE_AUTH_KEY"] = secret
    return subprocess.run(
        [
            str(PYINFRA), "-y", *extra, "--limit", NODE.name,
            "tests/lab/inventory.py", "deploys/embedder.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )  # fmt: skip


def ssh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        labctl.ssh_argv(NODE, command),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def backend_state() -> str | None:
    result = ssh("command -v tailscale >/dev/null || exit 3; tailscale status --json")
    if result.returncode == 3:
        return None
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["BackendState"]


def keyring_sha() -> str:
    result = ssh(f"sha256sum {KEYRING}")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


@pytest.fixture(scope="module")
def lab() -> None:
    result = subprocess.run(
        [sys.executable, str(Path(labctl.__file__).resolve()), "up"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_refused_key_fails_clearly_then_the_right_key_logs_in_once(lab: None) -> None:
    if backend_state() is not None:
        assert ssh("tailscale logout").returncode == 0
    assert backend_state() in (None, "NeedsLogin")

    refused = rollout(secret=REFUSED_KEY)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output[-3000:]
    assert "host 'embedder': Tailscale refused the auth key (secret tailscale_auth_key)" in output
    assert "invalid key" in output, output[-3000:]
    assert REFUSED_KEY not in output, "the auth key showed in pyinfra's output"
    assert backend_state() == "NeedsLogin"

    accepted = rollout()  # the lab's own key (lab secrets file)
    assert accepted.returncode == 0, (accepted.stdout + accepted.stderr)[-3000:]
    assert backend_state() == "Running"

    again = rollout("--json")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    results = json.loads(again.stdout[again.stdout.index("{") :])["results"]
    changed = [f"{op['name']}: {op['success']}" for op in results["operations"] if op["success"]]
    assert results["totals"]["success"] == 0, "changed on a logged-in node:\n" + "\n".join(changed)
    assert results["totals"]["error"] == 0


def test_a_key_with_another_fingerprint_is_never_trusted(lab: None) -> None:
    before = keyring_sha()
    # The stand-in repository's key, checked against Tailscale's real fingerprint: a mismatch.
    wrong = rollout("--data", f"tailscale_key_fingerprint={REAL_TAILSCALE_FINGERPRINT}")
    output = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0, output[-3000:]
    assert "host 'embedder': the signing key from http://" in output, output[-3000:]
    assert f"key 'tailscale_key_fingerprint' expects {REAL_TAILSCALE_FINGERPRINT}" in output
    assert "Not trusted" in output
    assert keyring_sha() == before
    # And the lab's data again: nothing to do.
    again = rollout()
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert keyring_sha() == before
