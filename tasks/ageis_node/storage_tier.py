"""Storage tiering on the VM: the hypervisor's HDD share mounted, models and old work moved to it.

With ``guest.share_pool`` (the hypervisor side: ``guest_shares`` and ``proxmox_guests``) the
VM mounts its share of that pool at ``/srv/<pool>`` (a systemd mount unit, virtiofs, the
directory mapping's ID as tag) with ``archive/models``, ``datasets``, ``checkpoints`` and
``media`` in it. ``homelab-storage-tier`` moves Ollama models between the SSD (Ollama's
store) and the archive, SHA-256 checked (``make models-archive`` / ``make models-load``,
through ``deploys/models.py``), and on a timer moves entries of the SSD's work areas
(``<ssd pool>/work/<kind>``) that nobody touched for ``storage_tier_down_days`` to the share.
The share is not part of the VM's disks, so a snapshot rollback or a vzdump backup neither
rolls back nor copies it. Without ``share_pool`` this task does nothing.
"""

from __future__ import annotations

import io
import json
import shlex
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Mounts
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from tasks.ageis_node.ollama import DATA as OLLAMA
from tasks.ageis_node.ollama import PORT as OLLAMA_PORT
from tasks.ageis_node.ollama import models_dir
from tasks.base.node_exporter import SCRIPT_DIR, TEXTFILE_DIR, UNIT_DIR
from tasks.common.datamodel.forms import CALENDAR, Int, Optional, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE, MACHINE
from tasks.common.shares import (
    share_host_path,
    share_id,
    share_mount_point,
    systemd_unit_for_path,
)
from tasks.common.templating import file_path, template_path
from tasks.hypervisor.proxmox_api import hypervisor_named

MODEL_ACTIONS = ("archive", "load", "list")
# Ollama's model names: [registry/][namespace/]model[:tag] (homelab-storage-tier checks the same).
MODEL_NAME = (
    r"(?:[a-z0-9.-]+\.[a-z]{2,}(?::\d+)?/)?(?:[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*"
    r"(?::[A-Za-z0-9][A-Za-z0-9._-]{0,127})?"
)

DATA = Schema(
    "storage_tier",
    Key(
        "storage_tier_down_days",
        Int(1, 3650),
        30,
        "An entry of the SSD's work areas (datasets, checkpoints, media) untouched this many"
        " days moves to the HDD share.",
        (AGEIS_NODE,),
    ),
    Key(
        "storage_tier_schedule",
        CALENDAR,
        "*-*-* 04:30:00",
        "When the tier-down runs.",
        (AGEIS_NODE,),
    ),
    # Given on the command line by `make models-*` (deploys/models.py), not kept in group_data.
    Key(
        "models_action",
        Optional(Str(choices=MODEL_ACTIONS)),
        None,
        "deploys/models.py only: archive (SSD to HDD), load (HDD to SSD) or list.",
        (AGEIS_NODE,),
    ),
    Key(
        "model",
        Optional(
            Str(MODEL_NAME, what='an Ollama model name as `ollama list` shows it, "qwen3:32b"')
        ),
        None,
        "deploys/models.py only: the model to archive or load.",
        (AGEIS_NODE,),
    ),
)

SCRIPT = f"{SCRIPT_DIR}/homelab-storage-tier"
CONFIG = "/etc/homelab/storage-tier.json"
UNIT = "homelab-tier-down"
RESULT = f"{TEXTFILE_DIR}/homelab-storage-tier.prom"
WORK_KINDS = ("datasets", "checkpoints", "media")
MODELS_ARCHIVE = "archive/models"


def share_of(data: Any) -> dict[str, str] | None:
    """The VM's share (pool, tag, mount point, unit, host path), or None without one."""
    guest = data.get("guest") or {}
    pool = guest.get("share_pool")
    if not pool:
        return None
    hypervisor = hypervisor_named(guest["hypervisor"])
    pools = hypervisor.data.get("pools") or {}
    mount_point = share_mount_point(pool)
    return {
        "pool": pool,
        "hypervisor": hypervisor.name,
        "tag": share_id(host.name, pool),
        "mount_point": mount_point,
        "unit": f"{systemd_unit_for_path(mount_point)}.mount",
        "host_path": share_host_path(pools[pool]["path"], host.name),
    }


