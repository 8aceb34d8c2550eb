"""ageis-node's inference stack in the lab: Ollama from the stand-in release, for real.

The release download, SHA-256 verification (pinned and published), unpacking, user and
groups, unit, drop-in, service and the pull-when-missing run for real; the ``ollama`` binary
is the lab's TEST DOUBLE (tests/lab/inference_standin/). GPU and model checks are
hardware-only (tests/verify, marked ``hardware``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import hosts, inference_standin, labctl, pve_api_double

pytestmark = pytest.mark.lab

NODE = hosts.by_name("ageis-node")
PVE = hosts.by_name("pve")
REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
VMID = 100


def rollout() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYINFRA), "-y", "--limit", NODE.name, "tests/lab/inventory.py",
         "deploys/ageis_node.py"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
        check=False, env=os.environ.copy(),
    )  # fmt: skip


def pve_api() -> Any:
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(
        PVE.address,
        port=pve_api_double.PORT,
        user="root@pam",
        password=pve_api_double.lab_secret(),
        verify_ssl=str(pve_api_double.ca_file()),
    ).nodes(PVE.name)


@pytest.fixture
def vm_in_the_double() -> Any:
    """Lab fixture: ageis-node's VM 100 exists in the Proxmox API double (as pve would have it)."""
    api = pve_api()
    if VMID not in [vm["vmid"] for vm in api.qemu.get()]:
        upid = api.qemu.post(vmid=VMID, name=NODE.name, memory=16384, cores=4, machine="q35")
        for _ in range(50):
            if api.tasks(upid).status.get()["status"] == "stopped":
                break
            time.sleep(0.2)
    return api


