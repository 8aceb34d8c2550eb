"""files/openclaw-pipeline-recover: the pipeline's restart hook on OpenClaw's restart recovery.

The script's own functions run here. The gateway is a TEST DOUBLE (``GatewayDouble``): it
answers ``sessions.list`` with the rows OpenClaw 2026.9.6 gives (``hasActiveRun``,
``startedAt``: a turn its restart recovery re-dispatched keeps the interrupted cycle's start,
a new turn has a later one) and records ``sessions.abort``. The clock is a counter.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "files" / "openclaw-pipeline-recover"
BOOT_MS = 1_796_368_700_000  # this start, as ExecStartPre recorded it


def load_script() -> ModuleType:
    loader = SourceFileLoader("openclaw_pipeline_recover", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


recover = load_script()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )  # fmt: skip


def row(key: str, active: bool, started: int | None) -> dict[str, Any]:
    return {"key": key, "hasActiveRun": active, "startedAt": started, "status": "running"}


class GatewayDouble:
    """The gateway's RPC as the hook calls it (TEST DOUBLE): ``unready`` failed calls first,
    then the listings in turn (the last one repeats)."""

    def __init__(self, listings: list[list[dict[str, Any]]], unready: int = 0) -> None:
        self.listings = listings
        self.unready = unready
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((method, params))
        if self.unready:
            self.unready -= 1
            raise RuntimeError("sessions.list: gateway closed (1006)")
        if method == "sessions.list":
            listing = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
            return {"sessions": listing}
        return {"ok": True}

    def aborted(self) -> list[dict[str, Any]]:
        return [params for method, params in self.calls if method == "sessions.abort"]


class Clock:
    """Monotonic seconds that move only when the hook sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# --- before the start (ExecStartPre) ---


def test_a_clean_last_stop_only_marks_this_run(tmp_path: Path) -> None:
    done = run("resume", str(tmp_path))
    assert done.returncode == 0 and done.stdout == ""
    assert (tmp_path / ".running").read_text().endswith("Z\n")
    assert not (tmp_path / ".discard").exists()


def test_after_an_unclean_stop_resume_leaves_it_to_openclaw(tmp_path: Path) -> None:
    (tmp_path / ".running").write_text("2026-12-04T07:16:00Z\n")
    done = run("resume", str(tmp_path))
    assert done.stdout.splitlines() == [
        "openclaw-pipeline: the last run (started 2026-12-04T07:16:00Z) did not stop cleanly:"
        " resume",
        "openclaw-pipeline: OpenClaw's restart recovery resumes its interrupted turns",
    ]
    assert not (tmp_path / ".discard").exists()


def test_after_an_unclean_stop_discard_is_armed_with_this_starts_time(tmp_path: Path) -> None:
    (tmp_path / ".running").write_text("2026-12-04T07:16:00Z\n")
    before = recover.now_ms()
    done = run("discard", str(tmp_path))
    assert "did not stop cleanly: discard" in done.stdout
    assert "cancelled once the gateway answers" in done.stdout
    armed = int((tmp_path / ".discard").read_text())
    assert before <= armed <= recover.now_ms()


def test_a_clean_stop_arms_no_discard(tmp_path: Path) -> None:
    run("discard", str(tmp_path))
    assert not (tmp_path / ".discard").exists()


def test_the_users_command_runs_instead_with_its_environment(tmp_path: Path) -> None:
    (tmp_path / ".running").write_text("x\n")
    seen = tmp_path / "seen"
    command = f'echo "$PIPELINE_RECOVERY $PIPELINE_STATE_DIR" > {seen}'
    done = run("discard", str(tmp_path), env={"PIPELINE_RECOVER_COMMAND": command})
    assert done.returncode == 0
    assert seen.read_text() == f"discard {tmp_path}\n"
    assert not (tmp_path / ".discard").exists()  # the command replaces the default


def test_a_failing_users_command_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / ".running").write_text("x\n")
    done = run("resume", str(tmp_path), env={"PIPELINE_RECOVER_COMMAND": "exit 3"})
    assert done.returncode != 0


def test_the_old_hooks_empty_work_directory_goes(tmp_path: Path) -> None:
    (tmp_path / "inflight").mkdir()
    (tmp_path / "discarded").mkdir()
    run("resume", str(tmp_path))
    assert not (tmp_path / "inflight").exists()
    assert (tmp_path / "discarded").is_dir()  # kept: it may hold something to inspect


# --- which sessions the discard cancels ---


