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


class OpenSSHVersion(FactBase[tuple[int, int]]):
    """The installed OpenSSH's (major, minor) version, (0, 0) when it cannot be read.

    sshd refuses algorithm names it does not know, so the hardened lists depend on it: Proxmox
    VE 8 (Debian 12) runs 9.2, Ubuntu 24.04 9.6, Debian 13 10.0.
    """

    def command(self) -> str:
        return "ssh -V 2>&1 || true"

    def process(self, output: list[str]) -> tuple[int, int]:
        import re

        match = re.search(r"OpenSSH_(\d+)\.(\d+)", " ".join(output))
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)
