"""Facts of our own, where pyinfra has none."""

from __future__ import annotations

from pyinfra.api import FactBase


class ContainerVirt(FactBase[str]):
    """The container technology the host runs in (``systemd-nspawn``, ``lxc``), or ``none``.

    The lab's hosts are containers and so are the service guests (LXC): a few things differ
    there, such as chronyd, which cannot set the clock without CAP_SYS_TIME.
    """

    def command(self) -> str:
        return "systemd-detect-virt --container || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "none"
