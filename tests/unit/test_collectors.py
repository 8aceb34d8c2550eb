"""The host-side textfile collectors (files/homelab-gpu-metrics, files/homelab-vzdump-metrics)
on recorded tool output: what the GPU tools and Proxmox's task list print on real machines."""

from __future__ import annotations

import importlib.util
import json
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

FILES = Path(__file__).resolve().parents[2] / "files"


def load(name: str) -> ModuleType:
    """A host-side script (no .py suffix) as a module."""
    loader = SourceFileLoader(name.replace("-", "_"), str(FILES / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# Recorded: nvidia-smi --query-gpu=... --format=csv,noheader,nounits on a GTX 1650 Super.
NVIDIA_CSV = "0, NVIDIA GeForce GTX 1650 SUPER, 47, 12, 1534, 4096, 18.52, 35\n"
# Recorded shape of amd-smi metric --json (ROCm 7: {"gpu_data": [...]}), an R9700 under load.
AMD_JSON = {
    "gpu_data": [
        {
            "gpu": 0,
            "usage": {"gfx_activity": {"value": 37, "unit": "%"}},
            "power": {"socket_power": {"value": 212, "unit": "W"}},
            "temperature": {
                "edge": {"value": 61, "unit": "C"},
                "hotspot": {"value": 74, "unit": "C"},
                "mem": "N/A",
            },
            "fan": {"rpm": {"value": 1450}, "usage": {"value": 47, "unit": "%"}},
            "mem_usage": {
                "total_vram": {"value": 32624, "unit": "MB"},
                "used_vram": {"value": 27034, "unit": "MB"},
            },
        }
    ]
}


def test_nvidia_csv_becomes_gpu_metrics() -> None:
    gpu = load("homelab-gpu-metrics")
    text = gpu.render(gpu.parse_nvidia(NVIDIA_CSV))
    assert 'homelab_gpu_temperature_celsius{gpu="0",sensor="core",vendor="nvidia"} 47.0' in text
    assert 'homelab_gpu_utilization_ratio{gpu="0",vendor="nvidia"} 0.12' in text
    assert f'homelab_gpu_memory_total_bytes{{gpu="0",vendor="nvidia"}} {4096 * 2**20:.1f}' in text
    assert 'homelab_gpu_fan_ratio{gpu="0",vendor="nvidia"} 0.35' in text


def test_amd_json_becomes_gpu_metrics_and_skips_na() -> None:
    gpu = load("homelab-gpu-metrics")
    text = gpu.render(gpu.parse_amd(json.dumps(AMD_JSON)))
    assert 'homelab_gpu_temperature_celsius{gpu="0",sensor="hotspot",vendor="amd"} 74.0' in text
    assert 'sensor="mem"' not in text  # N/A is no figure
    assert f'homelab_gpu_memory_used_bytes{{gpu="0",vendor="amd"}} {27034 * 2**20:.1f}' in text
    assert 'homelab_gpu_power_watts{gpu="0",vendor="amd"} 212.0' in text
    # ROCm 6's list form parses the same.
    assert gpu.parse_amd(json.dumps(AMD_JSON["gpu_data"])) == gpu.parse_amd(json.dumps(AMD_JSON))


def test_each_metric_family_is_one_block_under_its_type_line() -> None:
    gpu = load("homelab-gpu-metrics")
    two = NVIDIA_CSV + NVIDIA_CSV.replace("0, NVIDIA", "1, NVIDIA")
    lines = gpu.render(gpu.parse_nvidia(two)).splitlines()
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(families) == len(set(families))
    order = [line.split("{")[0] for line in lines if not line.startswith("#")]
    assert order == sorted(order)


def test_vzdump_reports_the_newest_finished_task() -> None:
    vzdump = load("homelab-vzdump-metrics")
    # Recorded shape of pvesh get /nodes/pve/tasks --typefilter vzdump --output-format json.
    tasks = [
        {"type": "vzdump", "status": "OK", "starttime": 100, "endtime": 200},
        {"type": "vzdump", "status": "job errors", "starttime": 300, "endtime": 400},
        {"type": "vzdump", "starttime": 500},  # still running
    ]
    newest = vzdump.newest_finished(tasks)
    assert newest["status"] == "job errors"
    text = vzdump.render("pve", newest, up=True)
    assert 'homelab_vzdump_last_ok{node="pve"} 0' in text
    assert 'homelab_vzdump_last_end_timestamp_seconds{node="pve"} 400' in text
    assert 'homelab_vzdump_collector_up{node="pve"} 0' in vzdump.render("pve", None, up=False)


def test_vzdump_job_with_warnings_backed_up_and_says_how_many_warnings() -> None:
    vzdump = load("homelab-vzdump-metrics")
    task = {"type": "vzdump", "status": "WARNINGS: 2", "starttime": 100, "endtime": 200}
    text = vzdump.render("pve", task, up=True)
    assert 'homelab_vzdump_last_ok{node="pve"} 1' in text
    assert 'homelab_vzdump_last_warnings{node="pve"} 2' in text
    assert vzdump.outcome("OK") == (1, 0)
    assert vzdump.outcome("job errors") == (0, 0)
    assert vzdump.outcome("WARNINGS: many") == (0, 0)  # not Proxmox's form: a failure
    assert vzdump.outcome(None) == (0, 0)


def test_vzdump_reports_each_guests_newest_backup_and_a_guest_without_any() -> None:
    vzdump = load("homelab-vzdump-metrics")
    # Recorded shapes: pvesh get /cluster/resources --type vm, and
    # pvesh get /nodes/pve/storage/hdd/content --content backup (both --output-format json).
    resources = [
        {"id": "qemu/100", "vmid": 100, "name": "ageis-node", "node": "pve", "type": "qemu",
         "template": 0},
        {"id": "lxc/150", "vmid": 150, "name": "monitoring", "node": "pve", "type": "lxc",
         "template": 0},
        {"id": "lxc/151", "vmid": 151, "name": "dns", "node": "pve", "type": "lxc", "template": 0},
        {"id": "qemu/9000", "vmid": 9000, "name": "tpl", "node": "pve", "type": "qemu",
         "template": 1},
        {"id": "qemu/200", "vmid": 200, "name": "elsewhere", "node": "pve2", "type": "qemu"},
    ]  # fmt: skip
    contents = [
        {"volid": "hdd:backup/vzdump-qemu-100-2026_12_01-02_30_01.vma.zst", "vmid": 100,
         "ctime": 1764556201, "size": 21474836480, "content": "backup", "format": "vma.zst"},
        {"volid": "hdd:backup/vzdump-qemu-100-2026_12_02-02_30_02.vma.zst", "vmid": 100,
         "ctime": 1764642602, "size": 21500000000, "content": "backup", "format": "vma.zst"},
        {"volid": "hdd:backup/vzdump-lxc-150-2026_12_02-02_41_10.tar.zst", "vmid": 150,
         "ctime": 1764643270, "size": 734003200, "content": "backup", "format": "tar.zst"},
    ]  # fmt: skip
    guests = vzdump.guest_backups(resources, contents, "pve")
    assert guests == [
        ("100", "ageis-node", 1764642602, 21500000000),
        ("150", "monitoring", 1764643270, 734003200),
        ("151", "dns", 0, 0),
    ]
    text = vzdump.render_guests("pve", guests)
    assert (
        'homelab_vzdump_guest_newest_timestamp_seconds{node="pve",vmid="151",name="dns"} 0' in text
    )
    assert (
        'homelab_vzdump_guest_newest_bytes{node="pve",vmid="100",name="ageis-node"} 21500000000'
        in text
    )


def test_vzdump_collector_writes_nothing_where_there_is_no_proxmox(tmp_path: Path) -> None:
    import subprocess
    import sys

    stale = tmp_path / "homelab-vzdump.prom"
    stale.write_text("homelab_vzdump_last_ok 1\n")
    result = subprocess.run(
        [sys.executable, str(FILES / "homelab-vzdump-metrics"), "--output", str(stale)],
        env={"PATH": str(tmp_path)},  # no pvesh on it
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not stale.exists()


def test_gpu_collector_without_its_tool_reports_down_and_exits_0(tmp_path) -> None:
    """A first rollout runs the collector before the driver's tools exist: it says so in the
    metric, and exits 0 so that its timer keeps running it (a oneshot that never succeeded
    gives OnUnitActiveSec no base)."""
    import subprocess
    import sys

    output = tmp_path / "homelab-gpu.prom"
    result = subprocess.run(
        [sys.executable, str(FILES / "homelab-gpu-metrics"), "--vendor", "amd,nvidia",
         "--output", str(output)],
        env={"PATH": str(tmp_path)},  # neither amd-smi nor nvidia-smi on it
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "homelab-gpu-metrics: amd:" in result.stderr
    text = output.read_text()
    assert 'homelab_gpu_collector_up{vendor="amd"} 0.0' in text
    assert 'homelab_gpu_collector_up{vendor="nvidia"} 0.0' in text


def test_local_probe_reports_an_answering_and_a_silent_service(tmp_path: Path) -> None:
    """homelab-local-probe against a real HTTP server on loopback and a closed port."""
    import http.server
    import socket
    import subprocess
    import sys
    import threading

    class Version(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/api/version" else 404
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b'{"version": "0.12.11"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    port = server.server_address[1]
    output = tmp_path / "homelab-local-probe.prom"
    try:
        result = subprocess.run(
            [
                sys.executable,
                str(FILES / "homelab-local-probe"),
                "--output",
                str(output),
                f"ollama=http://127.0.0.1:{port}/api/version",
                f"missing=http://127.0.0.1:{port}/nowhere",
                f"refused=tcp://127.0.0.1:{closed}",
                f"listening=tcp://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert 'homelab_local_probe_success{probe="http",service="ollama"} 1' in text
    assert 'homelab_local_probe_success{probe="http",service="missing"} 0' in text
    assert 'homelab_local_probe_success{probe="tcp",service="refused"} 0' in text
    assert 'homelab_local_probe_success{probe="tcp",service="listening"} 1' in text
    assert "homelab_local_probe_last_run_timestamp_seconds " in text
    assert "missing: http://127.0.0.1" in result.stderr and "ollama" not in result.stderr
    assert oct(output.stat().st_mode & 0o777) == "0o644"


def test_local_probe_refuses_a_service_name_that_would_break_its_labels(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            str(FILES / "homelab-local-probe"),
            "--output",
            str(tmp_path / "x"),
            'a"b=http://127.0.0.1:1/',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "expected SERVICE=URL" in result.stderr
    assert not (tmp_path / "x").exists()


# Recorded shape of `sensors-detect --auto` (lm-sensors 3.6) on a Supermicro X10 board with a
# Xeon E5 v4 and a Nuvoton NCT6776 Super I/O: its summary and the "cut here" list.
SENSORS_DETECT = """\
Now follows a summary of the probes I have just done.

Driver `coretemp':
  * Chip `Intel digital thermal sensor' (confidence: 9)

Driver `nct6775':
  * ISA bus, address 0x290
    Chip `Nuvoton NCT6776D/F Super IO Sensors' (confidence: 9)

Driver `jc42':
  * Bus `SMBus I801 adapter at 0580'
    Busdriver `i2c_i801', I2C address 0x18
    Chip `JEDEC JC42.4 compliant temperature sensor' (confidence: 8)

To load everything that is needed, add this to /etc/modules:
#----cut here----
# Chip drivers
coretemp
nct6775
jc42
#----cut here----
If you have some drivers built into your kernel, the list above will
contain too many modules. Skip the appropriate ones!

Do you want to add these lines automatically to /etc/modules? (yes/NO)
Unloading i2c-dev... OK
"""


def test_sensors_detect_output_gives_the_chip_drivers() -> None:
    from tasks.base.sensors import drivers_from

    assert drivers_from(SENSORS_DETECT.splitlines()) == ["coretemp", "nct6775", "jc42"]
    # A machine where it finds nothing prints no list: no drivers, not an error.
    assert drivers_from(["Sorry, no sensors were detected."]) == []
    # Later runs read the deploy's own file (its header is a comment).
    recorded = ["#homelab-recorded", "# Managed by homelab-as-code", "coretemp", "nct6775"]
    assert drivers_from(recorded) == ["coretemp", "nct6775"]
    assert drivers_from([]) is None  # lm-sensors not installed yet