def test_only_runs_begun_before_this_start_are_the_interrupted_ones() -> None:
    sessions = [
        row("agent:main:main", True, BOOT_MS - 70_000),  # re-dispatched by restart recovery
        row("agent:main:new", True, BOOT_MS + 5_000),  # someone's new turn since the start
        row("agent:main:idle", False, BOOT_MS - 90_000),
        row("agent:main:unknown", True, None),
        {"hasActiveRun": True, "startedAt": BOOT_MS - 1},  # no key: nothing to name
    ]
    assert recover.interrupted(sessions, BOOT_MS) == ["agent:main:main"]


# --- after the start (ExecStartPost) ---


def test_discard_waits_for_the_gateway_and_cancels_each_interrupted_turn_once() -> None:
    clock = Clock()
    gateway = GatewayDouble(
        [
            [],  # recovery has not re-dispatched yet
            [row("agent:main:main", True, BOOT_MS - 70_000)],
            [row("agent:main:main", True, BOOT_MS - 70_000)],  # still winding down
            [row("agent:main:main", False, BOOT_MS - 70_000), row("agent:b:x", True, 1)],
        ],
        unready=2,
    )
    cancelled = recover.discard_interrupted(
        gateway, BOOT_MS, ready_wait=30, window=20, poll=3, clock=clock, sleep=clock.sleep
    )
    assert cancelled == ["agent:main:main", "agent:b:x"]
    assert gateway.aborted() == [
        {"key": "agent:main:main", "clearQueued": True},
        {"key": "agent:b:x", "clearQueued": True},
    ]
    assert gateway.calls[0] == ("sessions.list", {"limit": 1000})
    assert 20 <= clock.now <= 30  # the window after the first answer, then done


def test_a_gateway_that_never_answers_is_an_error_after_the_wait() -> None:
    clock = Clock()
    gateway = GatewayDouble([[]], unready=1000)
    with pytest.raises(RuntimeError, match="the gateway did not answer in 30 s"):
        recover.discard_interrupted(
            gateway, BOOT_MS, ready_wait=30, window=20, poll=3, clock=clock, sleep=clock.sleep
        )
    assert gateway.aborted() == []


def test_started_without_an_armed_discard_asks_the_gateway_nothing(tmp_path: Path) -> None:
    done = run("started", str(tmp_path), "/nonexistent/openclaw")
    assert done.returncode == 0 and done.stdout == ""


def test_a_failed_discard_is_reported_not_fatal_and_disarmed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".discard").write_text(f"{BOOT_MS}\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gateway-token").write_text("gw-token\n")
    # A stand-in `openclaw` that fails every call, as a CLI that cannot reach the gateway does.
    cli = tmp_path / "openclaw"
    cli.write_text("#!/bin/sh\necho 'gateway closed (1006)' >&2\nexit 1\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    recover.READY_WAIT, saved = 0, recover.READY_WAIT
    try:
        os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
        recover.after_start(tmp_path, str(cli))
    finally:
        recover.READY_WAIT = saved
        del os.environ["CREDENTIALS_DIRECTORY"]
    assert not (tmp_path / ".discard").exists()
    assert capsys.readouterr().out == (
        "openclaw-pipeline: could not discard the interrupted turns (the gateway did not answer"
        " in 0 s: sessions.list: gateway closed (1006)); OpenClaw resumes them\n"
    )


def test_the_gateway_call_passes_the_token_in_the_environment_only(tmp_path: Path) -> None:
    # A stand-in `openclaw` that shows what it got: its arguments and the token's variable.
    cli = tmp_path / "openclaw"
    cli.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        'print(json.dumps({"argv": sys.argv[1:], "token": os.environ["OPENCLAW_GATEWAY_TOKEN"]}))\n'
    )
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    answer = recover.gateway_call(str(cli), "gw-s3cr3t")("sessions.abort", {"key": "k"})
    assert answer == {
        "argv": ["gateway", "call", "sessions.abort", "--params", '{"key": "k"}', "--json"],
        "token": "gw-s3cr3t",
    }


# --- after the stop (ExecStopPost) ---


@pytest.mark.parametrize("result, kept", [("success", False), ("signal", True), ("", True)])
def test_only_a_clean_stop_removes_the_mark(tmp_path: Path, result: str, kept: bool) -> None:
    (tmp_path / ".running").write_text("x\n")
    run("stopped", str(tmp_path), env={"SERVICE_RESULT": result} if result else None)
    assert (tmp_path / ".running").exists() == kept


def test_a_wrong_call_is_a_usage_error(tmp_path: Path) -> None:
    done = run("inflight", str(tmp_path))
    assert done.returncode == 2 and "usage:" in done.stderr
