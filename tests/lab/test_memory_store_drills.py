"""Memory store drills on the lab: power cuts, an archive outage, a rotten backup, a lost disk.

Each drill runs against the rolled-out lab (pve = the pgBackRest repository host, ageis-node =
PostgreSQL) with a writer on this machine committing memories over the LAN and logging every
acknowledged commit (``tests/lab/memory_writer.py``). Clients on ageis-node are played by a
lab-only stand-in unit (``tests/lab/fixtures/memory-store-client-standin.service``, a test
double wired like every client: ``Requires=``/``After=`` the integrity unit).

Repetitions are parameters: ``HOMELAB_DRILL_REPEAT`` power cuts of ageis-node alone (10 in
``make drills``; ``make test`` leaves this drill out), ``HOMELAB_DRILL_SITE_CUTS`` whole-site
power cuts (3 in ``make test``, 10 in ``make drills``), ``HOMELAB_DRILL_ROLLBACK_WRITES``
memories written between a snapshot and its rollback (100; 1000 in ``make drills``),
``HOMELAB_DRILL_OUTAGE`` seconds of repository outage (20; 75 in ``make drills``),
``HOMELAB_DRILL_WIPE`` what the lost SSD takes (``data``: the data volume, in make test;
``host``: the whole VM, in make drills), ``HOMELAB_DRILL_WRITE_S`` seconds of writing before
the loss (5; 90 in make drills), ``HOMELAB_DRILL_RECEIVER_OUTAGE`` seconds one WAL receiver stays
away at least (30; 60 in make drills). Measured figures
are printed and appended to ``<lab state>/drills-memory-store.jsonl``. Every drill leaves the
lab converged (the rollout test after the lab tests checks it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.lab import hosts, labctl, pve_api_double
from tests.lab.lab_cli import labctl_run
from tests.lab.memory_writer import MemoryWriter, lost

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
DB = hosts.by_name("ageis-node")
REPO_HOST = hosts.by_name("pve")
CLIENT = "memory-store-client-standin.service"
CLIENT_UNIT = REPO / "tests" / "lab" / "fixtures" / CLIENT
REPEAT = int(os.environ.get("HOMELAB_DRILL_REPEAT", "3"))
OUTAGE = float(os.environ.get("HOMELAB_DRILL_OUTAGE", "20"))
ARCHIVE_TIMEOUT = 60  # pgbackrest_archive_timeout's default, which the lab uses
# Lose the SSD: "data" (make test) wipes the data volume, "host" (make drills) the whole host.
WIPE = os.environ.get("HOMELAB_DRILL_WIPE", "data")
WRITE_BEFORE_LOSS = float(os.environ.get("HOMELAB_DRILL_WRITE_S", "5"))
RESULTS = hosts.STATE_DIR / "drills-memory-store.jsonl"
# Memories acknowledged between the snapshot and the rollback.
WRITE_AFTER_SNAPSHOT = int(os.environ.get("HOMELAB_DRILL_ROLLBACK_WRITES", "100"))
STANZA = "memory"


def ssh(host: hosts.LabHost, command: str, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(
        labctl.ssh_argv(host, command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, (
            f"{host.name}: {command!r} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result.stdout.strip()


def run_unit(host: hosts.LabHost, unit: str) -> tuple[bool, str]:
    """Start a oneshot unit and wait for it; (succeeded, its journal of this run)."""
    since = ssh(host, "date '+%Y-%m-%d %H:%M:%S'")
    ok = (
        subprocess.run(
            labctl.ssh_argv(host, f"systemctl start {unit}"),
            capture_output=True,
            timeout=900,
            check=False,
            stdin=subprocess.DEVNULL,
        ).returncode
        == 0
    )
    journal = ssh(host, f"journalctl -u {unit} --since '{since}' --no-pager -o cat", check=False)
    return ok, journal


def sql(query: str, database: str = "postgres") -> str:
    return ssh(DB, f'runuser -u postgres -- psql -XAtq -d {database} -c "{query}"')


def prom(host: hosts.LabHost, name: str) -> dict[str, float]:
    text = ssh(host, f"cat /var/lib/prometheus/node-exporter/{name}")
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def record(drill: str, **figures: object) -> None:
    line = {"drill": drill, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    print(f"\n[memory store drill] {json.dumps(line)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(line) + "\n")


def install_client() -> None:
    """The stand-in client, enabled so it starts at every boot (after the integrity check)."""
    ssh(
        DB,
        f"cat > /etc/systemd/system/{CLIENT} <<'EOF'\n{CLIENT_UNIT.read_text()}EOF\n"
        f"systemctl daemon-reload && systemctl enable --now {CLIENT}",
    )


def wait_client_ready(timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = subprocess.run(
            labctl.ssh_argv(DB, f"systemctl is-active {CLIENT}", connect_timeout=2),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        ).stdout.strip()
        if state == "active":
            return
        assert time.monotonic() < deadline, f"{CLIENT} not active after {timeout:.0f}s: {state}"
        time.sleep(0.2)


def client_started_after_integrity() -> None:
    def entered(unit: str) -> int:
        return int(ssh(DB, f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}"))

    integrity = ssh(DB, "systemctl show -p Result -p ActiveState --value memory-store-integrity")
    assert sorted(integrity.split()) == ["active", "success"], integrity
    assert entered(CLIENT) >= entered("memory-store-integrity.service") > 0


def rollout(*limit: str) -> float:
    started = time.monotonic()
    args = [str(PYINFRA), "-y", "tests/lab/inventory.py", "deploys/full.py"]
    for name in limit:
        args += ["--limit", name]
    result = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return time.monotonic() - started


def segment_number(name: str) -> int:
    """A WAL file's position on its timeline (16 MiB segments: 256 per log file)."""
    return int(name[8:16], 16) * 256 + int(name[16:24], 16)


