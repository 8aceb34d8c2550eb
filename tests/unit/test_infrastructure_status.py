"""The status report's formatting and degradation logic, on recorded answers.

Test doubles: ``RecordedPrometheus`` answers PromQL queries from a table of answers recorded
from the lab's Prometheus (and the real machines' figures where the lab has none),
``RecordedShell`` answers SSH commands, ``RecordedHttp`` answers Ollama's API.
"""

from __future__ import annotations

import json
import re

from tools.infrastructure_status import (
    UNKNOWN,
    Host,
    Report,
    exit_status,
    render_json,
    render_text,
)


class RecordedPrometheus:
    """Test double for PrometheusApi: first recorded (pattern -> result) whose pattern matches."""

    def __init__(self, answers: list[tuple[str, list[tuple[dict[str, str], float]]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        self.asked.append(expr)
        for pattern, result in self.answers:
            if re.search(pattern, expr):
                return result
        return []


class UnreachablePrometheus:
    """Test double: the monitoring host does not answer."""

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        raise ConnectionError("connection refused")


class RecordedShell:
    def __init__(self, answers: dict[tuple[str, str], str]) -> None:
        self.answers = answers

    def run(self, host: str, command: str) -> str | None:
        for (name, prefix), output in self.answers.items():
            if name == host and command.startswith(prefix):
                return output
        return None


class RecordedHttp:
    """Test double for HttpJson: a recorded connect time."""

    def __init__(self, latency: float | None = 0.0003) -> None:
        self.latency = latency

    def connect_seconds(self, address: str, port: int) -> float | None:
        return self.latency


HOSTS = [
    Host(
        "pve",
        ("hypervisor",),
        {
            "lan_address": "192.168.1.10",
            "cpu": {
                "vendor": "intel",
                "model": "Intel Xeon E5-2690 v4",
                "cores": 14,
                "threads": 28,
            },
            "gpus": [
                {
                    "model": "AMD Radeon AI PRO R9700",
                    "vram": "32G",
                    "passthrough_to": "ageis-node",
                    "functions": [
                        {"id": "1002:7551", "address": "0000:03:00.0", "kind": "display"},
                        {"id": "1002:ab40", "address": "0000:03:00.1", "kind": "audio"},
                    ],
                }
            ],
            "disks": [
                {"device": "/dev/disk/by-id/nvme-x", "kind": "nvme", "pool": "ssd"},
                {"device": "/dev/disk/by-id/ata-y", "kind": "hdd", "pool": "hdd"},
            ],
            "pools": {
                "ssd": {"type": "zfs", "path": "/ssd"},
                "hdd": {"type": "dir", "path": "/mnt/hdd"},
            },
        },
    ),
    Host(
        "ageis-node",
        ("ageis_node",),
        {"lan_address": "192.168.1.20", "guest": {"cores": 4, "memory": "16G"}},
    ),
    Host(
        "embedder",
        ("embedder",),
        {
            "lan_address": "192.168.1.30",
            "gpus": [{"model": "NVIDIA GeForce GTX 1650 SUPER", "vram": "4G"}],
        },
    ),
    Host("monitoring", ("service_guests", "monitoring"), {"lan_address": "192.168.1.40"}),
    Host("dns", ("service_guests", "dns"), {"lan_address": "192.168.1.50"}),
]

HEALTHY = [
    (r"^pve_version_info", [({"release": "9.0", "version": "9.0.10"}, 1)]),
    (r"^node_memory_MemTotal_bytes\{instance=\"pve\"", [({}, 128 * 1024**3)]),
    (r"^node_memory_MemAvailable_bytes\{instance=\"pve\"", [({}, 64 * 1024**3)]),
    (r"^node_memory_MemTotal_bytes\{instance=\"ageis-node\"", [({}, 16 * 1024**3)]),
    (r"node_filesystem_avail_bytes\{instance=\"pve\",mountpoint=\"/ssd\"", [({}, 2 * 1024**4)]),
    (r"node_filesystem_size_bytes\{instance=\"pve\",mountpoint=\"/ssd\"", [({}, 3 * 1024**4)]),
    (r"homelab:cpu_temp_celsius:max", [({}, 62)]),
    (r"homelab:gpu_temp_celsius:max", [({}, 71)]),
    (r"node_network_speed_bytes", [({}, 125000000)]),
    (r"count\(node_cpu_seconds_total", [({}, 4)]),
    (r"sum\(homelab_gpu_memory_used_bytes", [({}, 26.4 * 1024**3)]),
    (r"sum\(homelab_gpu_memory_total_bytes", [({}, 32 * 1024**3)]),
    (
        r"^probe_success\{instance=\"ageis-node\"",
        [({"service": "ollama"}, 1), ({"service": "actr-engine"}, 1), ({"service": "ssh"}, 1)],
    ),
    (r"^probe_success\{instance=\"embedder\"", [({"service": "embedding-server"}, 1)]),
    (r"^probe_success\{service=\"unbound\"", [({"instance": "dns"}, 1)]),
    (r"^node_os_info", [({"pretty_name": "Debian GNU/Linux 13 (trixie)"}, 1)]),
    (r"^up\{job=\"node-exporter\",instance=", [({}, 1)]),
    (r"^up\{job=\"node-exporter\"\}", [({"instance": h.name}, 1) for h in HOSTS]),
    (r"^smartmon_device_smart_healthy\{", [({"disk": "/dev/nvme0"}, 1)]),
    (r"nvme_percentage_used_ratio", [({}, 0.14)]),
    (r"homelab_backup_newest_timestamp_seconds", [({"stanza": "memory"}, 6 * 3600)]),
    (r"max\(homelab_backup_repository_bytes", [({}, 247 * 1024**3)]),
    (r"^homelab_restore_test_last_run_success", [({"instance": "ageis-node"}, 1)]),
    (r"homelab_restore_test_last_run_timestamp_seconds", [({}, 1_000_000)]),
    (r"^time\(\)$", [({}, 1_000_000 + 86400)]),
    (r"^homelab_vzdump_last_ok", [({"instance": "pve"}, 1)]),
    (r"^max\(homelab_vzdump_last_end_timestamp_seconds", [({}, 1_000_000 + 86400 - 20 * 3600)]),
    (r"^min\(homelab_vzdump_guest_newest_timestamp", [({}, 1_000_000 + 86400 - 21 * 3600)]),
    (r"^sum\(homelab_vzdump_guest_newest_bytes", [({}, 22 * 1024**3)]),
]
TAILSCALE = json.dumps(
    {"BackendState": "Running", "Peer": {"a": {"Online": True}, "b": {"Online": True}}}
)
# Recorded: `lscpu -J` (util-linux 2.41) on the Xeon E5-2690 v4, cut to the fields read.
LSCPU = json.dumps(
    {
        "lscpu": [
            {"field": "Architecture:", "data": "x86_64"},
            {"field": "CPU(s):", "data": "28"},
            {"field": "Model name:", "data": "Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz"},
            {"field": "Thread(s) per core:", "data": "2"},
            {"field": "Core(s) per socket:", "data": "14"},
            {"field": "Socket(s):", "data": "1"},
        ]
    }
)
# Recorded: `lspci -nk -d 1002:7551` with the card bound to vfio-pci, and with amdgpu.
LSPCI_VFIO = (
    "03:00.0 0300: 1002:7551 (rev c0)\n\tSubsystem: 1002:0487\n"
    "\tKernel driver in use: vfio-pci\n\tKernel modules: amdgpu\n"
)
LSPCI_AMDGPU = LSPCI_VFIO.replace("in use: vfio-pci", "in use: amdgpu")
SHELL = {
    ("pve", "lscpu -J"): LSCPU,
    ("pve", "lspci -nk -d 1002:7551"): LSPCI_VFIO,
    ("ageis-node", "cat /opt/rocm"): "7.1.3-87\n",
    ("ageis-node", "curl -fsS --max-time 3 http://127.0.0.1:11434/api/ps"): (
        '{"models": [{"name": "llama3.1:70b-instruct-q4_K_M"}]}'
    ),
    ("pve", "tailscale status"): TAILSCALE,
    **{
        (
            h.name,
            "nft list chain",
        ): "chain input {\n type filter hook input priority filter; policy drop;\n}"
        for h in HOSTS
    },
}


def report(answers=HEALTHY, prometheus=None, shell=SHELL) -> Report:
    built = Report(
        HOSTS, prometheus or RecordedPrometheus(answers), RecordedShell(shell), RecordedHttp()
    )
    built.build()
    return built


def test_a_healthy_lab_prints_every_section_and_exits_zero() -> None:
    built = report()
    text = render_text(built.sections)
    titles = re.findall(r"^\[(.+)\]$", text, re.M)
    assert titles == [
        "hypervisor: pve",
        "ageis-node - AI VM",
        "embedder-node",
        "storage health",
        "network",
    ]
    assert "   host: Proxmox VE 9.0" in text
    assert "   cpu: Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz (14C/28T)" in text
    assert "   gpu: AMD Radeon AI PRO R9700 32G (passed through to ageis-node, vfio-pci)" in text
    assert "   thermals: cpu 62C / gpu 71C" in text
    assert "   network: 1Gbps LAN + Tailscale mesh" in text
    assert "   rocm: 7.1.3" in text
    assert "   vram: 26.4 / 32.0 GB allocated" in text
    assert "   model: llama3.1:70b-instruct-q4_K_M (loaded)" in text
    assert "   status: ONLINE (latency: 0.3ms)" in text
    assert "   ssd pool: healthy (SMART ok, 14% wear)" in text
    assert "   memory store backups: pgBackRest, nightly to hdd (last: 6h ago, 247GB)" in text
    assert "   guest backups: vzdump, last job OK, 20h ago; stalest guest: 21h ago, 22GB" in text
    assert "   tailscale: 3 nodes connected (Running)" in text
    assert "   dns: local resolver active" in text
    assert "   link flaps: none recently" in text
    assert "   probe failures: none recently" in text
    assert "!!" not in text
    assert exit_status(built.sections, built.prometheus_ok) == 0


def test_a_stopped_service_is_marked_and_exits_non_zero() -> None:
    answers = [
        (
            r"^probe_success\{instance=\"ageis-node\"",
            [({"service": "ollama"}, 0), ({"service": "ssh"}, 1)],
        ),
        *HEALTHY,
    ]
    built = report(answers)
    text = render_text(built.sections)
    assert "!! services: ollama DOWN, ssh up" in text
    assert exit_status(built.sections, built.prometheus_ok) == 1
    assert json.loads(render_json(built.sections, built.prometheus_ok))["degraded"] is True


def test_old_backup_failed_restore_and_smart_are_degraded() -> None:
    answers = [
        (r"homelab_backup_newest_timestamp_seconds", [({"stanza": "memory"}, 30 * 3600)]),
        (r"^homelab_restore_test_last_run_success", [({"instance": "ageis-node"}, 0)]),
        (r"^smartmon_device_smart_healthy == 0", [({"instance": "pve", "disk": "/dev/sdb"}, 0)]),
        *HEALTHY,
    ]
    text = render_text(report(answers).sections)
    assert "!! memory store backups: pgBackRest, nightly to hdd (last: 30h ago, 247GB)" in text
    assert "!! restore test: FAILED (24h ago)" in text
    assert "!! smart: FAILING: pve:/dev/sdb" in text


def test_unmeasurable_figures_print_unknown_without_degrading() -> None:
    # The lab: no thermals, no GPU, no ROCm, no Ollama, no backups yet.
    answers = [
        (p, r) for p, r in HEALTHY if not re.search(r"temp|gpu_memory|backup|restore|vzdump", p)
    ]
    built = Report(HOSTS, RecordedPrometheus(answers), RecordedShell({}), RecordedHttp())
    built.build()
    text = render_text(built.sections)
    assert f"   thermals: cpu {UNKNOWN} / gpu {UNKNOWN}" in text
    assert f"   rocm: {UNKNOWN}" in text
    assert f"   vram: {UNKNOWN}" in text
    assert f"   memory store backups: {UNKNOWN}" in text
    assert f"   guest backups: {UNKNOWN}" in text
    # Without the machine's own answer the CPU line says it is the inventory's.
    assert "   cpu: Intel Xeon E5-2690 v4 (14C/28T; inventory, not read)" in text
    assert f"   firewall: {UNKNOWN}" in text
    assert exit_status(built.sections, built.prometheus_ok) == 0


def test_a_host_down_is_marked() -> None:
    answers = [
        (r"^up\{job=\"node-exporter\",instance=\"embedder\"", [({}, 0)]),
        (
            r"^up\{job=\"node-exporter\"\}",
            [({"instance": "embedder"}, 0), ({"instance": "pve"}, 1)],
        ),
        *HEALTHY,
    ]
    text = render_text(report(answers).sections)
    assert "!! status: OFFLINE" in text
    assert "!! hosts down: embedder" in text


def test_recent_link_flaps_and_probe_failures_are_shown() -> None:
    answers = [
        (
            r"^homelab:link_carrier_losses:window > 0",
            [({"instance": "embedder", "device": "enp3s0"}, 1)],
        ),
        (
            r"^homelab:probe_failures:window > 0",
            [
                ({"instance": "embedder", "service": "embedding-server"}, 2),
                ({"instance": "dns", "service": "unbound"}, 1),
            ],
        ),
        *HEALTHY,
    ]
    text = render_text(report(answers).sections)
    assert "   link flaps: embedder:enp3s0 x1" in text
    assert "   probe failures: dns:unbound x1, embedder:embedding-server x2" in text


def test_a_gpu_not_bound_to_vfio_and_a_vzdump_with_warnings() -> None:
    shell = {**SHELL, ("pve", "lspci -nk -d 1002:7551"): LSPCI_AMDGPU}
    answers = [(r"^max\(homelab_vzdump_last_warnings", [({}, 2)]), *HEALTHY]
    built = report(answers, shell=shell)
    text = render_text(built.sections)
    assert "!! gpu: AMD Radeon AI PRO R9700 32G (NOT passed through: driver amdgpu)" in text
    assert "   guest backups: vzdump, last job OK with 2 warnings, 20h ago; stalest" in text
    assert exit_status(built.sections, built.prometheus_ok) == 1


def test_a_guest_never_backed_up_is_degraded() -> None:
    answers = [(r"^min\(homelab_vzdump_guest_newest_timestamp", [({}, 0)]), *HEALTHY]
    text = render_text(report(answers).sections)
    assert "!! guest backups: vzdump, last job OK, 20h ago; stalest guest: never" in text


def test_an_open_firewall_is_marked() -> None:
    shell = {**SHELL, ("dns", "nft list chain"): "chain input { policy accept; }"}
    text = render_text(report(shell=shell).sections)
    assert "!! firewall: input NOT dropped by default on dns" in text


def test_unreachable_prometheus_exits_two_and_says_so() -> None:
    built = report(prometheus=UnreachablePrometheus())
    text = render_text(built.sections)
    assert "!! prometheus: could not be queried" in text
    assert exit_status(built.sections, built.prometheus_ok) == 2
    assert (
        json.loads(render_json(built.sections, built.prometheus_ok))["prometheus_reachable"]
        is False
    )


class RecordedResponse:
    """Test double for a requests response: a recorded Prometheus API answer."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def raise_for_status(self) -> None:
        return None

    def json(self) -> dict:
        return self.body


def test_prometheus_api_reads_vectors_and_scalars(monkeypatch) -> None:
    import requests

    from tools.infrastructure_status import PrometheusApi

    answers = {
        "up": {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": {"instance": "pve"}, "value": [1.0, "1"]}],
            },
        },
        "time()": {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "42"]}},
        "bad(": {"status": "error", "error": "parse error"},
    }
    monkeypatch.setattr(
        requests, "get", lambda url, params, timeout: RecordedResponse(answers[params["query"]])
    )
    api = PrometheusApi("http://192.168.1.40:9090/")
    assert api.query("up") == [({"instance": "pve"}, 1.0)]
    assert api.query("time()") == [({}, 42.0)]
    try:
        api.query("bad(")
    except RuntimeError as error:
        assert "parse error" in str(error)
    else:
        raise AssertionError("an error answer must raise")
