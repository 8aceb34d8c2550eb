"""Nightly vzdump of the guests to the HDD storage: one Proxmox backup job (/cluster/backup).

The job backs up every guest (``all``) in ``snapshot`` mode with zstd onto
``proxmox_backup_storage`` (a storage with ``backup`` content, the HDD pool: offline while
the disk is not mounted, see ``proxmox_storage.py``), at ``proxmox_backup_schedule``
(a systemd-like calendar event), keeping ``keep-daily/weekly/monthly`` backups. Created when
missing, only the keys that differ are updated, never deleted.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from tasks.common.datamodel.forms import Bool, Int, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR, POOL_NAME
from tasks.hypervisor.proxmox_api import api_change, diff, reach

DATA = Schema(
    "proxmox_backup",
    Key(
        "proxmox_backup_job_id",
        Str(r"[A-Za-z][A-Za-z0-9_-]{1,40}", what='a job ID such as "homelab-nightly"'),
        "homelab-nightly",
        "ID of the Proxmox backup job.",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_backup_schedule",
        Str(r"[A-Za-z0-9 ,.:*/~-]{1,128}", what='a calendar event such as "02:30" or "sun 03:00"'),
        "02:30",
        "When the backup runs (Proxmox calendar event, the host's time zone).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_backup_storage",
        POOL_NAME,
        "hdd",
        "Storage (pool) the backups go to.",
        (HYPERVISOR,),
    ),
    Key("proxmox_backup_keep_daily", Int(0, 1000), 7, "Daily backups kept.", (HYPERVISOR,)),
    Key("proxmox_backup_keep_weekly", Int(0, 1000), 4, "Weekly backups kept.", (HYPERVISOR,)),
    Key("proxmox_backup_keep_monthly", Int(0, 1000), 6, "Monthly backups kept.", (HYPERVISOR,)),
    Key("proxmox_backup_enabled", Bool(), True, "The job runs on its schedule.", (HYPERVISOR,)),
)


def wanted_job(settings: object) -> dict[str, object]:
    s = settings
    return {
        "schedule": s.proxmox_backup_schedule,  # type: ignore[attr-defined]
        "storage": s.proxmox_backup_storage,  # type: ignore[attr-defined]
        "mode": "snapshot",
        "compress": "zstd",
        "all": 1,
        "enabled": int(s.proxmox_backup_enabled),  # type: ignore[attr-defined]
        "prune-backups": f"keep-daily={s.proxmox_backup_keep_daily},"  # type: ignore[attr-defined]
        f"keep-weekly={s.proxmox_backup_keep_weekly},"  # type: ignore[attr-defined]
        f"keep-monthly={s.proxmox_backup_keep_monthly}",  # type: ignore[attr-defined]
        "notes-template": "{{guestname}}",
    }


@deploy("Proxmox backup job", data_defaults=DATA.defaults())
def proxmox_backup_job() -> None:
    settings = DATA.read(host)
    api = reach("Proxmox backup job")
    if api is None:
        return
    job_id = settings.proxmox_backup_job_id
    wanted = wanted_job(settings)
    jobs = {job.get("id"): job for job in api.get("cluster/backup")}
    current = jobs.get(job_id)
    if current is None:
        api_change(
            f"Nightly vzdump job {job_id}",
            [f"create ({wanted['schedule']}, to {wanted['storage']}, {wanted['prune-backups']})"],
            lambda: api.call("POST", "cluster/backup", f"backup job {job_id}", id=job_id, **wanted),
        )
        return
    changed = diff(current, wanted)
    api_change(
        f"Nightly vzdump job {job_id}",
        [f"{k}={v}" for k, v in sorted(changed.items())],
        lambda: api.call("PUT", f"cluster/backup/{job_id}", f"backup job {job_id}", **changed),
    )