def _work_dir() -> str:
    ssd = MACHINE.read(host).pools.get("ssd")
    base = ssd["path"] if ssd else "/srv/ssd"
    return f"{base.rstrip('/')}/work"


@deploy("Storage tiering (HDD share)", data_defaults=DATA.defaults())
def storage_tier() -> None:
    share = share_of(host.data)
    if share is None:
        host.noop(f"{host.name} has no share_pool: no HDD share, no tiering")
        return
    settings = DATA.read(host)
    mount_point, unit = share["mount_point"], share["unit"]

    mount = files.template(
        name=f"{unit}: {share['tag']} (virtiofs) at {mount_point}",
        src=template_path("virtiofs-share.mount.j2"),
        dest=f"{UNIT_DIR}/{unit}",
        mode="644",
        **share,
    )
    systemd.daemon_reload(name="systemd reads the share's mount unit", _if=mount.did_change)
    systemd.service(name=f"{unit} is mounted at boot", service=unit, enabled=True)
    if mount_point not in (host.get_fact(Mounts) or {}):
        hint = (
            f"{host.name}: {mount_point} (virtiofs tag {share['tag']}) does not mount: a VM that"
            f" got its share while running gets the device at its next start; restart it from"
            f" Proxmox (qm reboot), then run again"
        )
        server.shell(
            name=f"Mount {mount_point}",
            commands=[f"systemctl start {unit} || {{ echo {shlex.quote(hint)} >&2; exit 1; }}"],
        )

    work = _work_dir()
    for path in (work, *(f"{work}/{kind}" for kind in WORK_KINDS)):
        files.directory(name=f"SSD work area {path}", path=path, user="root", group="root",
                        mode="755")  # fmt: skip
    config = {
        "models_dir": models_dir(OLLAMA.read(host)),
        "models_archive": MODELS_ARCHIVE,
        "ollama_url": f"http://127.0.0.1:{OLLAMA_PORT}",
        "mount_point": mount_point,
        "mount_unit": unit,
        "work_dir": work,
        "kinds": list(WORK_KINDS),
        "tier_down_days": settings.storage_tier_down_days,
    }
    files.directory(name="/etc/homelab", path="/etc/homelab", mode="755")
    files.put(
        name=f"{CONFIG}: the tiers' paths, tier-down after {settings.storage_tier_down_days} days",
        src=io.StringIO(json.dumps(config, indent=2, sort_keys=True) + "\n"),
        dest=CONFIG,
        mode="644",
    )
    files.put(name=f"Install {SCRIPT}", src=file_path("homelab-storage-tier"), dest=SCRIPT,
              mode="755")  # fmt: skip
    service = files.template(
        name=f"{UNIT}.service: old work areas to the HDD share",
        src=template_path("homelab-tier-down.service.j2"),
        dest=f"{UNIT_DIR}/{UNIT}.service",
        mode="644",
        command=f"{SCRIPT} tier-down --textfile {RESULT}",
        mount_point=mount_point,
        days=settings.storage_tier_down_days,
    )
    timer = files.template(
        name=f"{UNIT}.timer: {settings.storage_tier_schedule}",
        src=template_path("systemd-timer.j2"),
        dest=f"{UNIT_DIR}/{UNIT}.timer",
        mode="644",
        description="Move old work directories from the SSD to the HDD share",
        schedule=settings.storage_tier_schedule,
        delay="30min",
    )
    systemd.daemon_reload(name="systemd reads the tier-down units", _if=any_changed(service, timer))
    systemd.service(name="The tier-down timer runs", service=f"{UNIT}.timer", running=True,
                    enabled=True)  # fmt: skip
