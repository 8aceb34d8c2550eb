"""``files/memory-store-roll-forward`` on a real PostgreSQL: a rolled-back cluster comes forward.

A scratch cluster of the controller's PostgreSQL server (Unix socket only) archives its WAL to
a directory. A "snapshot" is a copy of its data directory after an immediate stop (what a VM
snapshot holds: a crash-consistent disk); rows are committed after it; a "rollback" puts the
copy back. The WAL sources are a test double of ``memory-store-wal-fetch`` (a shell script):
the archive directory, then a receiver directory holding the WAL written since, the newest
segment as ``.partial``, as ``pg_receivewal`` keeps it. The check runs for real (``pg_controldata``,
``pg_waldump``), and PostgreSQL itself replays what it decided.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "files" / "memory-store-roll-forward"


def _binaries() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_waldump"), key=lambda p: int(p.split("/")[4])
    )
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class Scratch:
    base: Path
    bindir: Path
    prefix: list[str]

    @property
    def data(self) -> Path:
        return self.base / "data"

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True, check=check)

    def pg_ctl(self, *args: str) -> None:
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                 str(self.base / "log"), *args)  # fmt: skip

    def sql(self, query: str) -> str:
        return self.run(
            str(self.bindir / "psql"), "-h", str(self.base), "-p", "5432", "-U", "postgres",
            "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", query,
        ).stdout.strip()  # fmt: skip

    def promoted(self, timeout: float = 30) -> bool:
        """Recovery ended (it accepts reads before: hot standby)."""
        deadline = time.monotonic() + timeout
        while self.sql("SELECT pg_is_in_recovery()") == "t":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def copy(self, source: Path, dest: Path) -> None:
        self.run("rm", "-rf", str(dest))
        self.run("cp", "-a", str(source), str(dest))

    def roll_forward(self, fetch: str = "fetch") -> subprocess.CompletedProcess[str]:
        env_file = self.base / "memory-store.env"
        env_file.write_text(
            f"PG_MAJOR={self.bindir.parent.name}\nPG_DATA={self.data}\nPG_BINDIR={self.bindir}\n"
            f"WAL_FETCH={self.base / fetch}\nROLL_FORWARD_WAIT=0\n"
        )
        return subprocess.run(
            ["python3", str(SCRIPT)],
            capture_output=True,
            text=True,
            env={**os.environ, "MEMORY_STORE_ENV": str(env_file),
                 "WAL_FETCH_ENV": str(self.base / "fetch.env")},
        )  # fmt: skip


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    bindir = _binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server (pg_waldump) on this machine: install postgresql")
    base = Path(tempfile.mkdtemp(prefix="homelab-roll-forward-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    s = Scratch(base, bindir, prefix)
    for name in ("archive", "receiver"):
        s.run("mkdir", str(base / name))
    # Test double of memory-store-wal-fetch: the archive, then the receiver (its .partial too).
    (base / "fetch").write_text(
        "#!/bin/sh\n"
        f'cp "{base}/archive/$1" "$2" 2>/dev/null && exit 0\n'
        f'cp "{base}/receiver/$1" "$2" 2>/dev/null && exit 0\n'
        f'cp "{base}/receiver/$1.partial" "$2" 2>/dev/null && exit 0\n'
        "exit 1\n"
    )
    (base / "unsure").write_text("#!/bin/sh\necho 'receiver pve did not answer' >&2\nexit 127\n")
    for name in ("fetch", "unsure"):
        (base / name).chmod(0o755)
    s.run(str(bindir / "initdb"), "-D", str(s.data), "-A", "trust", "-U", "postgres")
    with open(s.data / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = 5432\nunix_socket_directories = '{base}'\nlisten_addresses = ''\n"
            "wal_level = replica\narchive_mode = on\n"
            f"archive_command = 'cp %p {base}/archive/%f'\n"
            f"restore_command = '{base}/fetch %f \"%p\"'\n"
        )
    try:
        s.pg_ctl("start")
        s.sql("CREATE TABLE memory (id int PRIMARY KEY)")
        s.sql("INSERT INTO memory SELECT generate_series(1, 10)")
        yield s
    finally:
        s.run(str(bindir / "pg_ctl"), "-D", str(s.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def snapshot_then_commit(s: Scratch, rows: int, unsent: int = 0) -> None:
    """A crash-consistent copy of the cluster, then ``rows`` committed after it, whose WAL the
    receiver holds (the newest segment as ``.partial``, zero past its end as pg_receivewal
    pads it), but for the last ``unsent`` rows' (written here, not sent yet); then killed."""
    s.pg_ctl("-m", "immediate", "stop")
    s.copy(s.data, s.base / "snapshot")
    s.pg_ctl("start")
    s.sql(f"INSERT INTO memory SELECT generate_series(11, {10 + rows - unsent})")
    sent = s.sql("SELECT pg_current_wal_flush_lsn()")
    for row in range(10 + rows - unsent + 1, 10 + rows + 1):
        s.sql(f"INSERT INTO memory VALUES ({row})")
    newest = s.sql(f"SELECT pg_walfile_name('{sent}')")
    offset = int(s.sql(f"SELECT file_offset FROM pg_walfile_name_offset('{sent}')"))
    s.pg_ctl("-m", "immediate", "stop")
    for path in sorted((s.data / "pg_wal").glob("0*")):
        if len(path.name) == 24 and path.name <= newest:
            name = path.name + (".partial" if path.name == newest else "")
            s.run("cp", str(path), str(s.base / "receiver" / name))
    partial = s.base / "receiver" / f"{newest}.partial"
    with open(partial, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(offset)
        handle.write(bytes(size - offset))


def test_a_rolled_back_cluster_replays_to_the_last_commit_on_a_new_timeline(
    scratch: Scratch,
) -> None:
    snapshot_then_commit(scratch, 25)
    scratch.copy(scratch.base / "snapshot", scratch.data)  # the rollback
    result = scratch.roll_forward()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the cluster is behind" in result.stdout, result.stdout
    assert (scratch.data / "recovery.signal").exists()
    scratch.pg_ctl("start")
    assert scratch.promoted(), (scratch.base / "log").read_text()[-2000:]
    assert scratch.sql("SELECT count(*) FROM memory") == "35"
    assert scratch.sql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"


def test_without_the_check_a_rolled_back_cluster_misses_the_commits(scratch: Scratch) -> None:
    """The control: the same rollback started as it is loses what came after the snapshot."""
    snapshot_then_commit(scratch, 25)
    scratch.copy(scratch.base / "snapshot", scratch.data)
    scratch.pg_ctl("start")
    assert scratch.sql("SELECT count(*) FROM memory") == "10"
    assert scratch.sql("SELECT timeline_id FROM pg_control_checkpoint()") == "1"


def test_a_cluster_that_lost_nothing_starts_as_usual(scratch: Scratch) -> None:
    snapshot_then_commit(scratch, 25)  # killed, not rolled back: a power cut
    result = scratch.roll_forward()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a normal start" in result.stdout, result.stdout
    assert not (scratch.data / "recovery.signal").exists()
    scratch.pg_ctl("start")
    assert scratch.sql("SELECT count(*) FROM memory") == "35"
    assert scratch.sql("SELECT timeline_id FROM pg_control_checkpoint()") == "1"


def test_a_receiver_short_of_commits_not_acknowledged_yet_is_no_reason(scratch: Scratch) -> None:
    """A power cut: the last commits are flushed here but not on the receiver (not acknowledged,
    so not promised): the receiver's WAL ends before ours, which is no history of its own."""
    snapshot_then_commit(scratch, 25, unsent=3)
    result = scratch.roll_forward()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a normal start" in result.stdout, result.stdout
    scratch.pg_ctl("start")
    assert scratch.sql("SELECT count(*) FROM memory") == "35"


def test_a_running_cluster_is_left_alone(scratch: Scratch) -> None:
    result = scratch.roll_forward(fetch="unsure")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PostgreSQL runs" in result.stdout


def test_sources_that_cannot_tell_keep_postgresql_down(scratch: Scratch) -> None:
    snapshot_then_commit(scratch, 5)
    scratch.copy(scratch.base / "snapshot", scratch.data)
    result = scratch.roll_forward(fetch="unsure")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "receiver pve did not answer" in result.stdout
    assert "PostgreSQL does not start" in result.stdout
    assert not (scratch.data / "recovery.signal").exists()
    (scratch.base / "fetch.env").write_text("WAL_FETCH_WITHOUT_RECEIVERS=1\n")
    accepted = scratch.roll_forward(fetch="unsure")
    assert accepted.returncode == 0, accepted.stdout
    assert "starting as it is" in accepted.stdout


def test_wal_of_another_history_stops_the_start(scratch: Scratch) -> None:
    """Rolled back and started without the check (other rows since): the receiver's WAL and
    ours differ at the same positions; neither replaying nor starting is safe."""
    snapshot_then_commit(scratch, 5)
    scratch.copy(scratch.base / "snapshot", scratch.data)
    scratch.pg_ctl("start")
    scratch.sql("INSERT INTO memory SELECT generate_series(100, 102)")
    scratch.pg_ctl("-m", "immediate", "stop")
    result = scratch.roll_forward()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not this cluster's" in result.stdout, result.stdout
