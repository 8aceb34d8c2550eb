"""cloud-init does the first boot only; the rollout owns the host after it.

A Proxmox cloud-init VM (the Ubuntu 24.04 ageis-node) runs cloud-init on its first boot: user,
keys, network, resolver. Two things go wrong if it stays on:

- **the first rollout races it**: pyinfra can log in while cloud-init is still installing
  packages, and the two apt runs collide on the dpkg lock;
- **it runs again later**: when any cloud-init option of the VM changes, Proxmox rebuilds the
  cloud-init drive with a new instance id, and cloud-init then treats the VM as a new instance:
  it rewrites ``/etc/hosts`` (Proxmox passes ``manage_etc_hosts: true``), the network and the
  SSH host keys, which the controller has pinned.

So on a host where cloud-init is active, the first run waits for ``cloud-init status --wait``
and then writes ``/etc/cloud/cloud-init.disabled``, which keeps cloud-init from running at any
later boot (the network configuration it wrote stays). A first boot that failed stops the run,
naming the log; "done with recoverable errors" (exit status 2) goes on. Hosts without
cloud-init (installer-made, LXC guests) are left alone. Reads no data.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks.common.facts import CloudInitState

DISABLED_MARKER = "/etc/cloud/cloud-init.disabled"
FAILED = (
    "The first boot by cloud-init failed on this host (see cloud-init status --long above and"
    " /var/log/cloud-init.log); fix the cloud-init settings of the guest or recreate it,"
    " then run again"
)


@deploy("cloud-init hands the host over")
def cloud_init_handover() -> None:
    if host.get_fact(CloudInitState) != "active":
        return
    server.shell(
        name="Wait for cloud-init's first boot, then keep it from running again",
        commands=[
            "cloud-init status --wait --long; status=$?; "
            "if [ $status -ne 0 ] && [ $status -ne 2 ]; then "
            f"echo {shlex.quote(FAILED)} >&2; exit 1; fi; "
            f"touch {DISABLED_MARKER}"
        ],
    )
