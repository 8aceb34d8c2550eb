"""Host keys: fingerprints as OpenSSH prints them, a changed key named with both fingerprints.

The SSH server here is a test double: paramiko's server side on 127.0.0.1, presenting a key
of the test's choice for the key exchange (no login is offered or needed).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tasks.common import host_keys
from tasks.common.host_keys import Endpoint


def _keygen(path: Path) -> paramiko.PKey:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


class KeyExchangeServer:
    """Test double of an SSH server: answers key exchanges on 127.0.0.1 with ``key``."""

    def __init__(self, key: paramiko.PKey) -> None:
        self.key = key
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.key)
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                transport.start_server(server=paramiko.ServerInterface())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, paramiko.PKey, paramiko.PKey]:
    return tmp_path, _keygen(tmp_path / "old"), _keygen(tmp_path / "new")


@pytest.fixture
def server(keys: tuple[Path, paramiko.PKey, paramiko.PKey]) -> Iterator[KeyExchangeServer]:
    double = KeyExchangeServer(keys[2])
    yield double
    double.close()


def _known_hosts(directory: Path, entry: str, key: paramiko.PKey) -> str:
    path = directory / "known_hosts"
    path.write_text(f"{entry} {key.get_name()} {key.get_base64()}\n")
    return str(path)


def test_fingerprint_is_what_ssh_keygen_prints(keys) -> None:
    directory, old, _ = keys
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(directory / "old.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]
    assert host_keys.fingerprint(old) == printed
    assert host_keys.FINGERPRINT.check(printed) == printed


def test_a_changed_key_is_named_with_both_fingerprints(keys, server: KeyExchangeServer) -> None:
    directory, old, new = keys
    endpoint = Endpoint("127.0.0.1", server.port, "")
    endpoint = Endpoint("127.0.0.1", server.port, _known_hosts(directory, endpoint.entry, old))
    problem = host_keys.changed_key_problem("pve", endpoint)
    assert problem is not None
    assert "'pve'" in problem
    assert host_keys.fingerprint(old) in problem and host_keys.fingerprint(new) in problem
    assert host_keys.fingerprint(old) != host_keys.fingerprint(new)


def test_the_recorded_key_is_no_problem(keys, server: KeyExchangeServer) -> None:
    directory, _, new = keys
    entry = f"[127.0.0.1]:{server.port}"
    endpoint = Endpoint("127.0.0.1", server.port, _known_hosts(directory, entry, new))
    assert host_keys.changed_key_problem("pve", endpoint) is None


def test_a_host_that_does_not_answer_is_no_key_problem(keys) -> None:
    directory, old, _ = keys
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    endpoint = Endpoint("127.0.0.1", port, _known_hosts(directory, f"[127.0.0.1]:{port}", old))
    assert host_keys.changed_key_problem("ageis-node", endpoint) is None


def test_a_pin_must_match_the_recorded_key(keys) -> None:
    directory, old, new = keys
    endpoint = Endpoint("pve.home.arpa", 22, _known_hosts(directory, "pve.home.arpa", old))
    assert host_keys.pin_problem("pve", endpoint, host_keys.fingerprint(old)) is None
    problem = host_keys.pin_problem("pve", endpoint, host_keys.fingerprint(new))
    assert problem is not None
    assert "host_key_fingerprint" in problem and host_keys.fingerprint(old) in problem


class FakeHost:
    """Test double of a pyinfra Host: a name and its data."""

    def __init__(self, name: str, **data: object) -> None:
        self.name = name
        self.data = data


def test_the_run_lists_a_changed_key_and_a_wrong_pin(keys, server: KeyExchangeServer) -> None:
    directory, old, new = keys
    known = directory / "known_hosts"
    known.write_text(
        f"[127.0.0.1]:{server.port} {old.get_name()} {old.get_base64()}\n"
        f"pve.home.arpa {old.get_name()} {old.get_base64()}\n"
    )
    changed = FakeHost(
        "dns", ssh_hostname="127.0.0.1", ssh_port=server.port, ssh_known_hosts_file=str(known)
    )
    pinned = FakeHost(
        "pve",
        ssh_hostname="pve.home.arpa",
        ssh_known_hosts_file=str(known),
        host_key_fingerprint=host_keys.fingerprint(new),
    )
    trusted = FakeHost(
        "embedder", ssh_hostname="embedder.home.arpa", ssh_known_hosts_file=str(known)
    )
    problems = host_keys.trust_problems([changed, pinned, trusted], failed={changed})
    assert len(problems) == 2, problems
    assert problems[0].startswith("host 'dns'") and host_keys.fingerprint(new) in problems[0]
    assert problems[1].startswith("host 'pve'") and "host_key_fingerprint" in problems[1]
