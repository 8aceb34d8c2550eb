"""The restore's WAL fetch against real WAL spool servers on loopback, and the receiver's start.

``files/homelab-wal-spool`` runs for real (two of them: two receivers), with certificates of
the WAL spool CA made as the deploy makes them; ``files/memory-store-wal-fetch`` runs for real
against them. Test doubles: ``pgbackrest`` (its archive-get answers from a directory, or with
the exit code a test sets), and ``psql``/``pg_receivewal`` for the receiver's start script
(``IDENTIFY_SYSTEM``'s answer from the environment; the receiver records its arguments).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.common.pgbackrest import host_tls
from tests.plan.harness import REPO

SPOOL = REPO / "files" / "homelab-wal-spool"
FETCH = REPO / "files" / "memory-store-wal-fetch"
RUNNER = REPO / "files" / "homelab-wal-receiver"
SEED = "wal-spool-unit-test-seed"
SEGMENT = "000000010000000000000003"
SEGMENT_SIZE = 16 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tls_files(directory: Path, name: str, ca_name: str = "ca.crt") -> tuple[Path, Path, Path]:
    tls = host_tls(SEED, name, "home.arpa", purpose="wal-spool", addresses=("127.0.0.1",))
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / ca_name, directory / f"{name}.crt", directory / f"{name}.key")
    for path, text in zip(paths, (tls.ca_cert, tls.cert, tls.key), strict=True):
        path.write_text(text)
    return paths


class Receiver:
    """One spool server (the real script) on 127.0.0.1 serving ``directory``."""

    def __init__(self, root: Path, name: str) -> None:
        self.directory = root / name / "spool"
        self.directory.mkdir(parents=True)
        ca, cert, key = tls_files(root / name / "tls", name)
        self.port = free_port()
        self.process = subprocess.Popen(
            ["python3", str(SPOOL), "--directory", str(self.directory), "--listen", "127.0.0.1",
             "--port", str(self.port), "--ca", str(ca), "--cert", str(cert), "--key", str(key),
             "--allow", "ageis-node"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"spool server {name} did not listen")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[dict[str, Receiver]]:
    started = {name: Receiver(tmp_path, name) for name in ("pve", "embedder")}
    try:
        yield started
    finally:
        for receiver in started.values():
            receiver.stop()


def write_segment(path: Path, wal_bytes: int) -> bytes:
    """A pre-padded segment as pg_receivewal writes it: ``wal_bytes`` of WAL, then zeros."""
    content = bytes([0x5A]) * wal_bytes + bytes(SEGMENT_SIZE - wal_bytes)
    path.write_bytes(content)
    return content


def fetch(
    tmp_path: Path,
    receivers: dict[str, Receiver],
    name: str,
    archive_exit: int = 1,
    extra: str = "",
    ports: dict[str, int] | None = None,
) -> tuple[int, str, Path]:
    """Run the fetch as PostgreSQL would; (exit code, its messages, the destination)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    archive = tmp_path / "archive"
    archive.mkdir(exist_ok=True)
    double = bin_dir / "pgbackrest"
    double.write_text(
        "#!/bin/sh\n# Test double of pgbackrest archive-get: the file from the archive"
        " directory, else the set exit code.\n"
        f'for last; do :; done\nname=$3\nif [ -e "{archive}/$name" ]; then'
        f' cp "{archive}/$name" "$last"; exit 0; fi\nexit {archive_exit}\n'
    )
    double.chmod(0o755)
    tls_dir = tmp_path / "client-tls"
    tls_files(tls_dir, "ageis-node")
    os.replace(tls_dir / "ageis-node.crt", tls_dir / "client.crt")
    os.replace(tls_dir / "ageis-node.key", tls_dir / "client.key")
    ports = ports or {name: r.port for name, r in receivers.items()}
    words = " ".join(f"walrcv_{name}=127.0.0.1:{port}" for name, port in ports.items())
    env_file = tls_dir / "fetch.env"
    env_file.write_text(f"PGBACKREST_STANZA=memory\nWAL_RECEIVERS='{words}'\n{extra}")
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir(exist_ok=True)
    result = subprocess.run(
        ["python3", str(FETCH), name, str(dest)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
             "WAL_FETCH_DIR": str(tls_dir)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result.returncode, result.stderr, dest


def test_the_archive_answers_first(tmp_path: Path, receivers: dict[str, Receiver]) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / SEGMENT).write_bytes(b"from the archive")
    write_segment(receivers["pve"].directory / SEGMENT, 100)
    code, _, dest = fetch(tmp_path, receivers, SEGMENT)
    assert code == 0 and dest.read_bytes() == b"from the archive"


def test_a_complete_segment_the_archive_lacks_comes_from_a_receiver(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    content = write_segment(receivers["embedder"].directory / SEGMENT, SEGMENT_SIZE)
    code, messages, dest = fetch(tmp_path, receivers, SEGMENT)
    assert code == 0, messages
    assert dest.read_bytes() == content and "from receiver walrcv_embedder" in messages


def test_the_partial_segment_holding_the_most_wal_is_the_tail(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    write_segment(receivers["pve"].directory / f"{SEGMENT}.partial", 300_000)
    longest = write_segment(receivers["embedder"].directory / f"{SEGMENT}.partial", 900_000)
    code, messages, dest = fetch(tmp_path, receivers, SEGMENT)
    assert code == 0, messages
    assert dest.read_bytes() == longest
    assert "partial segment from walrcv_embedder, 900000 bytes" in messages


def test_nothing_anywhere_is_the_end_of_the_wal(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    code, _, dest = fetch(tmp_path, receivers, SEGMENT)
    assert code == 1 and not dest.exists()
    # A timeline history nobody has: also the plain "not found" PostgreSQL probes for.
    assert fetch(tmp_path, receivers, "00000002.history")[0] == 1


def test_a_receiver_that_does_not_answer_stops_the_recovery(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    ports = {"pve": free_port(), "embedder": receivers["embedder"].port}  # pve: nobody there
    code, messages, _ = fetch(tmp_path, receivers, SEGMENT, ports=ports)
    assert code == 127, messages  # > 125: PostgreSQL aborts the recovery, no early promotion
    assert "walrcv_pve" in messages and "recovery stops" in messages
    code, _, _ = fetch(
        tmp_path, receivers, SEGMENT, ports=ports, extra="WAL_FETCH_WITHOUT_RECEIVERS=1\n"
    )
    assert code == 1


def test_a_failure_of_its_own_stops_the_recovery(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    # A settings line it cannot read (a word without "="): its own error, not "not found".
    code, messages, _ = fetch(tmp_path, receivers, SEGMENT, extra="WAL_RECEIVERS='broken'\n")
    assert code == 127 and "the recovery stops" in messages


def test_an_archive_error_stops_the_recovery(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    write_segment(receivers["pve"].directory / SEGMENT, SEGMENT_SIZE)
    code, messages, _ = fetch(tmp_path, receivers, SEGMENT, archive_exit=103)
    assert code == 127 and "archive-get" in messages and "exit 103" in messages


def test_the_spool_serves_wal_names_to_the_store_only(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    pve = receivers["pve"]
    write_segment(pve.directory / SEGMENT, 10)
    (pve.directory.parent / "secret").write_text("not WAL")
    ca, cert, key = tls_files(tmp_path / "others", "mallory")

    def curl(path: str, cert: Path, key: Path) -> str:
        return subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
             "--cert", str(cert), "--key", str(key), f"https://127.0.0.1:{pve.port}{path}"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip

    # Another name of the same CA: refused. The store's name: only WAL file names.
    assert curl(f"/{SEGMENT}", cert, key) == "403"
    store_ca, store_cert, store_key = tls_files(tmp_path / "store", "ageis-node")
    assert curl(f"/{SEGMENT}", store_cert, store_key) == "200"
    assert curl("/../secret", store_cert, store_key) == "400"
    assert curl("/%2e%2e/secret", store_cert, store_key) == "400"
    # Without a client certificate: no TLS session at all.
    bare = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(store_ca),
         f"https://127.0.0.1:{pve.port}/{SEGMENT}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bare.stdout in ("000", "") and bare.returncode != 0


# --- the receiver's start (files/homelab-wal-receiver) -------------------------------------


def start_receiver(
    tmp_path: Path, directory: Path, sysid: str, tli: int, reachable: bool = True
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "pgbin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "pg_receivewal.log"
    (bin_dir / "psql").write_text(
        "#!/bin/sh\n# Test double of psql: IDENTIFY_SYSTEM's row, or a refused connection.\n"
        + (f'echo "{sysid}|{tli}|0/3000148|"\n' if reachable else
           'echo "connection refused" >&2; exit 2\n')
    )  # fmt: skip
    (bin_dir / "pg_receivewal").write_text(
        f'#!/bin/sh\n# Test double of pg_receivewal: records its arguments.\necho "$@" >> {log}\n'
    )
    for tool in ("psql", "pg_receivewal"):
        (bin_dir / tool).chmod(0o755)
    result = subprocess.run(
        ["sh", str(RUNNER), str(bin_dir), "host=db user=wal_receiver", str(directory),
         "walrcv_pve"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result, log.read_text() if log.exists() else ""


def superseded(directory: Path) -> list[str]:
    return sorted(
        f"{d.name[:10]}/{f.name}" for d in directory.glob("superseded-*") for f in d.iterdir()
    )


def test_a_fresh_receiver_records_the_cluster_and_streams(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    result, calls = start_receiver(tmp_path, directory, "7001", 1)
    assert result.returncode == 0, result.stderr
    assert (directory / ".system-identifier").read_text() == "7001\n"
    create, stream = calls.splitlines()
    assert "--slot=walrcv_pve --create-slot --if-not-exists" in create
    assert stream.endswith(f"--directory={directory} --slot=walrcv_pve --synchronous --no-loop")


def test_the_same_history_is_continued(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / ".system-identifier").write_text("7001\n")
    (directory / "000000010000000000000002").write_bytes(b"x")
    (directory / "000000010000000000000003.partial").write_bytes(b"y")
    result, _ = start_receiver(tmp_path, directory, "7001", 1)
    assert result.returncode == 0 and superseded(directory) == []
    assert (directory / "000000010000000000000003.partial").exists()


@pytest.mark.parametrize(
    "sysid, tli, history, moved",
    [
        ("7001", 2, False, True),  # a restore or rollback made timeline 2 while it was away
        ("7001", 2, True, False),  # it followed the switch itself: 00000002.history is here
        ("9999", 1, False, True),  # another cluster
    ],
)
def test_wal_the_server_cannot_continue_is_moved_aside_not_deleted(
    tmp_path: Path, sysid: str, tli: int, history: bool, moved: bool
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / ".system-identifier").write_text("7001\n")
    (directory / "000000010000000000000002").write_bytes(b"x")
    (directory / "000000010000000000000003.partial").write_bytes(b"y")
    if history:
        (directory / "00000002.history").write_text("1\t0/3000000\tno recovery target\n")
    result, calls = start_receiver(tmp_path, directory, sysid, tli)
    assert result.returncode == 0, result.stderr
    kept = superseded(directory)
    if moved:
        assert kept == [
            "superseded/.system-identifier",
            "superseded/000000010000000000000002",
            "superseded/000000010000000000000003.partial",
        ]
        assert "moved to" in result.stdout
    else:
        assert kept == [] and (directory / "000000010000000000000003.partial").exists()
    assert (directory / ".system-identifier").read_text() == f"{sysid}\n"
    assert "--synchronous" in calls


def test_a_server_that_does_not_answer_is_a_failed_run(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    result, calls = start_receiver(tmp_path, directory, "7001", 1, reachable=False)
    assert result.returncode == 1 and "does not answer yet" in result.stderr
    assert calls == ""  # systemd starts it again; nothing was streamed or moved