def switch_and_wait_archived(timeout: float = 300) -> str:
    """Close the WAL segment being written and wait until the repository holds it."""
    target = sql("SELECT pg_walfile_name(pg_switch_wal())")
    started = time.monotonic()
    while sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < target:
        assert time.monotonic() - started < timeout, f"{target} not archived within {timeout}s"
        time.sleep(2)
    return target


@pytest.fixture(scope="module")
def store() -> None:
    """The lab's store hosts run, with the stand-in client installed."""
    labctl_run("start", DB.name)
    labctl_run("start", REPO_HOST.name)
    install_client()
    wait_client_ready()


def test_pull_the_plug(store: None) -> None:
    ready_times: list[float] = []
    with MemoryWriter() as writer:
        writer.wait_for_acks(20)
        for _ in range(REPEAT):
            writer.wait_for_acks(25)  # mid-write: commits in flight when the plug goes
            labctl_run("kill", DB.name)
            started = time.monotonic()
            labctl_run("start", DB.name)
            wait_client_ready()
            ready_times.append(time.monotonic() - started)
            client_started_after_integrity()
            writer.wait_for_acks(5)
        writer.wait_for_acks(10)
    missing = lost(writer.log)
    record(
        "pull-the-plug",
        repetitions=REPEAT,
        commits_acknowledged=len(writer.log.acks),
        commits_lost=len(missing),
        failed_attempts=writer.log.errors,
        start_to_clients_ready_s={
            "min": round(min(ready_times), 1),
            "median": round(statistics.median(ready_times), 1),
            "max": round(max(ready_times), 1),
        },
    )
    assert missing == [], f"acknowledged commits lost after power cuts: {missing[:10]}"


