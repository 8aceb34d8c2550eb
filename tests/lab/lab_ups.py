"""Lab fixture: the UPS the lab's hypervisor drives, NUT's ``dummy-ups`` reading a state file.

The lab inventory declares ``ups`` on ``pve`` with the ``dummy-ups`` driver and this file as its
port; ``labctl up`` writes the file (mains power, full battery) into the host's root when it is
missing, before the rollout installs NUT. A drill writes other states into it (``OB``: on
battery, ``OB LB``: low battery); dummy-ups reads the file again when it changes. Never
installed by the deploy.
"""

from __future__ import annotations

from tests.lab.hosts import LabHost

PORT = "/etc/nut/lab-ups.dev"


def state(status: str, charge: int, runtime_s: int) -> str:
    return (
        f"ups.status: {status}\n"
        f"battery.charge: {charge}\n"
        f"battery.runtime: {runtime_s}\n"
        "ups.load: 23\n"
        "device.mfr: homelab lab\n"
        "device.model: dummy-ups (lab drill)\n"
    )


ONLINE = state("OL", 100, 1800)
ON_BATTERY = state("OB", 64, 900)
LOW_BATTERY = state("OB LB", 9, 120)


def write(host: LabHost, text: str) -> None:
    path = host.root_dir / PORT.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)


def seed(host: LabHost) -> None:
    """Mains power and a full battery, unless a state is there already."""
    if not (host.root_dir / PORT.lstrip("/")).exists():
        write(host, ONLINE)
