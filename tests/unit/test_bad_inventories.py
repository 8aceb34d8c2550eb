"""Acceptance: a bad inventory stops the real CLI in under 5 s, naming the key, unconnected.

Each case writes a throw-away inventory (the baseline with ONE bad value) whose hosts all point
at a TCP listener on 127.0.0.1 that this test watches, and runs
``pyinfra <inventory> deploys/full.py --dry`` from the repository root, as a user would. The run
must exit with status 2, quickly, with a message naming the host, the key and the value, and
the listener must have seen no connection. A positive control runs the same inventory without
a bad value and sees pyinfra connect to the listener, so a connection would have been caught.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
DEPLOY = "deploys/full.py"
# "Early" is proven by the listener seeing no connection; the time limit only catches a run
# that waits on the network (SSH timeouts are 10 s and more). An idle machine takes 1-2 s; the
# margin is for a machine loaded by parallel labs.
TIME_LIMIT_S = 9.0
# Long enough for the secret strength check; the test asserts the text never shows.
THROW_AWAY = "throw-away-Xq7Lp2Vz"
SECRETS_TOML = (
    f'proxmox_api_secret = "{THROW_AWAY}"\ntailscale_auth_key = "{THROW_AWAY}"\n'
    f'memory_store_actr_engine_password = "{THROW_AWAY}"\n'
    f'memory_store_vector_indexer_password = "{THROW_AWAY}"\n'
    f'memory_store_wal_receiver_password = "{THROW_AWAY}"\n'
    f'memory_store_document_ingest_password = "{THROW_AWAY}"\n'
    f'pgbackrest_tls_seed = "{THROW_AWAY}"\n'
    f'pve_exporter_token_secret = "{THROW_AWAY}"\n'
    f'openclaw_gateway_token = "{THROW_AWAY}"\n'
    f'actr_engine_api_token = "{THROW_AWAY}"\n'
    f'pgbackrest_repository_cipher_pass = "{THROW_AWAY}"\n'
)
PRIVATE_KEY = "{private_key}"  # placeholder for the throw-away private key's path

pytestmark = pytest.mark.skipif(not PYINFRA.exists(), reason=f"no pyinfra CLI at {PYINFRA}")


class Listener:
    """A TCP listener on 127.0.0.1 that records (and closes) every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _take(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        self.accepted.append(peer)
        self.connected.set()
        conn.close()  # pyinfra's SSH handshake then fails at once

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._take(conn, peer)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        # A connection made just before the end may still wait in the backlog: count it too.
        self.sock.setblocking(False)
        try:
            while True:
                self._take(*self.sock.accept())
        except (BlockingIOError, OSError):
            pass
        self.sock.close()


@dataclass(frozen=True)
class Run:
    status: int
    output: str
    seconds: float


@dataclass
class Lab:
    """A throw-away HOME, secrets file and inventory around the watched listener."""

    tmp_path: Path
    home: Path
    keys: Any  # conftest.KeyPair
    baseline: Any  # conftest.Baseline
    listener: Listener

    def __post_init__(self) -> None:
        self.secrets = self.tmp_path / "secrets.toml"
        self.write_secrets(SECRETS_TOML)
        self.inventory = self.tmp_path / "inventory.py"

    def write_secrets(self, text: str, mode: int = 0o600) -> None:
        self.secrets.write_text(text, encoding="utf-8")
        self.secrets.chmod(mode)

    def command(self) -> list[str]:
        common = {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": self.listener.port,
            "ssh_key": str(self.keys.private),
            # Set per host so that the user's group_data/ choices cannot upset the baseline.
            "lan_cidr": self.baseline.group_data["all"]["lan_cidr"],
            "admin_ssh_public_key_files": [str(self.keys.public)],
        }
        self.inventory.write_text(self.baseline.inventory_source(common), encoding="utf-8")
        return [str(PYINFRA), str(self.inventory), DEPLOY, "--dry"]

    def env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("HOMELAB_SECRET") and name != "SSH_AUTH_SOCK"
        }
        env.update(
            HOME=str(self.home), HOMELAB_SECRETS_FILE=str(self.secrets), PYTHONDONTWRITEBYTECODE="1"
        )
        return env

    def run(self) -> Run:
        command = self.command()
        started = time.monotonic()
        done = subprocess.run(
            command,
            cwd=REPO,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )
        return Run(done.returncode, done.stdout, time.monotonic() - started)


@pytest.fixture
def listener() -> Iterator[Listener]:
    watched = Listener()
    yield watched
    watched.close()


@pytest.fixture
def lab(tmp_path: Path, ssh_home: Path, key_pair, baseline, listener: Listener) -> Lab:
    return Lab(tmp_path, ssh_home, key_pair, baseline, listener)


@dataclass(frozen=True)
class Bad:
    """One bad value: set ``value`` at ``path`` in ``host``'s data; expect ``key`` named."""

    id: str
    host: str
    path: tuple[Any, ...]
    value: Any
    key: str
    shown: str  # the value as the message shows it
    also: str = ""  # more text the message must hold
    secrets: str | None = None  # the secrets file instead of SECRETS_TOML
    group: str = ""  # a group to put ``host`` in as well


