"""The infrastructure status report (the seed's ``infrastructure-status.sh``), from live data.

    make status INV=inventory.py            # or: python -m tools.infrastructure_status
    python -m tools.infrastructure_status --inventory inventory.py --json

Sections: hypervisor, ageis-node, embedder, storage health, network. Figures come from the
monitoring guest's Prometheus (node-exporter, the textfile collectors, blackbox probes, the
Proxmox VE exporter, which reads the Proxmox API), from Ollama's API, and from the hosts over
SSH (ROCm version, Tailscale peers, the firewall's input policy), reached the way pyinfra
reaches them. A figure that cannot be measured prints ``unknown``; a line that shows trouble
is marked ``!!`` and makes the exit status 1 (2: Prometheus could not be asked at all).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
UNKNOWN = "unknown"
GIB = 1024**3


class Prometheus(Protocol):
    def query(self, expr: str) -> list[tuple[dict[str, str], float]]: ...


class Shell(Protocol):
    def run(self, host: str, command: str) -> str | None: ...


class Http(Protocol):
    def connect_seconds(self, address: str, port: int) -> float | None: ...


@dataclass
class Line:
    key: str
    value: str
    degraded: bool = False


@dataclass
class Section:
    title: str
    lines: list[Line] = field(default_factory=list)

    def add(self, key: str, value: str | None, degraded: bool = False) -> None:
        self.lines.append(Line(key, value if value not in (None, "") else UNKNOWN, degraded))


@dataclass
class Host:
    """What the report needs of an inventory host."""

    name: str
    groups: tuple[str, ...]
    data: dict[str, Any]

    @property
    def address(self) -> str:
        return str(self.data.get("lan_address") or self.name)


# --- live sources --------------------------------------------------------------------------


class PrometheusApi:
    """Prometheus's HTTP API on the monitoring guest (instant queries)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        import requests

        response = requests.get(
            f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=self.timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus: {body.get('error', body)}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]


