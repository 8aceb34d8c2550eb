"""The lab's VM agent: real snapshots and rollbacks of lab hosts for the Proxmox API double.

The API double (``tests/doubles/pve_api.py``) runs inside the lab's ``pve`` container and
cannot touch the other containers, which stand in for its guests. This agent runs on the lab
machine (``labctl.py _vm-agent``, a detached daemon that ``labctl up`` and ``labctl guests``
start and ``labctl down`` stops) and does for the double what Proxmox does to a VM's disks:

- ``snapshot``: a crash-consistent copy of the guest's root file system and its own disks
  (its pools; not virtiofs shares, which are the hypervisor's directories), taken with the
  container frozen (cgroup v2 ``cgroup.freeze``) and thawed whatever happens. The copy goes to
  ``STATE_DIR/snapshots/<host>/<snapshot>/{root,pools/<pool>}``; files unchanged since the
  previous copy (``.base``) are hard links to it (``rsync --link-dest``), so a snapshot costs
  what changed. Copies are never written once made, so sharing their inodes is safe; the live
  root never shares one with a copy.
- ``delete``: the copy becomes the new ``.base`` (the next snapshot's reference).
- ``rollback``: as ``qm rollback`` of a VM without RAM state: pull the plug, put the copy's
  files back (``rsync --delete``: new inodes), start the guest again when asked.

The exchange with the double is a directory in pve's root (``/var/lib/homelab-lab-vm-agent``
inside pve): ``guests`` (the lab hosts served, one a line), ``requests/<id>.json`` written by
the double, ``replies/<id>.json`` written here (``{"ok", "lines", "error"}``), both atomically
(a temporary file renamed). Requests are handled one at a time, in name order.

Standard library only, like labctl. The container work (freeze, power) comes in as
:class:`Controls`, so the copy logic runs on plain directories in unit tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

EXCHANGE_INSIDE = "/var/lib/homelab-lab-vm-agent"  # the exchange directory, as pve sees it
POLL_SECONDS = 0.2
FREEZE_TIMEOUT = 30.0  # seconds for a container's cgroup to report itself frozen
# Proxmox's snapshot names (pve-configid); also keeps a name a plain path component.
SNAPSHOT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{1,39}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
BASE = ".base"
# -H -A -X --numeric-ids: hard links, ACLs, xattrs and owners as they are (a root file system);
# --modify-window=-1: compare mtimes to the nanosecond; --one-file-system: never into a mount.
RSYNC = (
    "rsync",
    "-a",
    "-H",
    "-A",
    "-X",
    "--numeric-ids",
    "--modify-window=-1",
    "--one-file-system",
    "--stats",
)


class AgentError(Exception):
    """An action failed; the message goes to the double as the task's error."""


class AgentStopped(Exception):
    """SIGTERM arrived during an action (labctl down): abort it, thawing what was frozen."""


@dataclass(frozen=True)
class Disks:
    """What the agent copies of one lab VM: its root file system and its own pools."""

    name: str
    root: Path
    pools: dict[str, Path]

    def parts(self) -> list[tuple[str, Path]]:
        """(place in a snapshot, live directory), root first."""
        return [("root", self.root)] + [
            (f"pools/{pool}", path) for pool, path in sorted(self.pools.items())
        ]


@dataclass(frozen=True)
class Controls:
    """The container side, by host name: ``freeze`` a running one for the time of a copy (a
    context manager; nothing to do when it is stopped), ``power_off`` (pull the plug, wait
    until its supervisor is gone; True when it ran) and ``power_on`` (returns once started)."""

    freeze: Callable[[str], AbstractContextManager[object]]
    power_off: Callable[[str], bool]
    power_on: Callable[[str], None]


# --- copies ---------------------------------------------------------------------------------


