"""ageis-node's inference stack in the lab: Ollama from the stand-in release, for real.

The release download, SHA-256 verification (pinned and published), unpacking, user and
groups, unit, drop-in, service and the pull-when-missing run for real; the ``ollama`` binary
is the lab's TEST DOUBLE (tests/lab/inference_standin/). GPU and model checks are
hardware-only (tests/verify, marked ``hardware``).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.lab import hosts, inference_standin, labctl

pytestmark = pytest.mark.lab

NODE = hosts.by_name("ageis-node")


def ssh(command: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*labctl.ssh_command(NODE), command],
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
    assert marker == "0.12.11 ollama-linux-amd64.tgz"
    env = ssh("systemctl show -p Environment --value ollama.service").stdout
    assert "OLLAMA_HOST=0.0.0.0:11434" in env
    assert "OLLAMA_MODELS=/srv/ssd/ollama/models" in env
    assert "OLLAMA_FLASH_ATTENTION=1" in env and "OLLAMA_CONTEXT_LENGTH=8192" in env
    assert ssh("systemctl is-active ollama.service").stdout.strip() == "active"
    groups = ssh("id -nG ollama").stdout.split()
    assert "render" in groups and "video" in groups


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
