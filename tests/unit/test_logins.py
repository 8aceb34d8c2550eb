"""Logins: the first-contact user until a run proves the admin login, then the admin with sudo.

The SSH server in the proof tests is a test double: paramiko's server side on 127.0.0.1, which
accepts one user's public key and answers each command with the exit status the test picks.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paramiko
import pytest
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

from tasks.common import logins
from tasks.common.datamodel.registry import secret_specs

REPO = Path(__file__).resolve().parents[2]


# --- records and the choice -----------------------------------------------------------------


def test_a_record_is_written_private_and_read_back(tmp_path: Path) -> None:
    directory = tmp_path / "logins"
    path = logins.write_record(directory, "pve", "ops", "pve.home.arpa")
    assert logins.recorded_user(directory, "pve") == "ops"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["address"] == "pve.home.arpa"
    assert logins.recorded_user(directory, "embedder") is None


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"user": "r;m -rf /"}', '{"x": 1}'])
def test_a_damaged_record_counts_as_none(tmp_path: Path, text: str) -> None:
    logins.record_file(tmp_path, "pve").write_text(text)
    assert logins.recorded_user(tmp_path, "pve") is None


def test_first_login_is_root_but_the_admin_on_a_vm_and_the_data_decides_last() -> None:
    assert logins.first_login_user({}) == "root"
    assert logins.first_login_user({"guest": {"kind": "lxc"}}) == "root"
    assert logins.first_login_user({"guest": {"kind": "qemu"}, "admin_user": "alice"}) == "alice"
    assert logins.first_login_user({"first_login_user": "debian"}) == "debian"


def _host(name: str, **data: Any) -> SimpleNamespace:
    return SimpleNamespace(name=name, data=data)


def test_the_inventory_gets_each_hosts_login(tmp_path: Path) -> None:
    logins.write_record(tmp_path, "pve", "ops", "192.168.1.10")
    namespace: dict[str, Any] = {
        "hypervisor": [("pve", {"lan_address": "192.168.1.10"})],
        "embedder": [("embedder", {})],
        "ageis_node": [("ageis-node", {})],
        "monitoring": [("monitoring", {})],
        "names": ["pve", "embedder"],  # a group of names only: left as it is
    }
    common = {"login_record_directory": str(tmp_path), "admin_user": "ops"}
    inventory = [
        _host("pve", **common),
        _host("embedder", **common),
        _host("ageis-node", guest={"kind": "qemu"}, **common),
        _host("monitoring", ssh_user="deploy", **common),  # named in the data: left alone
    ]
    logins.log_in_as_recorded(namespace, inventory)
    assert namespace["hypervisor"][0][1] == {
        "lan_address": "192.168.1.10",
        "ssh_user": "ops",
        "_sudo": True,
        "_temp_dir": "/tmp",
    }
    assert namespace["embedder"][0][1] == {"ssh_user": "root"}
    assert namespace["ageis_node"][0][1] == {"ssh_user": "ops", "_sudo": True, "_temp_dir": "/tmp"}
    assert namespace["monitoring"][0][1] == {}
    assert namespace["names"] == ["pve", "embedder"]


def test_loading_again_inside_the_loader_changes_nothing() -> None:
    namespace: dict[str, Any] = {"hypervisor": [("pve", {})]}
    logins.log_in_as_recorded(namespace, None)
    assert namespace == {"hypervisor": [("pve", {})]}


def _load(home: Path) -> dict[str, dict[str, Any]]:
    saved = dict(os.environ)
    os.environ["HOME"] = str(home)
    os.environ.pop("HOMELAB_SECRETS_FILE", None)
    for spec in secret_specs():  # test-double values: the inventory checks they are there
        os.environ[f"HOMELAB_SECRET_{spec.name.upper()}"] = "unit-test-double-secret-value"
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        with ctx_state.use(State()):
            inventory = make_inventory_from_files("inventory.py", cwd=str(REPO))
        return {h.name: h.data.dict() for h in inventory}
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def test_the_repositorys_inventory_logs_in_as_recorded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh/id_ed25519")],
        check=True,
    )
    first = _load(home)
    assert (first["pve"]["ssh_user"], first["pve"].get("_sudo")) == ("root", None)
    assert (first["dns"]["ssh_user"], first["dns"].get("_sudo")) == ("root", None)
    # The VM's first login is the admin user that cloud-init creates, with sudo.
    assert (first["ageis-node"]["ssh_user"], first["ageis-node"]["_sudo"]) == ("ops", True)
    logins.write_record(home / ".local/state/homelab-as-code/logins", "pve", "ops", "pve")
    later = _load(home)
    assert (later["pve"]["ssh_user"], later["pve"]["_sudo"]) == ("ops", True)
    # Uploads through sudo: a directory the login can write (not root's libpam-tmpdir one).
    assert later["pve"]["_temp_dir"] == "/tmp"
    assert later["embedder"]["ssh_user"] == "root"


# --- the proof ------------------------------------------------------------------------------


class LoginServer(paramiko.ServerInterface):
    """Test double of sshd: ``user`` with ``key`` may log in; commands exit with ``status``."""

    def __init__(self, user: str, key: paramiko.PKey, status: int) -> None:
        self.user, self.key, self.status = user, key, status
        self.commands: list[str] = []

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.user and key.asbytes() == self.key.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.commands.append(command.decode())

        def answer() -> None:
            if self.status:
                channel.sendall_stderr(b"sudo: a password is required\n")
            channel.send_exit_status(self.status)
            channel.close()

        threading.Thread(target=answer, daemon=True).start()
        return True


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _serve(interface: LoginServer, host_key: paramiko.PKey) -> tuple[int, socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            try:
                transport.start_server(server=interface)
            except (paramiko.SSHException, EOFError, OSError):
                continue

    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1], sock


@pytest.fixture
def sshd(tmp_path: Path, client_key: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    status = getattr(request, "param", 0)
    host_key = paramiko.Ed25519Key.from_private_key_file(str(client_key))  # any ed25519 key
    interface = LoginServer("ops", paramiko.PKey.from_path(str(client_key)), status)
    port, sock = _serve(interface, host_key)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    yield SimpleNamespace(port=port, known=known, interface=interface)
    sock.close()


def _prove(tmp_path: Path, sshd: Any, key: Path, user: str = "ops", known: Path | None = None):
    logins.prove_admin_login(
        host_name="pve",
        hostname="127.0.0.1",
        port=sshd.port,
        user=user,
        key_file=str(key),
        key_password=None,
        known_hosts_file=str(known or sshd.known),
        record_directory=str(tmp_path / "records"),
        sudo_without_password=True,
    )


def test_a_working_admin_login_with_sudo_is_recorded(tmp_path: Path, sshd, client_key) -> None:
    _prove(tmp_path, sshd, client_key)
    assert sshd.interface.commands == ["sudo -n true"]
    assert logins.recorded_user(tmp_path / "records", "pve") == "ops"


@pytest.mark.parametrize("sshd", [1], indirect=True)
def test_sudo_that_asks_for_a_password_is_not_proven(tmp_path: Path, sshd, client_key) -> None:
    with pytest.raises(logins.LoginNotProven, match=r"`sudo -n true` exited 1 \(sudo: a pass"):
        _prove(tmp_path, sshd, client_key)
    assert logins.recorded_user(tmp_path / "records", "pve") is None


def test_a_refused_login_is_not_proven(tmp_path: Path, sshd, client_key) -> None:
    with pytest.raises(logins.LoginNotProven, match=r"admin login alice@127\.0\.0\.1:\d+ failed"):
        _prove(tmp_path, sshd, client_key, user="alice")
    assert not (tmp_path / "records").exists()


def test_an_unknown_host_key_is_not_proven(tmp_path: Path, sshd, client_key) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(logins.LoginNotProven, match="root login stays on"):
        _prove(tmp_path, sshd, client_key, known=empty)
    assert sshd.interface.commands == []


def test_a_failed_login_names_its_record(tmp_path: Path) -> None:
    data = {"login_record_directory": str(tmp_path), "ssh_user": "root"}
    first = logins.failed_login_hint("pve", data)
    assert "logged in as root, its first login (no admin login recorded in" in first
    assert str(tmp_path / "pve.json") in first
    logins.write_record(tmp_path, "pve", "ops", "pve")
    later = logins.failed_login_hint("pve", {**data, "ssh_user": "ops"})
    assert "logged in as ops, the admin login recorded in" in later
    assert "installed anew, remove that file" in later
