"""Facts of our own, where pyinfra has none."""

from __future__ import annotations

from pyinfra.api import FactBase


class ContainerVirt(FactBase[str]):
    """The container technology the host runs in (``systemd-nspawn``, ``lxc``), or ``none``.

    The lab's hosts are containers and so are the service guests (LXC): a few things differ
    there, such as chronyd, which cannot set the clock without CAP_SYS_TIME.
    """

    reads_other_hosts = False

    def command(self) -> str:
        return "systemd-detect-virt --container || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "none"


class OpenSSHVersion(FactBase[tuple[int, int]]):
    """The installed OpenSSH's (major, minor) version, (0, 0) when it cannot be read.

    sshd refuses algorithm names it does not know, so the hardened lists depend on it: Proxmox
    VE 8 (Debian 12) runs 9.2, Ubuntu 24.04 9.6, Debian 13 10.0.
    """

    reads_other_hosts = False

    def command(self) -> str:
        return "ssh -V 2>&1 || true"

    def process(self, output: list[str]) -> tuple[int, int]:
        import re

        match = re.search(r"OpenSSH_(\d+)\.(\d+)", " ".join(output))
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class SshSession(FactBase[dict[str, str | int] | None]):
    """Where the SSH session pyinfra runs in comes from: ``{"client": address, "port": port}``.

    Read from ``$SSH_CONNECTION`` ("client-address client-port server-address server-port") of
    the login shell; None when there is none (not an SSH session). Ask it with ``_sudo=False``:
    sudo resets the environment.
    """

    reads_other_hosts = False

    def command(self) -> str:
        return 'echo "${SSH_CONNECTION:-}"'

    def process(self, output: list[str]) -> dict[str, str | int] | None:
        fields = output[0].split() if output else []
        if len(fields) != 4 or not fields[3].isdigit():
            return None
        return {"client": fields[0], "port": int(fields[3])}


class NftTableMatches(FactBase[bool]):
    """Whether the loaded nft ``table`` is, rule for rule, the listing recorded in ``recorded``.

    ``nft -s list table`` (stateless: no counters) prints the table as the kernel holds it; the
    listing taken right after a load is kept in ``recorded``. False when the table is missing,
    was changed by hand, or nothing was recorded yet.
    """

    reads_other_hosts = False

    def command(self, table: str, recorded: str) -> str:
        return (
            f"if nft -s list table {table} > /dev/null 2>&1 && "
            f"nft -s list table {table} | cmp -s - {recorded}; then echo yes; else echo no; fi"
        )

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[0].strip() == "yes"


class UnattendedUpgradesPending(FactBase["list[str] | None"]):
    """What unattended-upgrades would install now (its own dry run, with its own origins).

    None when unattended-upgrades is not installed yet. Its dry run loads every package
    source in Python (about a second of CPU per host, every rollout), so it runs only when apt
    lists an upgradable package at all (a tenth of that): it installs only newer versions, and
    with none there is nothing for it. A security version that the host's own pins keep from
    being apt's candidate is left to its nightly run.
    """

    reads_other_hosts = False

    def command(self) -> str:
        return (
            "if ! command -v unattended-upgrade >/dev/null; then echo MISSING;"
            " elif apt list --upgradable 2>/dev/null | grep -q 'upgradable from'; then"
            " unattended-upgrade --dry-run --verbose 2>&1"
            " | sed -n 's/^Packages that will be upgraded: //p'; echo END;"
            " else echo END; fi"
        )

    def process(self, output: list[str]) -> list[str] | None:
        if output and output[-1].strip() == "MISSING":
            return None
        return [name for line in output if line.strip() != "END" for name in line.split()]


class CloudInitState(FactBase[str]):
    """Whether cloud-init still runs at boot: ``absent`` (not installed: installer-made hosts,
    LXC guests), ``active`` (it runs at every boot: a cloud-image VM before its first rollout)
    or ``disabled`` (``/etc/cloud/cloud-init.disabled`` exists: the host was handed over)."""

    reads_other_hosts = False

    def command(self) -> str:
        return (
            "if ! command -v cloud-init >/dev/null 2>&1; then echo absent;"
            " elif [ -e /etc/cloud/cloud-init.disabled ]; then echo disabled;"
            " else echo active; fi"
        )

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "absent"