CASES = [
    Bad(
        "pci-id-upper-case",
        "pve",
        ("gpus", 0, "functions", 1, "id"),
        "1002:AB40",
        "gpus[0].functions[1].id",
        "'1002:AB40'",
        "PCI vendor:device ID",
    ),
    Bad(
        "pci-address-malformed",
        "pve",
        ("gpus", 0, "functions", 0, "address"),
        "0000:03:00",
        "gpus[0].functions[0].address",
        "'0000:03:00'",
        "PCI address",
    ),
    Bad(
        "lan-cidr-host-bits",
        "pve",
        ("lan_cidr",),
        "192.168.1.1/24",
        "lan_cidr",
        "'192.168.1.1/24'",
        "no host bits set",
    ),
    Bad(
        "address-outside-cidr",
        "embedder",
        ("lan_address",),
        "192.168.2.30",
        "lan_address",
        "'192.168.2.30'",
        "an address in 192.168.1.0/24",
    ),
    Bad(
        "size-16-gigs",
        "ageis-node",
        ("guest", "memory"),
        "16 gigs",
        "guest.memory",
        "'16 gigs'",
        "a size such as",
    ),
    Bad(
        "disk-pool-not-declared",
        "pve",
        ("disks", 4, "pool"),
        "archive",
        "disks[4].pool",
        "'archive'",
        "one of this host's pools (ssd, hdd)",
    ),
    Bad(
        "guest-storage-not-a-pool",
        "monitoring",
        ("guest", "storage"),
        "nvme",
        "guest.storage",
        "'nvme'",
        "a pool of pve",
    ),
    Bad(
        "passthrough-gpu-not-on-hypervisor",
        "ageis-node",
        ("guest", "passthrough_gpu"),
        "rx7900",
        "guest.passthrough_gpu",
        "'rx7900'",
        "a GPU of pve (r9700)",
    ),
    Bad(
        "unknown-key-typo",
        "pve",
        ("timezon",),
        "Europe/Berlin",
        "timezon",
        "'Europe/Berlin'",
        "did you mean 'timezone'?",
    ),
    Bad(
        "missing-secret",
        "pve",
        (),
        None,
        "secret proxmox_api_secret",
        "(missing)",
        "HOMELAB_SECRET_PROXMOX_API_SECRET",
        secrets='proxmox_api_secret = ""\n',
    ),
    Bad(
        "timezone-not-on-earth",
        "dns",
        ("timezone",),
        "Mars/Olympus",
        "timezone",
        "'Mars/Olympus'",
        "IANA time zone",
    ),
    Bad(
        "guest-cores-over-hypervisor-threads",
        "ageis-node",
        ("guest", "cores"),
        64,
        "guest.cores",
        "64",
        "at most the 28 threads of pve",
    ),
    Bad(
        "admin-key-is-a-private-key",
        "dns",
        ("admin_ssh_public_key_files",),
        [PRIVATE_KEY],
        "admin_ssh_public_key_files[0]",
        f"'{PRIVATE_KEY}'",
        "(not a public key)",
    ),
    Bad(
        "duplicate-vmid",
        "dns",
        ("guest", "vmid"),
        110,
        "guest.vmid",
        "110",
        "an ID not used by monitoring",
    ),
    Bad(
        "guest-hypervisor-not-a-hypervisor",
        "dns",
        ("guest", "hypervisor"),
        "embedder",
        "guest.hypervisor",
        "'embedder'",
        "a host of the hypervisor group (pve)",
    ),
    Bad(
        "cpu-vendor-capitalised",
        "pve",
        ("cpu", "vendor"),
        "Intel",
        "cpu.vendor",
        "'Intel'",
        "one of 'intel', 'amd'",
    ),
    # Network sanity: the guests' gateway is the LAN's broadcast address.
    Bad(
        "guest-gateway-is-the-broadcast-address",
        "pve",
        ("proxmox_guest_gateway",),
        "192.168.1.255",
        "proxmox_guest_gateway",
        "'192.168.1.255'",
        "not its network (192.168.1.0) or broadcast (192.168.1.255) address",
    ),
    # Duplicates: one disk listed twice.
    Bad(
        "disk-listed-twice",
        "pve",
        ("disks", 1, "device"),
        "/dev/disk/by-id/ata-TEAM_EXAMPLE1",
        "disks[1].device",
        "'/dev/disk/by-id/ata-TEAM_EXAMPLE1'",
        "pve disks[0] is the same device",
    ),
    # Capacity: the hypervisor has less RAM than its guests are given; a disk over its pool.
    Bad(
        "guests-memory-over-hypervisor",
        "pve",
        ("memory",),
        "16G",
        "memory",
        "'16G'",
        "(ageis-node 24 GiB, monitoring 2 GiB, dns 0.5 GiB); it has 16 GiB",
    ),
    Bad(
        "guest-disk-over-its-pool",
        "ageis-node",
        ("guest", "disk_size"),
        "10T",
        "guest.disk_size",
        "'10T'",
        "at most the 3572 GiB of pve's pool 'ssd'",
    ),
    # Paths: a kernel disk name, and a pool path that climbs out.
    Bad(
        "disk-by-kernel-name",
        "pve",
        ("disks", 0, "device"),
        "/dev/sdb",
        "disks[0].device",
        "'/dev/sdb'",
        "not a kernel name such as /dev/sdb",
    ),
    Bad(
        "pool-path-with-dot-dot",
        "pve",
        ("pools", "hdd", "path"),
        "/mnt/../etc",
        "pools['hdd'].path",
        "'/mnt/../etc'",
        "an absolute path in normal form",
    ),
    # Single-line and safe values.
    Bad(
        "model-with-a-newline",
        "pve",
        ("cpu", "model"),
        "Xeon\nrm -rf /",
        "cpu.model",
        "'Xeon\\nrm -rf /'",
        "on one line, without control characters",
    ),
    Bad(
        "ssh-hostname-with-a-command",
        "dns",
        ("ssh_hostname",),
        "$(reboot)",
        "ssh_hostname",
        "'$(reboot)'",
        "a DNS host name or IPv4 address",
    ),
    # Accounts: the admin login is root.
    Bad(
        "admin-user-root",
        "dns",
        ("admin_user",),
        "root",
        "admin_user",
        "'root'",
        "not a system or service account",
    ),
    # Secret strength: a one-character seed (the value never shows).
    Bad(
        "weak-seed",
        "pve",
        (),
        None,
        "secret pgbackrest_tls_seed",
        "*** (1 characters, about 5 bits)",
        "a random seed of at least 16 characters",
        secrets=SECRETS_TOML.replace(
            f'pgbackrest_tls_seed = "{THROW_AWAY}"', 'pgbackrest_tls_seed = "Q"'
        ),
    ),
    # Unknown groups: a typo of a role.
    Bad(
        "group-no-role-knows",
        "dns",
        (),
        None,
        "groups",
        "'dnss'",
        "(did you mean 'dns'?)",
        group="dnss",
    ),
]