def test_snapshot_rollback_keeps_the_memories(store: None) -> None:
    """A snapshot of ageis-node (a real copy of its root and its SSD disk, by the lab's VM
    agent), memories written, the VM rolled back: the roll-forward check brings the store to
    its last acknowledged commit on a new timeline, and archiving and backups go on."""
    before = timeline()
    name = f"drill-rollback-{time.strftime('%H%M%S')}"
    with MemoryWriter() as writer:
        writer.wait_for_acks(10)
        started = time.monotonic()
        try:
            pve_api("POST", f"{VM}/snapshot", snapname=name, vmstate=0)
            snapshot_s = time.monotonic() - started
            taken = time.time()
            writer.wait_for_acks(WRITE_AFTER_SNAPSHOT)
            written_after = writer.acked_since(taken)
            rolled = time.monotonic()
            pve_api("POST", f"{VM}/snapshot/{name}/rollback", start=1)
        finally:
            if any(s["name"] == name for s in pve_api("GET", f"{VM}/snapshot")):
                pve_api("DELETE", f"{VM}/snapshot/{name}")
        wait_client_ready()
        back_s = time.monotonic() - rolled
        writer.wait_for_acks(10)
    missing = lost(writer.log)
    journal = ssh(DB, "journalctl -b -u memory-store-roll-forward -o cat --no-pager")
    after = timeline()
    switched = time.monotonic()
    segment = switch_and_wait_archived(timeout=ARCHIVED_WITHIN)
    archived_s = time.monotonic() - switched
    ssh(DB, f"runuser -u postgres -- pgbackrest --stanza={STANZA} check")
    ssh(REPO_HOST, f"/usr/local/sbin/pgbackrest-run {STANZA} diff")
    record(
        "snapshot-rollback",
        snapshot_s=round(snapshot_s, 1),
        commits_after_snapshot=written_after,
        rollback_to_clients_ready_s=round(back_s, 1),
        timeline_before=before,
        timeline_after=after,
        switched_segment_archived_s=round(archived_s, 1),
        commits_acknowledged=len(writer.log.acks),
        commits_lost=len(missing),
    )
    assert "the cluster is behind" in journal, journal[-2000:]
    assert after > before, f"no new timeline after the roll-forward ({before} -> {after})"
    assert segment.startswith(f"{after:08X}"), segment
    assert written_after >= WRITE_AFTER_SNAPSHOT
    assert not missing, f"lost {len(missing)} acknowledged commits, e.g. {missing[:5]}"


def test_archive_outage(store: None) -> None:
    failed_before = int(sql("SELECT failed_count FROM pg_stat_archiver"))
    # The segment being written now: it and every later one must reach the repository.
    first = sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    with MemoryWriter() as writer:
        writer.wait_for_acks(20)
        labctl_run("kill", REPO_HOST.name)
        down = time.monotonic()
        acked_down = len(writer.log.acks)
        while time.monotonic() - down < OUTAGE:
            time.sleep(OUTAGE / 3)
            sql("SELECT pg_switch_wal()")  # closed segments pile up while the repository is away
        acked_during = len(writer.log.acks) - acked_down
        pending = int(
            ssh(DB, "ls /srv/ssd/postgresql/*/main/pg_wal/archive_status | grep -c ready || true")
        )
        failed_during = int(sql("SELECT failed_count FROM pg_stat_archiver")) - failed_before
        labctl_run("start", REPO_HOST.name)
        back = time.monotonic()
        target = switch_and_wait_archived()
        caught_up = time.monotonic() - back
        writer.wait_for_acks(10)
    missing = lost(writer.log)
    timeline = target[:8]
    listing = ssh(
        REPO_HOST,
        f"find /srv/hdd/pgbackrest/archive/{STANZA} -name '{timeline}*' -printf '%f\\n'",
    )
    archived = sorted(
        {
            segment_number(name[:24])
            for name in listing.split()
            if len(name) >= 24 and all(c in "0123456789ABCDEF" for c in name[:24])
        }
    )
    wanted = range(segment_number(first), segment_number(target) + 1)
    gaps = [n for n in wanted if n not in archived]
    record(
        "archive-outage",
        outage_s=OUTAGE,
        commits_acknowledged_during_outage=acked_during,
        wal_segments_waiting_at_return=pending,
        archive_failures_during_outage=failed_during,
        catch_up_s=round(caught_up, 1),
        segments_checked=len(wanted),
        gaps=len(gaps),
        commits_lost=len(missing),
    )
    assert acked_during > 0, "PostgreSQL stopped serving while the repository was away"
    # (archive_command may still be waiting on the dead host rather than failing: the
    # segments held back are the proof, failures are recorded only)
    assert pending >= 1, "the outage did not hold any WAL back"
    assert gaps == [], f"archive gaps on timeline {timeline}: {gaps[:10]}"
    assert missing == []