def _size(count: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= factor:
            return f"{count / factor:.1f} {unit}"
    return f"{count} B"


def _stat(text: str, label: str) -> int:
    match = re.search(rf"^{label}: ([\d,.]+)", text, re.MULTILINE)
    return int(re.sub(r"[,.]", "", match[1])) if match else 0


def rsync(args: list[str], what: str) -> tuple[int, int]:
    """Run rsync with ``RSYNC`` + ``args``; (total bytes, bytes copied). AgentError on failure,
    with the command and the end of its stderr."""
    command = [*RSYNC, *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        stderr = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise AgentError(f"{what}: `{' '.join(command)}` exited {result.returncode}:\n{stderr}")
    total = _stat(result.stdout, "Total file size")
    return total, _stat(result.stdout, "Total transferred file size")


def _guest_dir(store: Path, disks: Disks) -> Path:
    return store / disks.name


def _snapshot_dir(store: Path, disks: Disks, snapshot: str) -> Path:
    if not SNAPSHOT_NAME.match(snapshot):
        raise AgentError(
            f"{disks.name}: snapshot name {snapshot!r} is not a Proxmox snapshot name"
            f" ({SNAPSHOT_NAME.pattern})"
        )
    return _guest_dir(store, disks) / snapshot


def take_snapshot(
    disks: Disks,
    snapshot: str,
    store: Path,
    freeze: Callable[[str], AbstractContextManager[object]],
) -> list[str]:
    """Copy the guest's root and pools into ``store/<host>/<snapshot>`` (frozen while copying)."""
    started = time.monotonic()
    what = f"snapshot {snapshot} of {disks.name}"
    target = _snapshot_dir(store, disks, snapshot)
    partial = target.with_name(target.name + ".partial")
    base = _guest_dir(store, disks) / BASE
    for _, live in disks.parts():
        if not live.is_dir():
            raise AgentError(f"{what}: {live} does not exist")
    lines = []
    if target.exists():  # left by a double that forgot the snapshot (reset, new root)
        shutil.rmtree(target)
        lines.append(f"replaced an older copy named {snapshot}")
    shutil.rmtree(partial, ignore_errors=True)
    total = copied = 0
    with freeze(disks.name):
        for part, live in disks.parts():
            destination = partial / part
            destination.parent.mkdir(parents=True, exist_ok=True)
            link = [f"--link-dest={base / part}"] if (base / part).is_dir() else []
            size, sent = rsync([*link, f"{live}/", f"{destination}/"], what)
            total, copied = total + size, copied + sent
    partial.rename(target)
    took = time.monotonic() - started
    reference = "incremental" if base.is_dir() else "full"
    return [
        *lines,
        f"{what}: {took:.1f} s, {_size(total)}, {_size(copied)} copied ({reference})",
    ]


def delete_snapshot(disks: Disks, snapshot: str, store: Path) -> list[str]:
    """The copy becomes ``.base``, the reference of the next snapshot (the older one goes)."""
    started = time.monotonic()
    target = _snapshot_dir(store, disks, snapshot)
    if not target.is_dir():
        # The end state is there: a snapshot the double recorded before the agent served the
        # guest (or whose copy went with `labctl up --fresh`) has nothing to delete.
        return [f"delete snapshot {snapshot} of {disks.name}: no copy to delete"]
    base = _guest_dir(store, disks) / BASE
    old = base.with_name(BASE + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if base.exists():
        base.rename(old)
    target.rename(base)
    shutil.rmtree(old, ignore_errors=True)
    took = time.monotonic() - started
    return [f"delete snapshot {snapshot} of {disks.name}: {took:.1f} s (kept as the next base)"]


def roll_back(
    disks: Disks, snapshot: str, store: Path, controls: Controls, start: bool
) -> list[str]:
    """Power the guest off, put the copy's files back, start it again when ``start``."""
    started = time.monotonic()
    what = f"rollback of {disks.name} to {snapshot}"
    target = _snapshot_dir(store, disks, snapshot)
    if not target.is_dir():
        raise AgentError(f"{what}: no copy of snapshot {snapshot} in {target.parent}")
    missing = [part for part, _ in disks.parts() if not (target / part).is_dir()]
    if missing:
        raise AgentError(f"{what}: the copy in {target} lacks {', '.join(missing)}")
    was_running = controls.power_off(disks.name)
    total = copied = 0
    for part, live in disks.parts():
        live.mkdir(parents=True, exist_ok=True)
        size, sent = rsync(["--delete", f"{target / part}/", f"{live}/"], what)
        total, copied = total + size, copied + sent
    if start:
        controls.power_on(disks.name)
    took = time.monotonic() - started
    state = "started" if start else "left stopped"
    return [
        f"{what}: {took:.1f} s, {_size(total)}, {_size(copied)} restored"
        f" ({'was running' if was_running else 'was stopped'}, {state})"
    ]


@contextmanager
def frozen(cgroup: Path, timeout: float = FREEZE_TIMEOUT) -> Iterator[None]:
    """Freeze a cgroup v2 (all its processes) and thaw it on the way out, whatever happens."""
    freeze = cgroup / "cgroup.freeze"
    events = cgroup / "cgroup.events"
    try:
        freeze.write_text("1\n")
        deadline = time.monotonic() + timeout
        while "frozen 1" not in events.read_text().splitlines():
            if time.monotonic() > deadline:
                raise AgentError(f"{cgroup} did not report itself frozen in {timeout:.0f} s")
            time.sleep(0.05)
        yield
    finally:
        if freeze.exists():
            freeze.write_text("0\n")


# --- requests -------------------------------------------------------------------------------


def handle(
    request: dict[str, Any], guests: dict[str, Disks], store: Path, controls: Controls
) -> dict[str, Any]:
    """The reply to one request: ``{"ok", "lines", "error"}``."""
    action = request.get("action")
    name = str(request.get("guest"))
    snapshot = str(request.get("snapshot"))
    try:
        disks = guests.get(name)
        if disks is None:
            raise AgentError(
                f"{action} {snapshot} of {name}: not a guest this agent serves ({sorted(guests)})"
            )
        if action == "snapshot":
            lines = take_snapshot(disks, snapshot, store, controls.freeze)
        elif action == "delete":
            lines = delete_snapshot(disks, snapshot, store)
        elif action == "rollback":
            lines = roll_back(disks, snapshot, store, controls, bool(request.get("start")))
        else:
            raise AgentError(
                f"{snapshot} of {name}: unknown action {action!r} (snapshot, delete, rollback)"
            )
    except AgentError as error:
        return {"ok": False, "lines": [], "error": str(error)}
    except AgentStopped:
        return {"ok": False, "lines": [], "error": f"{action} {snapshot} of {name}: the lab's"
                " VM agent was stopped during the action"}  # fmt: skip
    except Exception as error:  # a bug here, or the lab's: say which action met it
        return {"ok": False, "lines": [], "error": f"{action} {snapshot} of {name}: {error!r}"}
    return {"ok": True, "lines": lines, "error": ""}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees all of it or nothing)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def prepare_exchange(exchange: Path, guests: dict[str, Disks], log_path: Path | None) -> None:
    """The exchange layout (again after pve's root was recreated)."""
    (exchange / "requests").mkdir(parents=True, exist_ok=True)
    (exchange / "replies").mkdir(parents=True, exist_ok=True)
    listing = "".join(f"{name}\n" for name in sorted(guests))
    path = exchange / "guests"
    if not path.is_file() or path.read_text() != listing:
        tmp = exchange / ".guests.tmp"
        tmp.write_text(listing)
        tmp.replace(path)
    if log_path is not None and not (exchange / "log").is_file():
        (exchange / "log").write_text(f"{log_path}\n")  # where the double sends a reader


def serve_once(exchange: Path, guests: dict[str, Disks], store: Path, controls: Controls) -> int:
    """Answer every waiting request, in name order; the number answered."""
    answered = 0
    for path in sorted((exchange / "requests").glob("*.json")):
        ident = path.stem
        try:
            request = json.loads(path.read_text())
        except FileNotFoundError:  # the double gave up on it
            continue
        except ValueError as error:
            request = {"action": None, "error": f"unreadable request: {error}"}
        if not REQUEST_ID.match(ident) or request.get("id") != ident:
            reply = {"ok": False, "lines": [], "error": f"request {ident}: its id does not match"}
        elif "error" in request:
            reply = {"ok": False, "lines": [], "error": request["error"]}
        else:
            say(f"request {ident}: {request.get('action')} {request.get('guest')}"
                f" {request.get('snapshot')} (start={bool(request.get('start'))})")  # fmt: skip
            reply = handle(request, guests, store, controls)
        say(f"reply {ident}: " + ("; ".join(reply["lines"]) if reply["ok"] else reply["error"]))
        if REQUEST_ID.match(ident):
            write_json(exchange / "replies" / f"{ident}.json", reply)
        path.unlink(missing_ok=True)
        answered += 1
    return answered


def say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} vm-agent: {message}", flush=True)


def serve(
    exchange: Path,
    guests: dict[str, Disks],
    store: Path,
    controls: Controls,
    pid_file: Path | None = None,
    log_path: Path | None = None,
) -> int:
    """The agent's loop (until SIGTERM or SIGINT); polls every ``POLL_SECONDS``."""
    stopping = False
    busy = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if busy:  # abort the action: rsync is killed, a frozen container thawed
            raise AgentStopped()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    store.mkdir(parents=True, exist_ok=True)
    say(f"serving {', '.join(sorted(guests))} through {exchange}; copies in {store}")
    try:
        while not stopping:
            # Only into an existing root: a directory made here would pass for pve's root.
            if exchange.parent.is_dir():
                prepare_exchange(exchange, guests, log_path)
                busy = True
                try:
                    serve_once(exchange, guests, store, controls)
                finally:
                    busy = False
            _reap()
            time.sleep(POLL_SECONDS)
    except AgentStopped:
        pass
    finally:
        say("stopping")
        if pid_file is not None and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)
    return 0


def _reap() -> None:
    """Collect exited children (the supervisors a rollback started detach, but are ours)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit("run through labctl: python3 tests/lab/labctl.py _vm-agent")
