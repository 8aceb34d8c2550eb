"""The guests' backups restore-tested: every week each LXC guest's newest vzdump, restored.

``files/homelab-guest-restore-test`` on a timer (``guest_restore_test_schedule``, after the
nightly backup job): for each LXC guest of the node, its newest backup on the backup job's
storage is restored into the scratch guest ``guest_restore_test_vmid`` on
``guest_restore_test_storage``, stripped of its network, bind mounts and autostart, started,
asked whether its system came up (``pct exec ... systemctl is-system-running --wait``), then
stopped and destroyed. Results go to node-exporter's textfile collector
(``homelab_guest_restore_test_*``); the monitoring alerts on a failed guest and on a test that
has not passed for too long. Through Proxmox's own CLI (``pvesh``, ``pct``) as root on the
node, so no API token is made for it. VMs are not restored this way: ageis-node's disks are
the size of its models and its GPU is passed through (a second copy could not start); its
data, the memory store, is restore-tested daily by pgBackRest (``memory-store-restore-test``).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from tasks.base.node_exporter import SCRIPT_DIR, TEXTFILE_DIR, UNIT_DIR
from tasks.common.datamodel.forms import CALENDAR, Bool, Int
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE, POOL_NAME
from tasks.common.templating import file_path, template_path
from tasks.hypervisor.proxmox_api import guests_of
from tasks.hypervisor.proxmox_backup import DATA as BACKUP

DATA = Schema(
    "guest_restore_test",
    Key(
        "guest_restore_test_enabled",
        Bool(),
        True,
        "The weekly restore test of the LXC guests' newest backups runs (while the backup job"
        " is on).",
        (HYPERVISOR,),
    ),
    Key(
        "guest_restore_test_schedule",
        CALENDAR,
        "Sun *-*-* 05:00:00",
        "When the restore test runs (after the nightly backup job has finished).",
        (HYPERVISOR,),
    ),
    Key(
        "guest_restore_test_vmid",
        Int(100, 999_999_999),
        9999,
        "Guest ID the test restores into and destroys again; no guest may use it.",
        (HYPERVISOR,),
    ),
    Key(
        "guest_restore_test_storage",
        POOL_NAME,
        "ssd",
        "Storage (pool, with rootdir content) the test restores the guest's disk to.",
        (HYPERVISOR,),
    ),
)

SCRIPT = f"{SCRIPT_DIR}/homelab-guest-restore-test"
UNIT = "homelab-guest-restore-test"
RESULT = f"{TEXTFILE_DIR}/homelab-guest-restore.prom"


@deploy("Guest backups restore-tested", data_defaults=DATA.defaults())
def guest_restore_test() -> None:
    settings = DATA.read(host)
    backup = BACKUP.read(host)
    machine = MACHINE.read(host)
    scratch = settings.guest_restore_test_vmid
    for name, spec, _ in guests_of(host.name):
        if spec["vmid"] == scratch:
            raise DataError(
                host.name,
                "guest_restore_test_vmid",
                scratch,
                f"an ID no guest uses ({name} has it)",
            )
    target = settings.guest_restore_test_storage
    pool = machine.pools.get(target)
    if pool is None or "rootdir" not in (pool.get("content") or []):
        with_rootdir = sorted(
            n for n, p in machine.pools.items() if "rootdir" in (p.get("content") or [])
        )
        raise DataError(
            host.name, "guest_restore_test_storage", target,
            f"a pool of this host with rootdir content ({', '.join(with_rootdir) or 'none has'})",
        )  # fmt: skip
    backup_pool = machine.pools.get(backup.proxmox_backup_storage) or {}
    on = settings.guest_restore_test_enabled and backup.proxmox_backup_enabled

    files.put(
        name="Install homelab-guest-restore-test",
        src=file_path("homelab-guest-restore-test"),
        dest=SCRIPT,
        mode="755",
    )
    service = files.template(
        name=f"{UNIT}.service: restore, start and remove each LXC guest's newest backup",
        src=template_path("homelab-guest-restore-test.service.j2"),
        dest=f"{UNIT_DIR}/{UNIT}.service",
        mode="644",
        command=(
            f"{SCRIPT} --output {RESULT} --backup-storage {backup.proxmox_backup_storage}"
            f" --target-storage {target} --scratch-vmid {scratch}"
        ),
        mounts=[p for p in (backup_pool.get("path"),) if p],
    )
    timer = files.template(
        name=f"{UNIT}.timer: {settings.guest_restore_test_schedule}",
        src=template_path("systemd-timer.j2"),
        dest=f"{UNIT_DIR}/{UNIT}.timer",
        mode="644",
        description="Restore test of the LXC guests' newest backups",
        schedule=settings.guest_restore_test_schedule,
        delay="30min",
    )
    systemd.daemon_reload(
        name="systemd reads the restore test's units", _if=any_changed(service, timer)
    )
    systemd.service(
        name=f"The restore test's timer {'runs' if on else 'is off'}",
        service=f"{UNIT}.timer",
        running=on,
        enabled=on,
    )
