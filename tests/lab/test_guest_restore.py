"""The guests' weekly restore test, run on the lab's hypervisor as its timer would run it.

Real: the deployed script, its systemd unit and arguments, the textfile it writes for
node-exporter. Test doubles: Proxmox's ``pvesh`` and ``pct`` (``tests/doubles/bin``, installed
by the lab on pve), which reach the API double; it holds the lab's guests as the rollout
created them, makes the vzdump archives (each keeps its guest's config) and carries out the
restore, start, stop and destroy. No real container is restored here (hardware only).
"""

from __future__ import annotations

import json

import pytest

from tests.lab import hosts
from tests.lab.embedder_helpers import ssh

pytestmark = pytest.mark.lab

PVE = hosts.by_name("pve")
STATE = PVE.root_dir / "var/lib/homelab-pve-api-double/state.json"
RESULT = "/var/lib/prometheus/node-exporter/homelab-guest-restore.prom"


def test_the_unit_restores_each_lxc_guests_newest_backup_and_leaves_nothing() -> None:
    guests = json.loads(STATE.read_text())["guests"]
    lxc = sorted(int(v) for v, g in guests.items() if g["kind"] == "lxc")
    assert lxc, "the rollout created LXC guests in the double"
    ssh(PVE, f"pvesh create /nodes/pve/vzdump --vmid {','.join(map(str, lxc))} --storage hdd")
    ssh(PVE, "systemctl start homelab-guest-restore-test.service", timeout=300)
    text = ssh(PVE, f"cat {RESULT}")
    for vmid in lxc:
        assert f'homelab_guest_restore_test_ok{{node="pve",vmid="{vmid}"' in text
        line = next(
            line
            for line in text.splitlines()
            if line.startswith("homelab_guest_restore_test_ok{") and f'vmid="{vmid}"' in line
        )
        assert line.endswith(" 1"), text
    log = ssh(PVE, "journalctl -u homelab-guest-restore-test -n 20 -o cat --no-pager")
    assert "restored, started, answered (degraded), removed" in log, log
    after = json.loads(STATE.read_text())
    assert "9999" not in after["guests"], "the scratch guest is gone"
    assert {v: g["config"] for v, g in after["guests"].items()} == {
        v: g["config"] for v, g in guests.items()
    }, "the lab's guests are as they were"