class SshShell:
    """Commands on inventory hosts over OpenSSH, with the inventory's connection data."""

    def __init__(self, hosts: Sequence[Host], timeout: float = 10.0) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.timeout = timeout

    def run(self, host: str, command: str) -> str | None:
        data = self.hosts[host].data
        args = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        if data.get("ssh_key"):
            args += ["-i", str(Path(data["ssh_key"]).expanduser())]
        if data.get("ssh_known_hosts_file"):
            args += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
        if data.get("ssh_port"):
            args += ["-p", str(data["ssh_port"])]
        user = data.get("ssh_user") or "root"
        target = f"{user}@{data.get('ssh_hostname') or host}"
        if user != "root":  # the admin login: the whole command through sudo
            command = f"sudo -n sh -c {shlex.quote(command)}"
        try:
            result = subprocess.run(
                [*args, target, command],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout if result.returncode == 0 else None


def _json_or_none(text: str | None) -> Any | None:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


class HttpJson:
    """TCP connect times, from where the report runs."""

    def connect_seconds(self, address: str, port: int) -> float | None:
        """Best of three TCP connects: the network latency to a host, like a ping."""
        import socket
        import time

        best = None
        for _ in range(3):
            start = time.perf_counter()
            try:
                with socket.create_connection((address, port), timeout=2):
                    elapsed = time.perf_counter() - start
            except OSError:
                continue
            best = elapsed if best is None else min(best, elapsed)
        return best


# --- formatting helpers ----------------------------------------------------------------------


def gib(value: float | None) -> str | None:
    return None if value is None else f"{value / GIB:.1f}"


def age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def size_text(value: int | None) -> str | None:
    if value is None:
        return None
    for unit, scale in (("T", 1024**4), ("G", GIB), ("M", 1024**2)):
        if value >= scale:
            return f"{value / scale:.1f}".removesuffix(".0") + f"{unit}B"
    return f"{value}B"


# --- the report ----------------------------------------------------------------------------


class Report:
    """Builds the sections from the sources; never raises on a missing figure (``unknown``)."""

    def __init__(
        self,
        hosts: Sequence[Host],
        prometheus: Prometheus,
        shell: Shell,
        http: Http,
    ) -> None:
        self.hosts = list(hosts)
        self.prom = prometheus
        self.shell = shell
        self.http = http
        self.prometheus_ok = True
        self.sections: list[Section] = []

    # queries ------------------------------------------------------------------------------
    def q(self, expr: str) -> list[tuple[dict[str, str], float]]:
        try:
            return self.prom.query(expr)
        except Exception:
            self.prometheus_ok = False
            return []

    def one(self, expr: str) -> float | None:
        found = self.q(expr)
        return found[0][1] if found else None

    def in_group(self, group: str) -> list[Host]:
        return [h for h in self.hosts if group in h.groups]

    def services(self, host: Host) -> tuple[str | None, bool]:
        """'ollama up, actr-engine down' from the host's probes (the blackbox exporter's and
        those run on the host for its loopback-only services); degraded when one is down."""
        probes = self.q(
            f'probe_success{{instance="{host.name}"}}'
            f' or homelab_local_probe_success{{instance="{host.name}"}}'
        )
        if not probes:
            return None, False
        states: dict[str, bool] = {}
        for labels, value in probes:
            service = labels.get("service", "?")
            states[service] = states.get(service, True) and value == 1
        text = ", ".join(f"{s} {'up' if ok else 'DOWN'}" for s, ok in sorted(states.items()))
        return text, not all(states.values())

    def host_up(self, host: Host) -> bool | None:
        value = self.one(f'up{{job="node-exporter",instance="{host.name}"}}')
        return None if value is None else value == 1

    def temperature(self, expr: str) -> str:
        value = self.one(expr)
        return UNKNOWN if value is None else f"{value:.0f}C"

    # sections -----------------------------------------------------------------------------
    def build(self) -> list[Section]:
        for hv in self.in_group("hypervisor"):
            self.sections.append(self.hypervisor(hv))
        for node in self.in_group("ageis_node"):
            self.sections.append(self.ageis_node(node))
        for node in self.in_group("embedder"):
            self.sections.append(self.embedder(node))
        self.sections.append(self.storage())
        self.sections.append(self.network())
        return self.sections

    def _up_line(self, section: Section, host: Host) -> None:
        up = self.host_up(host)
        if up is False:
            section.add("status", "DOWN (node-exporter does not answer)", degraded=True)

    def hypervisor(self, hv: Host) -> Section:
        s = Section(f"hypervisor: {hv.name}")
        version = self.q(f'pve_version_info{{instance="{hv.name}"}}')
        s.add("host", f"Proxmox VE {version[0][0].get('release') or version[0][0].get('version')}"
              if version else None)  # fmt: skip
        s.add("cpu", self.cpu_text(hv))
        total = self.one(f'node_memory_MemTotal_bytes{{instance="{hv.name}"}}')
        avail = self.one(f'node_memory_MemAvailable_bytes{{instance="{hv.name}"}}')
        ram = (
            f"{gib(total)} GiB ({(1 - avail / total) * 100:.0f}% used)" if total and avail else None
        )
        s.add("ram", ram)
        gpus = hv.data.get("gpus") or []
        texts, unbound = (
            zip(*(self.gpu_text(hv, g) for g in gpus), strict=True) if gpus else ((), ())
        )
        s.add("gpu", "; ".join(texts) or "none", degraded=any(unbound))
        s.add("storage", self.pools_text(hv))
        cpu_t = self.temperature(f'max(homelab:cpu_temp_celsius:max{{instance="{hv.name}"}})')
        gpu_hosts = "|".join(g["passthrough_to"] for g in gpus if g.get("passthrough_to"))
        gpu_t = (
            self.temperature(f'max(homelab:gpu_temp_celsius:max{{instance=~"{gpu_hosts}"}})')
            if gpu_hosts
            else UNKNOWN
        )
        s.add("thermals", f"cpu {cpu_t} / gpu {gpu_t}")
        speed = self.one(
            f'max(node_network_speed_bytes{{instance="{hv.name}",device!~"lo|veth.*|tap.*|fwpr.*|fwln.*"}})'
        )
        lan = f"{speed * 8 / 1e9:g}Gbps LAN" if speed and speed > 0 else "LAN speed unknown"
        tail = " + Tailscale mesh" if self.tailscale_state(hv) else ""
        s.add("network", lan + tail)
        self._up_line(s, hv)
        return s

    def cpu_text(self, host: Host) -> str | None:
        """The CPU as the machine reports it (lscpu), else the inventory's, marked so."""
        found = _json_or_none(self.shell.run(host.name, "lscpu -J"))
        fields = {
            str(f.get("field", "")).rstrip(":"): str(f.get("data", ""))
            for f in (found or {}).get("lscpu", [])
        }
        if fields.get("Model name"):
            cores = fields.get("Core(s) per socket", "").strip()
            sockets = fields.get("Socket(s)", "1").strip() or "1"
            threads = fields.get("CPU(s)", "").strip()
            total = int(cores) * int(sockets) if cores.isdigit() and sockets.isdigit() else None
            count = f" ({total}C/{threads}T)" if total and threads else ""
            return f"{' '.join(fields['Model name'].split())}{count}"
        cpu = host.data.get("cpu") or {}
        if not cpu:
            return None
        threads = f"/{cpu['threads']}T" if cpu.get("threads") else ""
        return f"{cpu.get('model')} ({cpu.get('cores')}C{threads}; inventory, not read)"

    def gpu_text(self, host: Host, gpu: dict) -> tuple[str, bool]:
        """A GPU's line and whether a passed-through one is NOT bound to vfio-pci (from
        lspci's "Kernel driver in use" for its display function's vendor:device id)."""
        text = f"{gpu['model']} {gpu['vram']}"
        target = gpu.get("passthrough_to")
        if not target:
            return text, False
        display = next((f for f in gpu.get("functions") or [] if f.get("kind") == "display"), None)
        command = f"lspci -nk -d {shlex.quote(display['id'])}" if display else None
        out = self.shell.run(host.name, command) if command else None
        drivers = re.findall(r"Kernel driver in use:\s*(\S+)", out or "")
        if not drivers:
            return f"{text} (for {target}; binding unknown)", False
        if set(drivers) == {"vfio-pci"}:
            return f"{text} (passed through to {target}, vfio-pci)", False
        return f"{text} (NOT passed through: driver {', '.join(sorted(set(drivers)))})", True

    def pools_text(self, host: Host) -> str | None:
        parts = []
        for name, pool in sorted((host.data.get("pools") or {}).items()):
            free = self.one(
                f'node_filesystem_avail_bytes{{instance="{host.name}",mountpoint="{pool["path"]}"}}'
            )
            size = self.one(
                f'node_filesystem_size_bytes{{instance="{host.name}",mountpoint="{pool["path"]}"}}'
            )
            figures = (
                f"{gib(free)} of {gib(size)} GiB free" if free is not None and size else UNKNOWN
            )
            parts.append(f"{name} pool ({pool['type']} {pool['path']}): {figures}")
        return "; ".join(parts) or None

    def tailscale_state(self, host: Host) -> dict | None:
        out = self.shell.run(host.name, "tailscale status --json 2>/dev/null")
        try:
            return json.loads(out) if out else None
        except ValueError:
            return None

    def ageis_node(self, node: Host) -> Section:
        s = Section(f"{node.name} - AI VM")
        guest = node.data.get("guest") or {}
        cpus = self.one(f'count(node_cpu_seconds_total{{instance="{node.name}",mode="idle"}})')
        s.add("vcpus", f"{cpus:.0f} (inventory: {guest.get('cores', '?')})" if cpus else None)
        total = self.one(f'node_memory_MemTotal_bytes{{instance="{node.name}"}}')
        s.add("ram", f"{gib(total)} GiB (allocated {guest.get('memory', '?')})" if total else None)
        rocm = self.shell.run(node.name, "cat /opt/rocm/.info/version 2>/dev/null")
        s.add("rocm", rocm.strip().split("-")[0] if rocm else None)
        used = self.one(f'sum(homelab_gpu_memory_used_bytes{{instance="{node.name}"}})')
        vtotal = self.one(f'sum(homelab_gpu_memory_total_bytes{{instance="{node.name}"}})')
        s.add(
            "vram",
            f"{gib(used)} / {gib(vtotal)} GB allocated" if used is not None and vtotal else None,
        )
        # Over SSH: Ollama's port is open to its own host and monitoring, not to the controller.
        ps_text = self.shell.run(node.name, "curl -fsS --max-time 3 http://127.0.0.1:11434/api/ps")
        ps = _json_or_none(ps_text)
        models = [m.get("name") for m in (ps or {}).get("models", [])] if ps is not None else None
        s.add(
            "model",
            (", ".join(models) + " (loaded)")
            if models
            else ("none loaded" if ps is not None else None),
        )
        text, bad = self.services(node)
        s.add("services", text, degraded=bad)
        self._up_line(s, node)
        return s

    def embedder(self, node: Host) -> Section:
        s = Section(f"{node.name}-node")
        os_info = self.q(f'node_os_info{{instance="{node.name}"}}')
        s.add("os", os_info[0][0].get("pretty_name") if os_info else None)
        gpus = node.data.get("gpus") or []
        s.add("gpu", "; ".join(f"{g['model']} {g['vram']}" for g in gpus) or "none")
        text, bad = self.services(node)
        s.add("services", text, degraded=bad)
        up = self.host_up(node)
        latency = self.http.connect_seconds(node.address, int(node.data.get("ssh_port") or 22))
        if up is None:
            s.add("status", None)
        elif up:
            lat = f"{latency * 1000:.1f}ms" if latency is not None else UNKNOWN
            # TCP connect from here to its SSH port, best of three: the LAN's round trip.
            s.add("status", f"ONLINE (latency: {lat})")
        else:
            s.add("status", "OFFLINE", degraded=True)
        return s

    def storage(self) -> Section:
        s = Section("storage health")
        for hv in self.in_group("hypervisor"):
            for name, _pool in sorted((hv.data.get("pools") or {}).items()):
                disks = [d for d in hv.data.get("disks") or [] if d.get("pool") == name]
                s.add(f"{name} pool", *self.pool_health(hv, disks))
        unhealthy = self.q("smartmon_device_smart_healthy == 0")
        if unhealthy:
            names = ", ".join(
                f"{labels.get('instance')}:{labels.get('disk')}" for labels, _ in unhealthy
            )
            s.add("smart", f"FAILING: {names}", degraded=True)
        # The store's textfile metrics (pgbackrest info on the repository host), else the
        # names of prometheus-pgbackrest-exporter.
        since = self.q(
            "time() - max by (instance, stanza) (homelab_backup_newest_timestamp_seconds)"
        ) or self.q("min by (instance, stanza) (pgbackrest_backup_since_last_completion_seconds)")
        size = self.one("max(homelab_backup_repository_bytes)") or self.one(
            'max(pgbackrest_backup_last_repo_size_bytes{backup_type="incr"})'
        )
        if since:
            worst = max(v for _, v in since)
            size_part = f", {size_text(int(size))}" if size else ""
            s.add(
                "memory store backups",
                f"pgBackRest, nightly to hdd (last: {age(worst)}{size_part})",
                degraded=worst > 26 * 3600,
            )
        else:
            s.add("memory store backups", None)
        restore_ok = self.q("homelab_restore_test_last_run_success")
        restore_at = self.one("max(homelab_restore_test_last_run_timestamp_seconds)")
        now = self.one("time()")
        if restore_ok and restore_at and now:
            ok = all(v == 1 for _, v in restore_ok)
            s.add("restore test", f"{'passed' if ok else 'FAILED'} ({age(now - restore_at)})",
                  degraded=not ok or now - restore_at > 8 * 86400)  # fmt: skip
        else:
            s.add("restore test", None)
        vz = self.q("homelab_vzdump_last_ok")
        if vz:
            ok = all(v == 1 for _, v in vz)
            warnings = self.one("max(homelab_vzdump_last_warnings)") or 0
            ended = self.one("max(homelab_vzdump_last_end_timestamp_seconds)")
            outcome = "OK" if ok else "FAILED"
            if ok and warnings:
                outcome = f"OK with {warnings:.0f} warnings"
            when = f", {age(now - ended)}" if ended and now else ""
            # Each guest's newest backup on the job's storage: the stalest one, and their size.
            stalest = self.one("min(homelab_vzdump_guest_newest_timestamp_seconds)")
            total = self.one("sum(homelab_vzdump_guest_newest_bytes)")
            guests = ""
            if stalest is not None and now:
                size_part = f", {size_text(int(total))}" if total else ""
                guests = f"; stalest guest: {age(now - stalest) if stalest else 'never'}{size_part}"
            stale = stalest is not None and bool(now) and now - stalest > 26 * 3600
            s.add(
                "guest backups",
                f"vzdump, last job {outcome}{when}{guests}",
                degraded=not ok or stale,
            )
        else:
            s.add("guest backups", None)
        return s

    def pool_health(self, hv: Host, disks: list[dict]) -> tuple[str, bool]:
        healthy = self.q(f'smartmon_device_smart_healthy{{instance="{hv.name}"}}')
        wear = self.one(f'max(nvme_percentage_used_ratio{{instance="{hv.name}"}})')
        ssd_left = self.one(
            f'min(smartmon_wear_leveling_count_value{{instance="{hv.name}"}}'
            f' or smartmon_media_wearout_indicator_value{{instance="{hv.name}"}})'
        )
        if not disks:
            return "no physical disks declared (SMART unknown)", False
        if not healthy:
            return f"{len(disks)} disks, SMART unknown", False
        bad = [labels.get("disk") for labels, v in healthy if v == 0]
        parts = ["SMART ok" if not bad else f"SMART FAILING on {', '.join(bad)}"]
        kinds = {d["kind"] for d in disks}
        if kinds & {"nvme", "ssd"}:
            wears = [w * 100 for w in (wear,) if w is not None]
            wears += [100 - x for x in (ssd_left,) if x is not None]
            parts.append(f"{max(wears):.0f}% wear" if wears else "wear unknown")
        return f"{'healthy' if not bad else 'DEGRADED'} ({', '.join(parts)})", bool(bad)

    def network(self) -> Section:
        s = Section("network")
        nodes = [h for h in self.hosts if {"hypervisor", "ageis_node", "embedder"} & set(h.groups)]
        state = next((st for st in (self.tailscale_state(h) for h in nodes) if st), None)
        if state is None:
            s.add("tailscale", None)
        else:
            peers = (state.get("Peer") or {}).values()
            online = 1 + sum(1 for p in peers if p.get("Online"))
            s.add("tailscale", f"{online} nodes connected ({state.get('BackendState', '?')})")
        dns = self.q('probe_success{service="unbound"}')
        if dns:
            ok = all(v == 1 for _, v in dns)
            s.add("dns", "local resolver active" if ok else "local resolver DOWN", degraded=not ok)
        else:
            s.add("dns", None)
        policies = {
            h.name: self.shell.run(h.name, "nft list chain inet homelab input 2>/dev/null")
            for h in self.hosts
        }
        known = {n: out for n, out in policies.items() if out is not None}
        open_hosts = sorted(n for n, out in known.items() if "policy drop" not in out)
        if not known:
            s.add("firewall", None)
        elif open_hosts:
            s.add("firewall", f"input NOT dropped by default on {', '.join(open_hosts)}", True)
        else:
            missing = len(self.hosts) - len(known)
            unknown_part = f"; {missing} unknown" if missing else ""
            s.add(
                "firewall",
                "no exposed ports (input policy drop, declared ports to their consumers only"
                f" on {len(known)} hosts{unknown_part})",
            )
        # Short outages no alert's for: reaches: links that lost their carrier and failed
        # probe samples within the rules' window (recorded by Prometheus).
        for key, expr, part in (
            ("link flaps", "homelab:link_carrier_losses:window > 0", "device"),
            ("probe failures", "homelab:probe_failures:window > 0", "service"),
        ):
            found = self.q(expr)
            listed = sorted(
                f"{labels.get('instance', '?')}:{labels.get(part, '?')} x{v:.0f}"
                for labels, v in found
            )
            s.add(key, ", ".join(listed) or ("none recently" if self.prometheus_ok else None))
        down = [labels.get("instance") for labels, v in self.q('up{job="node-exporter"}') if v == 0]
        if down:
            s.add("hosts down", ", ".join(sorted(down)), degraded=True)
        firing = self.q('ALERTS{alertstate="firing"}')
        names = sorted(
            {f"{labels.get('alertname')}({labels.get('instance', '')})" for labels, _ in firing}
        )
        critical = any(labels.get("severity") == "critical" for labels, _ in firing)
        s.add("alerts", f"{len(names)} firing" + (f": {', '.join(names)}" if names else ""),
              degraded=critical)  # fmt: skip
        if not self.prometheus_ok:
            s.add("prometheus", "could not be queried: figures above are unknown", True)
        return s


def degraded(sections: Sequence[Section]) -> bool:
    return any(line.degraded for section in sections for line in section.lines)


def render_text(sections: Sequence[Section]) -> str:
    out = []
    for section in sections:
        out.append(f"[{section.title}]")
        for line in section.lines:
            mark = "!! " if line.degraded else "   "
            out.append(f"{mark}{line.key}: {line.value}")
    return "\n".join(out) + "\n"


def render_json(sections: Sequence[Section], prometheus_ok: bool) -> str:
    return json.dumps(
        {
            "degraded": degraded(sections),
            "prometheus_reachable": prometheus_ok,
            "sections": [asdict(section) for section in sections],
        },
        indent=2,
    )


def exit_status(sections: Sequence[Section], prometheus_ok: bool) -> int:
    if not prometheus_ok:
        return 2
    return 1 if degraded(sections) else 0


def load_hosts(inventory_path: str) -> list[Host]:
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory_from_files

    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        with ctx_state.use(State()):
            inventory = make_inventory_from_files(inventory_path, cwd=str(REPO))
    finally:
        os.chdir(cwd)
    return [Host(h.name, tuple(h.groups), h.data.dict()) for h in inventory]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Homelab infrastructure status from live data")
    parser.add_argument("--inventory", default="inventory.py")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--prometheus", help="Prometheus URL (default: the monitoring host's)")
    args = parser.parse_args(argv)
    hosts = load_hosts(args.inventory)
    url = args.prometheus
    if not url:
        monitors = [h for h in hosts if "monitoring" in h.groups]
        if not monitors:
            print("the inventory has no monitoring host; pass --prometheus URL", file=sys.stderr)
            return 2
        url = f"http://{monitors[0].address}:9090"
    report = Report(hosts, PrometheusApi(url), SshShell(hosts), HttpJson())
    sections = report.build()
    print(
        render_json(sections, report.prometheus_ok) if args.json else render_text(sections), end=""
    )
    return exit_status(sections, report.prometheus_ok)


if __name__ == "__main__":
    sys.exit(main())