def test_rotten_backup_fails_verify_and_restore_test_loudly(store: None) -> None:
    info = json.loads(
        ssh(REPO_HOST, f"runuser -u pgbackrest -- pgbackrest --stanza={STANZA} --output=json info")
    )
    label = info[0]["backup"][-1]["label"]
    backup_dir = f"/srv/hdd/pgbackrest/backup/{STANZA}/{label}"
    victim = ssh(
        REPO_HOST,
        f"find {backup_dir}/pg_data/base -type f -size +8k -printf '%s %p\\n'"
        " | sort -n | tail -1 | cut -d' ' -f2",
    )
    assert victim, f"no data file to corrupt in {backup_dir}"
    ssh(
        REPO_HOST,
        f"dd if=/dev/urandom of={victim} bs=1 count=64 seek=4096 conv=notrunc status=none",
    )
    try:
        ok, journal = run_unit(REPO_HOST, "pgbackrest-run@verify.service")
        assert not ok, f"verify passed over a corrupted file:\n{journal[-2000:]}"
        assert "FAILED" in journal
        verify_metric = prom(REPO_HOST, "pgbackrest_verify.prom")
        assert (
            verify_metric[f'homelab_backup_last_run_success{{stanza="{STANZA}",job="verify"}}'] == 0
        )
        ok, journal = run_unit(DB, "memory-store-restore-test.service")
        assert not ok, f"the restore test passed over a corrupted backup:\n{journal[-2000:]}"
        assert "FAILED" in journal
        assert (
            prom(DB, "memory_store_restore_test.prom")["homelab_restore_test_last_run_success"] == 0
        )
        assert ssh(DB, "ls /srv/ssd | grep -c restore-test || true") == "0", "scratch left behind"
    finally:
        # Back to a good repository: a new full backup, then the rotten set expires.
        ssh(REPO_HOST, f"/usr/local/sbin/pgbackrest-run {STANZA} full")
        ssh(
            REPO_HOST,
            f"runuser -u pgbackrest -- pgbackrest --stanza={STANZA} --set={label} expire",
        )
    ok, journal = run_unit(REPO_HOST, "pgbackrest-run@verify.service")
    assert ok, f"verify still fails after the repair:\n{journal[-2000:]}"
    ok, journal = run_unit(DB, "memory-store-restore-test.service")
    assert ok, f"the restore test still fails after the repair:\n{journal[-2000:]}"
    record(
        "rotten-backup",
        corrupted=victim,
        verify="failed loudly",
        restore_test="failed loudly",
        repaired="new full backup, rotten set expired; verify and restore test pass",
    )


def wipe_data_volume() -> None:
    """The SSD volume dies, the root survives: pool and cluster config gone (host is off)."""
    pool = DB.pool_dir("ssd")
    subprocess.run(["find", str(pool), "-mindepth", "1", "-delete"], check=True)
    for config in (DB.root_dir / "etc" / "postgresql").glob("*/main"):
        subprocess.run(["rm", "-rf", str(config)], check=True)


