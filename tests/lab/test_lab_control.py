"""The lab controller against the running lab: pulled plug, start, reboot, apt proxy.

Needs root and the lab (``python3 tests/lab/labctl.py up``; the session fixture runs it, which
is a no-op when the lab is up). Every test leaves its host running.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.lab import hosts, labctl
from tests.lab.hosts import LabHost
from tests.lab.lab_cli import labctl_run

pytestmark = pytest.mark.lab


def _test_host() -> LabHost:
    """``dns`` (the cheapest host) if it has an ssd pool, else the last non-hypervisor one that has.

    The pulled-plug test checks a file in the host's stand-in ssd pool.
    """
    dns = hosts.by_name("dns")
    if "ssd" in dns.pools:
        return dns
    with_ssd = [h for h in hosts.HOSTS if "ssd" in h.pools and "hypervisor" not in h.groups]
    return with_ssd[-1]


HOST = _test_host()


def ssh(command: str, timeout: float = 60) -> str:
    result = subprocess.run(
        labctl.ssh_argv(HOST, command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{HOST.name}: {command!r} failed:\n{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="session")
def lab() -> None:
    labctl_run("up", timeout=900)


@pytest.fixture
def host(lab: None) -> Iterator[LabHost]:
    """The test host, running before and after the test (even one that failed half-way)."""
    labctl_run("start", HOST.name)
    yield HOST
    labctl_run("start", HOST.name)
    labctl_run("wait", HOST.name)


def test_pulled_plug_keeps_pool_and_synced_files(host: LabHost) -> None:
    token = uuid.uuid4().hex
    name = f"labctl-test-{token}"
    in_pool = f"{host.pools['ssd']}/{name}"
    in_root = f"/var/lib/{name}"
    ssh(f"echo {token} > {in_pool} && echo {token} > {in_root} && sync")

    labctl_run("kill", host.name)
    assert labctl.nspawn_pid(host) is None, "systemd-nspawn still runs after the pulled plug"
    assert not labctl.port_answers(host.address, 22, timeout=2.0), "port 22 answers while down"

    labctl_run("start", host.name)
    assert ssh(f"cat {in_pool} {in_root}").split() == [token, token]
    assert (host.pool_dir("ssd") / name).read_text().strip() == token
    ssh(f"rm -f {in_pool} {in_root}")


def test_reboot_comes_back_with_a_new_boot_id(host: LabHost) -> None:
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    before = ssh(boot_id)
    labctl_run("reboot", host.name)
    assert labctl.nspawn_pid(host) is not None
    after = ssh(boot_id)
    assert after and after != before
    labctl_run("wait", host.name)  # and systemd is running again, not degraded


def test_apt_goes_through_the_lab_proxy(host: LabHost) -> None:
    log = labctl.ACNG_LOG_DIR / "apt-cacher.log"
    offset = log.stat().st_size if log.exists() else 0
    ssh("apt-get update -q", timeout=300)
    with open(log, "rb") as text:
        text.seek(offset)
        fresh = text.read().decode(errors="replace")
    assert f"|{host.address}|" in fresh, f"apt-cacher-ng logged no request from {host.address}"
