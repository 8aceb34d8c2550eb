"""Metrics of every host: prometheus-node-exporter and its textfile collectors.

Every host runs Debian's ``prometheus-node-exporter`` (CPU, memory, file systems, network,
hwmon temperatures and fans, clock) on port 9100, and ``prometheus-node-exporter-collectors``
(its apt timer reports pending updates). Textfile collectors write to node-exporter's textfile
directory, ``/var/lib/prometheus/node-exporter/*.prom`` (Debian's; other tasks write there too:
the memory store's backup and restore-test metrics):

- SMART: on hosts that own physical disks (the data: no ``guest`` description, not in a
  container; ``smart_monitoring`` overrides), the collectors' smartmon and nvme timers with
  ``smartmontools`` and ``nvme-cli``, plus ``lm-sensors`` for the board's fan and temperature
  chips. Never in a VM or container: their disks are virtual.
- GPUs: where the data declares a GPU that is not passed through to a guest, the host-side
  script ``files/homelab-gpu-metrics`` on a timer, reading ``amd-smi`` (AMD) or ``nvidia-smi``
  (NVIDIA): temperature, utilisation, VRAM used/total, power, fan (``homelab_gpu_*``).
- vzdump: on the hypervisor, ``files/homelab-vzdump-metrics`` on a timer reads Proxmox's task
  list (``pvesh``) and reports the last backup job's outcome, and each guest's newest backup on
  the job's storage (``homelab_vzdump_*``).
- Local probes: where the host's tasks declare a ``loopback`` port (a service without
  authentication of its own, listening on 127.0.0.1 only: Ollama), ``files/homelab-local-probe``
  on a timer checks it on the host, as the blackbox exporter checks the others from the
  monitoring guest (``homelab_local_probe_*``; the same ServiceProbeDown alert).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from tasks.base.ups import DATA as UPS
from tasks.common.datamodel.forms import Bool, Int, Optional
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE
from tasks.common.facts import ContainerVirt
from tasks.common.ports import Port, present
from tasks.common.templating import file_path, template_path
from tasks.hypervisor.proxmox_backup import DATA as BACKUP

DATA = Schema(
    "node_exporter",
    Key(
        "smart_monitoring",
        Optional(Bool()),
        None,
        "SMART/NVMe health collection (smartmon and nvme timers); None: on hosts that own"
        " physical disks (no guest description, not a container).",
    ),
    Key(
        "textfile_metrics_interval_seconds",
        Int(5, 3600),
        60,
        "How often the GPU and vzdump textfile collectors run.",
    ),
)

PORTS = (Port(9100, "tcp", "node-exporter", metrics_path="/metrics"),)

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
PACKAGES = ["prometheus-node-exporter", "prometheus-node-exporter-collectors"]
SMART_PACKAGES = ["smartmontools", "nvme-cli", "lm-sensors"]
SMART_TIMERS = ("prometheus-node-exporter-smartmon.timer", "prometheus-node-exporter-nvme.timer")
SCRIPT_DIR = "/usr/local/sbin"
UNIT_DIR = "/etc/systemd/system"


def owns_physical_disks(has_guest: bool, container: str) -> bool:
    """A host whose disks are real: not a VM/LXC guest in the data, not running in a container."""
    return not has_guest and container in ("none", "")


def gpu_vendors(gpus: list[dict]) -> list[str]:
    """Vendors of the GPUs this host drives itself (not those passed through to a guest)."""
    vendors = {gpu["vendor"] for gpu in gpus if not gpu.get("passthrough_to")}
    return sorted(vendors)


def local_probe_url(port: Port) -> str:
    """What the local-probe collector checks for a loopback port with a probe."""
    if port.probe and port.probe.startswith("http:"):
        return f"http://127.0.0.1:{port.port}{port.probe.removeprefix('http:')}"
    return f"tcp://127.0.0.1:{port.port}"


def _collector(name: str, arguments: str, interval: int, description: str) -> None:
    """The host-side script ``files/<name>`` in /usr/local/sbin, run with ``arguments`` by a
    oneshot service on a timer, the timer running."""
    files.put(
        name=f"{description}: install {name}",
        src=file_path(name),
        dest=f"{SCRIPT_DIR}/{name}",
        mode="755",
    )
    service = files.template(
        name=f"{description}: service",
        src=template_path("homelab-textfile-collector.service.j2"),
        dest=f"{UNIT_DIR}/{name}.service",
        mode="644",
        description=description,
        command=f"{SCRIPT_DIR}/{name} {arguments}",
        unit=name,
    )
    timer = files.template(
        name=f"{description}: timer",
        src=template_path("homelab-textfile-collector.timer.j2"),
        dest=f"{UNIT_DIR}/{name}.timer",
        mode="644",
        description=description,
        interval=interval,
        unit=name,
    )
    changed = any_changed(service, timer)
    systemd.daemon_reload(name=f"{description}: reload systemd", _if=changed)
    systemd.service(
        name=f"{description}: timer on",
        service=f"{name}.timer",
        running=True,
        enabled=True,
    )


@deploy("Node exporter and textfile collectors")
def node_exporter(ports_of: Callable[[Iterable[str]], Iterable[Port]] | None = None) -> None:
    """``ports_of(groups)``: the ports the host's tasks declare (its loopback ones are probed
    here); given by the role table, so this module need not import it."""
    settings = DATA.read(host)
    machine = MACHINE.read(host)
    container = host.get_fact(ContainerVirt)
    smart = settings.smart_monitoring
    if smart is None:
        smart = owns_physical_disks(machine.guest is not None, container)

    apt.packages(
        name="Install prometheus-node-exporter and its textfile collectors",
        packages=PACKAGES,
        no_recommends=True,
    )
    defaults = files.template(
        name="node-exporter: every pool's filesystem collected (/mnt too)",
        src=template_path("prometheus-node-exporter.default.j2"),
        dest="/etc/default/prometheus-node-exporter",
        mode="644",
    )
    systemd.service(
        name="Run prometheus-node-exporter",
        service="prometheus-node-exporter",
        running=True,
        enabled=True,
    )
    systemd.service(
        name="Restart prometheus-node-exporter for its new arguments",
        service="prometheus-node-exporter",
        running=None,
        restarted=True,
        _if=defaults.did_change,
    )

    if smart:
        apt.packages(
            name="Install smartmontools, nvme-cli and lm-sensors (physical disks, fans)",
            packages=SMART_PACKAGES,
            no_recommends=True,
        )
    for timer in SMART_TIMERS:
        systemd.service(
            name=f"{'Enable' if smart else 'Disable'} {timer}",
            service=timer,
            running=smart,
            enabled=smart,
        )

    interval = settings.textfile_metrics_interval_seconds
    vendors = gpu_vendors(machine.gpus)
    if vendors:
        _collector(
            "homelab-gpu-metrics",
            f"--vendor {','.join(vendors)} --output {TEXTFILE_DIR}/homelab-gpu.prom",
            interval,
            f"GPU metrics ({', '.join(vendors)})",
        )
    if HYPERVISOR in host.groups:
        backup = BACKUP.read(host)
        # Each guest's newest backup on the job's storage, while the job is on.
        storage = (
            f" --storage {backup.proxmox_backup_storage}" if backup.proxmox_backup_enabled else ""
        )
        _collector(
            "homelab-vzdump-metrics",
            f"--output {TEXTFILE_DIR}/homelab-vzdump.prom{storage}",
            interval,
            "vzdump job metrics",
        )
    if UPS.read(host).ups is not None:
        _collector(
            "homelab-ups-metrics",
            f"--ups ups@localhost --output {TEXTFILE_DIR}/homelab-ups.prom",
            interval,
            "UPS metrics (NUT)",
        )
    declared = present(ports_of(host.groups), host.data) if ports_of else ()
    local = [p for p in declared if p.loopback and p.probe]
    if local:
        checks = " ".join(f"{p.service}={local_probe_url(p)}" for p in local)
        _collector(
            "homelab-local-probe",
            f"--output {TEXTFILE_DIR}/homelab-local-probe.prom {checks}",
            interval,
            f"Local probes ({', '.join(p.service for p in local)})",
        )