def test_lose_the_ssd(store: None) -> None:
    """``HOMELAB_DRILL_WIPE=host`` (make drills): the whole VM's disk is gone, as on the real
    ageis-node (its disk lives on the SSD pool): a fresh host, the full rollout, the restore.
    ``data`` (make test): only the data volume and the cluster's config are gone; the rollout
    re-creates the cluster from the repository the same way (memory-store-bootstrap). No
    acknowledged commit is lost: a commit was acknowledged only once a WAL receiver had it.
    """
    # Memories from before the drill, archived: written here so the drill's proof does not
    # depend on the drills that ran before it.
    with MemoryWriter() as earlier:
        earlier.wait_for_acks(20)
    switch_and_wait_archived()
    with MemoryWriter() as writer:
        writer.wait_for_acks(50)
        time.sleep(WRITE_BEFORE_LOSS)  # writing, as the store always is, when the disk dies
        labctl_run("kill", DB.name)  # the disk dies with the host: no clean shutdown
        died = time.time()
    oldest = writer.log.acks[0].at
    wiped = time.monotonic()
    if WIPE == "host":
        labctl_run("up", "--fresh", DB.name, timeout=900)  # new root, empty SSD pool
    else:
        wipe_data_volume()
        labctl_run("start", DB.name)
    rollout_s = rollout(DB.name)
    install_client()
    wait_client_ready()
    rto = time.monotonic() - wiped
    client_started_after_integrity()
    missing = lost(writer.log)
    acks = writer.log.acks
    span = (missing[-1].at - missing[0].at) if missing else 0.0
    window = (died - missing[0].at) if missing else 0.0
    older = int(
        sql(
            f"SELECT count(*) FROM memory_chunk WHERE created_at < to_timestamp({oldest})",
            database="memory_store",
        )
    )
    record(
        "lose-the-ssd",
        wipe=WIPE,
        rto_s=round(rto, 1),
        rollout_s=round(rollout_s, 1),
        writing_before_loss_s=round(died - oldest, 1),
        commits_acknowledged=len(acks),
        rpo_commits_lost=len(missing),
        rpo_lost_span_s=round(span, 1),
        rpo_window_before_failure_s=round(window, 1),
        archive_timeout_s=ARCHIVE_TIMEOUT,
        rows_restored_from_before_the_drill=older,
    )
    assert older >= len(earlier.log.acks), (
        f"the rebuilt store holds {older} memories from before the drill, "
        f"expected at least the {len(earlier.log.acks)} archived before it"
    )
    # Every acknowledged commit is back: the archive's WAL and then the WAL receivers' (the
    # tail the archive had not got, the partial segment included) were replayed.
    assert not missing, (
        f"lost {len(missing)} of {len(acks)} acknowledged commits, {span:.1f}s of writing"
        f" ({window:.1f}s before the failure)"
    )


RECEIVERS = {"walrcv_pve": REPO_HOST, "walrcv_embedder": hosts.by_name("embedder")}
RECEIVER_UNIT = "homelab-wal-receiver.service"
# How long one receiver stays away at least (60 s in make drills); it stays away until its alert
# fired in any case, which takes 35-45 s in the lab.
RECEIVER_OUTAGE = float(os.environ.get("HOMELAB_DRILL_RECEIVER_OUTAGE", "30"))
BOTH_AWAY = 10.0


def streaming_receivers() -> set[str]:
    rows = sql(
        "SELECT application_name FROM pg_stat_replication"
        " WHERE state = 'streaming' AND sync_state IN ('quorum', 'sync')"
    )
    return set(rows.split())