def ssh(command: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        labctl.ssh_argv(NODE, command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_ollama_runs_the_verified_release_with_the_datas_environment() -> None:
    version = ssh("ollama --version")
    assert version.returncode == 0, version.stderr
    assert "0.12.11" in version.stdout and "TEST DOUBLE" in version.stdout
    marker = ssh("cat /usr/lib/ollama/.homelab-release").stdout.strip()
    # The ROCm archive too (a GPU is declared), verified against the published sha256sum.txt.
    assert marker == "0.12.11 ollama-linux-amd64.tgz ollama-linux-amd64-rocm.tgz"
    assert ssh("test -f /usr/lib/ollama/rocm/TEST-DOUBLE").returncode == 0
    env = ssh("systemctl show -p Environment --value ollama.service").stdout
    assert "OLLAMA_HOST=127.0.0.1:11434" in env
    assert "OLLAMA_MODELS=/srv/ssd/ollama/models" in env
    assert "OLLAMA_FLASH_ATTENTION=1" in env and "OLLAMA_CONTEXT_LENGTH=8192" in env
    assert ssh("systemctl is-active ollama.service").stdout.strip() == "active"
    groups = ssh("id -nG ollama").stdout.split()
    assert "render" in groups and "video" in groups


def test_rocm_comes_from_the_signed_pinned_stand_in_repository() -> None:
    sources = ssh("cat /etc/apt/sources.list.d/rocm.sources").stdout
    base = inference_standin.base_url()
    assert f"URIs: {base}/rocm/apt/7.1.1" in sources
    assert f"URIs: {base}/amdgpu/30.20.1/ubuntu" in sources
    assert "Signed-By: /etc/apt/keyrings/rocm.gpg" in sources
    policy = ssh("apt-cache policy amdgpu-dkms rocminfo").stdout
    assert policy.count(f"600 {base}/") >= 2, policy  # AMD's pin applies to both repositories
    installed = ssh(
        "dpkg-query -W -f='${Package} ${Status}\\n' amdgpu-dkms rocm-hip-runtime rocminfo"
        " amd-smi-lib linux-headers-$(uname -r)"
    ).stdout
    assert installed.count("install ok installed") == 5, installed
    # The installed packages are the lab's test doubles, named so.
    assert ssh("test -f /usr/share/homelab-standin/amdgpu-dkms").returncode == 0
    groups = ssh("id -nG ollama").stdout.split()
    assert {"render", "video"} <= set(groups)


def test_models_of_the_data_were_pulled_once() -> None:
    tags = json.loads(ssh("curl -fsS http://127.0.0.1:11434/api/tags").stdout)
    assert [m["name"] for m in tags["models"]] == ["lab-standin:tiny"]


def test_a_wrong_checksum_changes_nothing() -> None:
    base = f"{inference_standin.base_url()}/ollama/v0.12.11"
    before = ssh("sha256sum /usr/bin/ollama").stdout
    result = ssh(
        f"/usr/local/sbin/install-ollama ageis-node 0.12.11 {base} {base}/sha256sum.txt"
        " /tmp/ollama-test-marker ollama-linux-amd64.tgz=" + "0" * 64
    )
    assert result.returncode == 1
    assert "host 'ageis-node': ollama-linux-amd64.tgz of Ollama 0.12.11 has SHA-256" in (
        result.stderr
    )
    assert "expected " + "0" * 64 in result.stderr and "nothing changed" in result.stderr
    assert ssh("sha256sum /usr/bin/ollama").stdout == before
    assert ssh("test -e /tmp/ollama-test-marker").returncode == 1
    assert ssh("cat /usr/lib/ollama/.homelab-release").stdout.strip().startswith("0.12.11")


def test_an_archive_missing_from_the_published_list_is_refused() -> None:
    base = f"{inference_standin.base_url()}/ollama/v0.12.11"
    result = ssh(
        f"/usr/local/sbin/install-ollama ageis-node 0.12.11 {base} {base}/sha256sum.txt"
        " /tmp/ollama-test-marker ollama-linux-amd64.tgz=- ollama-linux-arm64.tgz=-"
    )
    assert result.returncode == 1
    assert "could not download" in result.stderr or "lists no checksum" in result.stderr
    assert ssh("test -e /tmp/ollama-test-marker").returncode == 1


def test_rocm_and_ollama_installs_run_inside_the_snapshot_guard(vm_in_the_double: Any) -> None:
    """ROCm's packages removed and Ollama's release forgotten: the next rollout reinstalls both
    inside one span of the snapshot guard: a snapshot of VM 100 (through the Proxmox API
    double), the installs, Ollama restarted and the model loaded (a container is never
    rebooted), the proof the lab can give (rocminfo installed: no card; the model-ready unit
    succeeded since Ollama's start), then the snapshot removed."""
    api = vm_in_the_double
    gone = ssh(
        "apt-get -y -qq purge rocm-core rocm-hip-runtime rocminfo amd-smi-lib >/dev/null"
        " && rm -f /usr/lib/ollama/.homelab-release"
    )
    assert gone.returncode == 0, gone.stderr
    result = rollout()
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    marks = [
        "VM 100 snapshot 'guard-rocm-7-1-1-install-",
        "ROCm | amdgpu-dkms, kernel headers and ROCm",
        "Ollama | Ollama 0.12.11 install (",
        "Restart Ollama and load the model (ollama-model-ready.service)",
        "proof: rocminfo is installed (no card here",
        "proof: ollama-model-ready.service loaded the model since Ollama's start",
        "done; snapshot 'guard-rocm-7-1-1-install-",
    ]
    found = [out.find(mark) for mark in marks]
    assert -1 not in found and found == sorted(found), (marks, found, out[-4000:])
    assert "Reboot the VM" not in out  # a container has no kernel of its own
    assert [s["name"] for s in api.qemu(VMID).snapshot.get()] == ["current"]
    assert ssh("dpkg-query -W -f='${Version}' rocm-core").stdout.startswith("7.1.1.")
    assert ssh("cat /usr/lib/ollama/.homelab-release").stdout.split()[0] == "0.12.11"
    assert ssh("systemctl is-active ollama-model-ready.service").stdout.strip() == "active"


def test_converged_node_takes_no_snapshot(vm_in_the_double: Any) -> None:
    result = rollout()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "VM 100 snapshot '" not in result.stdout
    total = next(line for line in result.stdout.splitlines() if "Grand total" in line).split()
    assert total[3] == "-" or total[3] == "0", total  # Success column: no change at all
