"""The drills' writer: commits memories to the lab's memory store over the LAN, logging acks.

Runs on the controller (this machine) in a thread, as ``actr_engine`` (the lab inventory admits
the lab gateway for it, ``postgresql_extra_clients``), one autocommit INSERT at a time. A row is
*acknowledged* once the server has answered its COMMIT: only those count, and after any drill
every one of them must be in the store (or, for a lost disk, the missing ones are the RPO).
Connection failures are expected mid-drill: the writer reconnects until it is stopped.
"""

from __future__ import annotations

import contextlib
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pg8000.native

from tests.lab import hosts


@dataclass(frozen=True)
class Ack:
    seq: int
    chunk_id: int
    at: float  # time.time() when the commit was acknowledged


@dataclass
class WriterLog:
    run: str
    acks: list[Ack] = field(default_factory=list)
    attempts: int = 0
    errors: int = 0


def password() -> str:
    secrets = tomllib.loads(hosts.SECRETS_FILE.read_text())
    return secrets["memory_store_actr_engine_password"]


def connect(timeout: float = 2.0) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        "actr_engine",
        host=hosts.by_name("ageis-node").address,
        database="memory_store",
        password=password(),
        timeout=timeout,
    )


class MemoryWriter:
    """Commit memories continuously until :meth:`stop`; ``log.acks`` lists what was acked."""

    def __init__(self, interval: float = 0.02) -> None:
        self.log = WriterLog(run=uuid.uuid4().hex[:12])
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemoryWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def acked_since(self, moment: float) -> int:
        return sum(1 for ack in self.log.acks if ack.at >= moment)

    def wait_for_acks(self, count: int, timeout: float = 120) -> None:
        """Block until ``count`` more commits are acknowledged (the store serves)."""
        target = len(self.log.acks) + count
        deadline = time.monotonic() + timeout
        while len(self.log.acks) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} acknowledged commits within {timeout:.0f}s")
            time.sleep(0.1)

    def _loop(self) -> None:
        seq = 0
        conn: pg8000.native.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = connect()
                seq += 1
                self.log.attempts += 1
                rows = conn.run(
                    "INSERT INTO memory_chunk (content, metadata) VALUES (:content, CAST(:meta AS"
                    " jsonb)) RETURNING id",
                    content=f"drill {self.log.run} {seq}",
                    meta=f'{{"drill": "{self.log.run}", "seq": {seq}}}',
                )
                self.log.acks.append(Ack(seq, int(rows[0][0]), time.time()))
            except Exception:  # the host is down or restarting: try again
                self.log.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self._stop.wait(0.2)
                continue
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def present_seqs(run: str) -> set[int]:
    """The drill rows of ``run`` that the store holds now."""
    conn = connect(timeout=10)
    try:
        rows = conn.run(
            "SELECT (metadata->>'seq')::int FROM memory_chunk WHERE metadata->>'drill' = :run",
            run=run,
        )
    finally:
        conn.close()
    return {int(row[0]) for row in rows}


def lost(log: WriterLog) -> list[Ack]:
    """Acknowledged commits the store no longer holds."""
    present = present_seqs(log.run)
    return [ack for ack in log.acks if ack.seq not in present]


def secrets_file() -> Path:
    return hosts.SECRETS_FILE