def wait_streaming(name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while name not in streaming_receivers():
        assert time.monotonic() < deadline, f"{name} does not stream after {timeout:.0f}s"
        time.sleep(1)


def test_receiver_outages_never_lose_or_unreplicate_a_commit(store: None) -> None:
    """One receiver away: commits go on through the other, the alert fires. Both away: commits
    wait (none is acknowledged) and go on as soon as one is back. Nothing acknowledged is lost.
    """
    from tests.lab.test_monitoring import firing

    assert streaming_receivers() == set(RECEIVERS), streaming_receivers()
    with MemoryWriter() as writer:
        writer.wait_for_acks(20)
        ssh(REPO_HOST, f"systemctl stop {RECEIVER_UNIT}")
        away = time.time()
        try:
            writer.wait_for_acks(50, timeout=30)  # through the embedder's receiver alone
            deadline = time.monotonic() + 300
            while not firing("MemoryStoreWalReceiverDown", receiver="walrcv_pve"):
                assert time.monotonic() < deadline, "MemoryStoreWalReceiverDown did not fire"
                time.sleep(2)
            alert_after = time.time() - away
            time.sleep(max(0.0, RECEIVER_OUTAGE - alert_after))
            acked_with_one = writer.acked_since(away)
        finally:
            ssh(REPO_HOST, f"systemctl start {RECEIVER_UNIT}")
            one_away = time.time() - away
        wait_streaming("walrcv_pve")
        for receiver in RECEIVERS.values():
            ssh(receiver, f"systemctl stop {RECEIVER_UNIT}")
        both_away = time.time()
        try:
            time.sleep(BOTH_AWAY)
            # A commit in flight as the second receiver stopped may still have made it.
            acked_with_none = writer.acked_since(both_away + 1)
            waiting = int(sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"))
        finally:
            ssh(RECEIVERS["walrcv_embedder"], f"systemctl start {RECEIVER_UNIT}")
        back = time.time()
        writer.wait_for_acks(20, timeout=120)
        resumed_after = writer.log.acks[-20].at - back
        ssh(REPO_HOST, f"systemctl start {RECEIVER_UNIT}")
        wait_streaming("walrcv_pve")
    missing = lost(writer.log)
    record(
        "receiver-outage",
        one_away_s=round(one_away, 1),
        alert_fired_after_s=round(alert_after, 1),
        acked_with_one_receiver=acked_with_one,
        acked_with_none=acked_with_none,
        commits_waiting_with_none=waiting,
        resumed_after_s=round(resumed_after, 1),
        commits_acknowledged=len(writer.log.acks),
        commits_lost=len(missing),
    )
    assert acked_with_one >= 50
    assert acked_with_none == 0, f"{acked_with_none} commits acknowledged with no receiver"
    assert waiting >= 1, "no commit waited for a receiver while both were away"
    assert not missing, f"lost {len(missing)} acknowledged commits"


VM = "nodes/pve/qemu/100"  # ageis-node in the lab's inventory (tests/lab/inventory.py)
ARCHIVED_WITHIN = 60.0


def pve_api(method: str, path: str, **params: Any) -> Any:
    """A call to the lab's Proxmox API (the test double on pve:8006) with the rollout's token;
    a task is waited on and must end OK. Plain requests: pyinfra's inventory loaded in this
    process would patch ssl under the memory writer's connections."""
    token = f"PVEAPIToken={pve_api_double.TOKEN}={pve_api_double.lab_secret()}"
    url = f"https://{REPO_HOST.address}:{pve_api_double.PORT}/api2/json/{path}"
    verify = str(pve_api_double.ca_file())
    answer = requests.request(method, url, data=params, headers={"Authorization": token},
                              verify=verify, timeout=30)  # fmt: skip
    assert answer.status_code == 200, f"{method} {path}: {answer.status_code} {answer.text}"
    data = answer.json()["data"]
    if not (isinstance(data, str) and data.startswith("UPID:")):
        return data
    deadline = time.monotonic() + 900
    while True:
        status = pve_api("GET", f"nodes/pve/tasks/{data}/status")
        if status["status"] == "stopped":
            assert status["exitstatus"] == "OK", f"{method} {path}: {status}"
            return data
        assert time.monotonic() < deadline, f"{method} {path}: task still running: {data}"
        time.sleep(0.5)


def timeline() -> int:
    return int(sql("SELECT timeline_id FROM pg_control_checkpoint()"))


SITE_CUTS = int(os.environ.get("HOMELAB_DRILL_SITE_CUTS", "3"))
DOUBLE_STATE = REPO_HOST.root_dir / "var/lib/homelab-pve-api-double/state.json"
# The physical machines: the power comes back to them; the guests are pve's to start.
MACHINES = (REPO_HOST, hosts.by_name("embedder"))
FRESH_SERIES = ("up", "probe_success", "homelab_local_probe_success")


def guests_in_start_order() -> list[tuple[hosts.LabHost, int]]:
    """pve's guests with ``onboot``, in Proxmox's start order (``startup`` order=, then the
    ID), each with its ``up=`` delay: the config the rollout gave them in the API double."""
    guests = json.loads(DOUBLE_STATE.read_text())["guests"]
    started = []
    for vmid, guest in guests.items():
        config = guest["config"]
        if str(config.get("onboot", "0")) != "1":
            continue
        startup = dict(p.split("=", 1) for p in str(config.get("startup", "")).split(",") if p)
        name = config.get("name") or config.get("hostname")
        order = int(startup.get("order", 10**6))
        started.append((order, int(vmid), hosts.by_name(name), int(startup.get("up", 0))))
    return [(host, delay) for _, _, host, delay in sorted(started, key=lambda g: g[:2])]


def series_counts(since: float | None, value: str = "== 1") -> dict[str, int] | None:
    """How many series of each probe metric are 1 (``value=""``: any value) and, with
    ``since``, were scraped after it; None while Prometheus does not answer."""
    from tests.lab.test_monitoring import query

    counts = {}
    try:
        for metric in FRESH_SERIES:
            expr = f"{metric} {value}" if since is None else (
                f"({metric} {value}) and (timestamp({metric}) > {since:.3f})"
            )  # fmt: skip
            counts[metric] = len(query(expr))
    except (OSError, ValueError, AssertionError):  # down, starting, or answering 503
        return None
    return counts


def wait_all_probes_up(since: float | None, expected: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (counts := series_counts(since)) != expected:
        assert time.monotonic() < deadline, (
            f"not every probe up (and scraped since the power came back) within {timeout:.0f}"
            f" s: {counts} of {expected} series are 1"
        )
        time.sleep(1)


def test_whole_site_power_cut(store: None) -> None:
    """The power fails for every lab host at once; it comes back to pve and the embedder, and pve
    starts its guests in their start order with their delays (the lab plays Proxmox's
    pve-guests from the guests' config in the API double: the guests are containers of their
    own). Measured: from the power's return until every scrape target and probe Prometheus had
    before is up again with a sample taken after it; no acknowledged commit lost."""
    healthy = series_counts(None, value="")  # every series, whatever its value
    assert healthy and all(healthy.values()), f"Prometheus has no probe series: {healthy}"
    wait_all_probes_up(None, healthy, 180)  # a drill before may have left one coming back
    order = guests_in_start_order()
    assert [h.name for h, _ in order][-1:] != [], "pve has no guest to start"
    times: list[float] = []
    with MemoryWriter() as writer:
        writer.wait_for_acks(20)
        for _ in range(SITE_CUTS):
            writer.wait_for_acks(25)  # commits in flight when the power goes
            for host in hosts.HOSTS:
                labctl.stop_file(host).parent.mkdir(parents=True, exist_ok=True)
                labctl.stop_file(host).touch()  # no supervisor restarts its container
            with ThreadPoolExecutor(len(hosts.HOSTS)) as pool:
                list(pool.map(labctl.pull_plug, hosts.HOSTS))
            assert not any(labctl.nspawn_pid(h) for h in hosts.HOSTS), "a host still runs"
            back = time.time()
            with ThreadPoolExecutor(len(MACHINES)) as pool:
                list(pool.map(lambda h: labctl_run("start", h.name), MACHINES))
            for guest, delay in order:  # started, not waited for, as Proxmox does
                labctl.start_container(guest)
                time.sleep(delay)
            wait_all_probes_up(back, healthy, 600)
            times.append(time.time() - back)
            wait_client_ready()
            client_started_after_integrity()
        writer.wait_for_acks(10)
    missing = lost(writer.log)
    record(
        "whole-site-power-cut",
        cuts=SITE_CUTS,
        start_order=[f"{h.name} up={d}" for h, d in order],
        probes=healthy,
        power_back_to_all_probes_up_s={
            "min": round(min(times), 1),
            "median": round(statistics.median(times), 1),
            "max": round(max(times), 1),
        },
        commits_acknowledged=len(writer.log.acks),
        commits_lost=len(missing),
        failed_attempts=writer.log.errors,
    )
    assert not missing, f"lost {len(missing)} acknowledged commits after site power cuts"
