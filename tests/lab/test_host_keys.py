"""A host whose SSH host key changed stops the next rollout on every host, before any change.

The lab's hosts are pinned by the lab's known-hosts file (``ssh_strict_host_key_checking``
"yes"; the real group data uses "accept-new": the same check once the first contact recorded
a key). The test gives one host new host keys, as a reinstall or an impostor would, runs the
full rollout as a user does, and puts the old keys back.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tasks.common import host_keys
from tasks.common.host_keys import Endpoint
from tests.lab import hosts, labctl

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
HOST = hosts.by_name("dns")
KEY_TYPES = ("ed25519", "rsa", "ecdsa")


def _ssh(command: str, *, any_key: bool = False) -> None:
    # ssh takes the first value of an option: these come before the lab's strict ones.
    lax = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    base = labctl.ssh_command(HOST)
    argv = [base[0], *(lax if any_key else []), *base[1:], labctl.as_root(HOST, command)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{HOST.name}: {command!r}: {result.stderr}"


def _presented_fingerprint() -> str | None:
    key = host_keys.presented_key(Endpoint(HOST.address, 22, ""), "ssh-ed25519")
    return host_keys.fingerprint(key) if key else None


def _wait_for_fingerprint(wanted: str) -> None:
    deadline = time.monotonic() + 60
    while _presented_fingerprint() != wanted:
        assert time.monotonic() < deadline, f"{HOST.name} does not present {wanted}"
        time.sleep(0.5)


def _file_fingerprint(public_key: Path) -> str:
    words = public_key.read_text().split()
    key = paramiko.PKey.from_type_string(words[0], base64.b64decode(words[1]))
    return host_keys.fingerprint(key)


@pytest.fixture
def new_host_keys() -> Iterator[tuple[str, str]]:
    """(old, new) Ed25519 fingerprints while HOST presents new keys; the old ones after."""
    key_dir = HOST.root_dir / "etc/ssh"
    originals = {path: path.read_bytes() for path in key_dir.glob("ssh_host_*_key*")}
    old = _file_fingerprint(key_dir / "ssh_host_ed25519_key.pub")
    try:
        for key_type in KEY_TYPES:
            private = key_dir / f"ssh_host_{key_type}_key"
            if private.exists():
                private.unlink()
                private.with_suffix(".pub").unlink(missing_ok=True)
                subprocess.run(
                    ["ssh-keygen", "-q", "-N", "", "-t", key_type, "-f", str(private)],
                    check=True,
                )
        new = _file_fingerprint(key_dir / "ssh_host_ed25519_key.pub")
        _ssh("systemctl reload ssh")  # sshd still presents the old key: the lab trusts it
        _wait_for_fingerprint(new)
        yield old, new
    finally:
        for path, content in originals.items():
            path.write_bytes(content)
            path.chmod(0o644 if path.suffix == ".pub" else 0o600)
        _ssh("systemctl reload ssh", any_key=True)
        _wait_for_fingerprint(old)
        _ssh("true")  # the lab's strict check passes again


def test_a_changed_host_key_stops_the_rollout_before_any_change(
    new_host_keys: tuple[str, str],
) -> None:
    old, new = new_host_keys
    started = time.monotonic()
    result = subprocess.run(
        [str(PYINFRA), "-y", "tests/lab/inventory.py", "deploys/full.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    print(f"rollout with a changed host key stopped after {time.monotonic() - started:.1f}s")
    assert result.returncode != 0, output[-3000:]
    assert "SSH host keys that are not the trusted ones; nothing was changed" in output, output[
        -3000:
    ]
    assert f"host {HOST.name!r}" in output and old in output and new in output, output[-3000:]
    assert "Starting operation" not in output, "operations ran despite the changed key"
