"""First install from bare machines, as the README's "First install" runs it: the lab's drill.

The installed machines (the hypervisor, the embedder) start as their installers leave them
(root by key); the guests do not exist. The first ``pyinfra inventory.py deploys/full.py``
converges those two, creates the guests through the hypervisor's API (the lab's Proxmox API
double) and reports each guest as not created yet. The API double cannot start guests, so
``labctl guests`` does what Proxmox does with the guests the run created: each is booted from
what the double recorded of it, in its ``startup`` order: the VM from a cloud image whose real
cloud-init reads the NoCloud seed qemu-server would write from its config (user, keys,
address, nameserver, upgrade), the LXC guests with what pve-container writes (host name,
network, resolver, root's keys). The same command again converges everything, and every host
is then reached as the admin user with sudo, root login off.

``make lab-bare`` runs this drill (it starts from whatever the lab holds: ``labctl down``
first), and ``make test`` through it; ``make lab`` keeps ready-made hosts for the fast loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.common import logins
from tasks.hypervisor import proxmox_ca
from tests.lab import hosts, pve_api_double

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
LABCTL = REPO / "tests/lab/labctl.py"
GUESTS = tuple(h for h in hosts.HOSTS if h.name in ("ageis-node", "monitoring", "dns"))
INSTALLED = tuple(h for h in hosts.HOSTS if h not in GUESTS)


def labctl(*args: str) -> None:
    subprocess.run([sys.executable, str(LABCTL), *args], check=True, timeout=1800)


def rollout() -> tuple[subprocess.CompletedProcess[str], list[str], float]:
    """Run the full deploy; the run, the hosts pyinfra reports as failed, seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [str(PYINFRA), "-y", "--json", "tests/lab/inventory.py", "deploys/full.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    elapsed = time.monotonic() - started
    try:
        report = json.loads(result.stdout[result.stdout.index("{") :])["results"]
    except (ValueError, KeyError) as error:
        raise AssertionError(f"no JSON report ({error}):\n{result.stderr[-4000:]}") from None
    return result, sorted(report["failed_hosts"]), elapsed


def test_bring_up_from_bare_machines_in_two_runs() -> None:
    labctl("down")
    labctl("up", "--fresh", *(h.name for h in INSTALLED))

    first, failed, first_s = rollout()
    said = first.stderr
    print(f"first run (installed machines; guests not created yet): {first_s:.0f}s")
    for guest in GUESTS:
        assert f"{guest.name}: not reachable; a guest of pve: if it is not created yet" in said, (
            f"{guest.name} is not reported as not created yet:\n{said[-4000:]}"
        )
    # Only the guests failed (they could not be reached), so pyinfra ends with status 1.
    assert failed == sorted(g.name for g in GUESTS), said[-6000:]
    for host in INSTALLED:
        assert logins.recorded_user(hosts.LOGIN_RECORDS, host.name) == hosts.ADMIN_USER, (
            f"{host.name}: no proven admin login after the first run"
        )
    # The node's CA, read over SSH on first contact and recorded, fingerprint printed.
    node_ca = proxmox_ca.fingerprint(pve_api_double.ca_file().read_text())
    recorded = proxmox_ca.record_file(hosts.PROXMOX_CA_RECORDS, "pve")
    assert proxmox_ca.fingerprint(recorded.read_text()) == node_ca, "the node's CA is recorded"
    assert f'proxmox_api_ca_fingerprint = "{node_ca}"' in said, said[-4000:]

    # Proxmox starting the guests the first run created (see the docstring).
    started = time.monotonic()
    labctl("guests", "pve")
    print(f"guests booted as Proxmox prepares them: {time.monotonic() - started:.0f}s")
    vm = hosts.by_name("ageis-node")
    # (instance -> instances/ID is an absolute link inside the guest: look it up by ID.)
    assert list((vm.root_dir / "var/lib/cloud/instances").glob("*/boot-finished")), (
        "cloud-init finished the VM's first boot from its seed"
    )

    second, failed, second_s = rollout()
    print(f"second run (everything): {second_s:.0f}s")
    assert (failed, second.returncode) == ([], 0), second.stderr[-6000:]
    for host in hosts.HOSTS:
        assert logins.recorded_user(hosts.LOGIN_RECORDS, host.name) == hosts.ADMIN_USER, host.name