def _fill(value: Any, private_key: Path) -> Any:
    if isinstance(value, list):
        return [_fill(item, private_key) for item in value]
    if isinstance(value, str):
        return value.replace(PRIVATE_KEY, str(private_key))
    return value


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        data = data[step]
    data[path[-1]] = value


def _assert_stopped_before_connecting(run: Run, listener: Listener) -> None:
    listener.close()
    assert listener.accepted == [], f"pyinfra connected: {listener.accepted}\n{run.output}"
    assert run.status == 2, run.output
    assert "is not valid; nothing was touched" in run.output
    assert run.seconds < TIME_LIMIT_S, f"took {run.seconds:.1f} s\n{run.output}"


def test_at_least_ten_distinct_bad_inventories() -> None:
    assert len(CASES) >= 10
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({case.key for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_inventory_stops_before_connecting(case: Bad, lab: Lab) -> None:
    if case.path:
        _set(lab.baseline.host(case.host), case.path, _fill(case.value, lab.keys.private))
    if case.secrets is not None:
        lab.write_secrets(case.secrets)
    if case.group:
        lab.baseline.groups[case.group] = [case.host]

    run = lab.run()

    _assert_stopped_before_connecting(run, lab.listener)
    shown = _fill(case.shown, lab.keys.private)
    assert f"host {case.host!r}: key {case.key!r} is {shown}" in run.output, run.output
    assert case.also in run.output, run.output


def test_secrets_file_readable_by_others_stops_before_connecting(lab: Lab) -> None:
    lab.write_secrets(SECRETS_TOML, mode=0o644)

    run = lab.run()

    lab.listener.close()
    assert lab.listener.accepted == [], run.output
    assert run.status == 2, run.output
    assert run.seconds < TIME_LIMIT_S, f"took {run.seconds:.1f} s\n{run.output}"
    assert f"run chmod 600 {lab.secrets}" in run.output
    assert THROW_AWAY not in run.output


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give the file to another user")
def test_secrets_file_of_another_user_stops_before_connecting(lab: Lab) -> None:
    os.chown(lab.secrets, 65534, -1)

    run = lab.run()

    lab.listener.close()
    assert lab.listener.accepted == [], run.output
    assert run.status == 2, run.output
    assert f"secrets file {lab.secrets} is owned by user id 65534" in run.output
    assert THROW_AWAY not in run.output


def test_valid_inventory_gets_past_validation_and_connects(lab: Lab) -> None:
    """The control: without a bad value, pyinfra goes on and connects to the listener."""
    process = subprocess.Popen(
        lab.command(),
        cwd=REPO,
        env=lab.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        connected = lab.listener.connected.wait(timeout=30)
    finally:
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    lab.listener.close()
    assert connected, output
    assert lab.listener.accepted, output
    assert "not valid" not in output, output
    assert "Connecting to hosts" in output, output
