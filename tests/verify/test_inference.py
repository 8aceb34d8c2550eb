"""ageis-node's inference stack: ROCm, Ollama, actr-engine, openclaw-pipeline.

Runs against the lab and the real VM alike. The GPU itself (``rocminfo`` lists the declared
target, ``amd-smi`` sees the card, Ollama's discovery names it, a generation runs on it, the
pipeline's model loads into VRAM) needs the real R9700: those checks are marked ``hardware``
and skip on the lab, where the installed ROCm packages are the lab's test doubles
(``/usr/share/homelab-standin/``).
"""

from __future__ import annotations

import json
import shlex

import pytest

from tasks.ageis_node.model_capacity import fit, gib
from tasks.ageis_node.ollama import API, full_name
from tasks.ageis_node.ollama import DATA as OLLAMA
from tasks.ageis_node.ollama_discovery import command as discovery_command
from tasks.ageis_node.ollama_discovery import gpu_problem, parse
from tasks.ageis_node.rocm import DATA as ROCM
from tasks.common.datamodel.forms import Size
from tasks.common.datamodel.machine import AGEIS_NODE
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify

ROLE = AGEIS_NODE
STANDIN = "/usr/share/homelab-standin/amdgpu-dkms"


def has_amd_gpu(node: InventoryHost) -> bool:
    return any(gpu.get("vendor") == "amd" for gpu in node.data.get("gpus") or [])


def on_standin(node: InventoryHost) -> bool:
    return node.testinfra.file(STANDIN).exists


def test_rocm_source_is_pinned_at_600(host_in: InventoryHost) -> None:
    if not has_amd_gpu(host_in):
        pytest.skip(f"{host_in.name} declares no AMD GPU: no ROCm")
    pin = host_in.testinfra.file("/etc/apt/preferences.d/rocm-pin-600").content_string
    assert "Pin: release o=repo.radeon.com" in pin and "Pin-Priority: 600" in pin
    assert host_in.testinfra.package("amdgpu-dkms").is_installed


@pytest.mark.hardware
def test_rocminfo_lists_the_gpu_target(host_in: InventoryHost) -> None:
    skip_without_the_gpu(host_in)
    target = ROCM.check(host_in.name, host_in.data)["rocm_gfx_target"]
    out = host_in.testinfra.check_output("/opt/rocm/bin/rocminfo")
    assert target in out, f"{host_in.name}: rocminfo does not list {target}"


@pytest.mark.hardware
def test_amd_smi_sees_the_card(host_in: InventoryHost) -> None:
    skip_without_the_gpu(host_in)
    listing = json.loads(host_in.testinfra.check_output("/opt/rocm/bin/amd-smi list --json"))
    assert listing, f"{host_in.name}: amd-smi lists no GPU"


def size_of(value: str | int) -> int:
    """Bytes of a size as the data gives it ("42G") or as its form normalised it (an int)."""
    return value if isinstance(value, int) else Size().check(value)


def skip_without_the_gpu(node: InventoryHost) -> None:
    if not has_amd_gpu(node) or on_standin(node):
        pytest.skip("stand-in: no GPU (the installed ROCm is the lab's test double)")


@pytest.mark.hardware
def test_ollamas_discovery_names_the_rocm_device(host_in: InventoryHost) -> None:
    """The rollout's GPU proof, read again: the journal of Ollama's current run."""
    skip_without_the_gpu(host_in)
    target = ROCM.check(host_in.name, host_in.data)["rocm_gfx_target"]
    output = host_in.testinfra.check_output(discovery_command())
    problem = gpu_problem(parse(output.splitlines()), target)
    assert problem is None, f"{host_in.name}: Ollama does not run on ROCm {target}: {problem}"


@pytest.mark.hardware
def test_a_generation_runs_on_the_gpu_as_the_capacity_preflight_predicts(
    host_in: InventoryHost, record_property: pytest.RecordProperty
) -> None:
    """A short generation with the first configured model, then ``/api/ps``: its VRAM share.

    The preflight (model_capacity.fit, with the host's data) predicts the weights on the GPU.
    A model split between VRAM and RAM must have ``size_vram`` within 10 % of that prediction.
    A model that fits must be entirely on the GPU (``size_vram == size``, "100% GPU").
    ``/api/ps``'s ``size`` also counts the KV cache and graph, so it is not compared with the
    weights' size. Tokens per second (eval_count / eval_duration) are recorded and printed.
    """
    skip_without_the_gpu(host_in)
    settings = OLLAMA.check(host_in.name, host_in.data)
    if not settings["ollama_models"]:
        pytest.skip(f"{host_in.name}: no ollama_models configured")
    model = settings["ollama_models"][0]
    name = full_name(model["name"])
    request = json.dumps(
        {
            "model": name,
            "prompt": "Name one prime number.",
            "stream": False,
            "options": {"num_predict": 32},
        }
    )
    # A first load of a large model from disk takes minutes: a generous bound.
    answer = json.loads(
        host_in.testinfra.check_output(
            "curl -fsS --max-time 900 -H 'Content-Type: application/json'"
            f" -d {shlex.quote(request)} {API}/api/generate"
        )
    )
    assert answer.get("done") and answer.get("eval_count", 0) > 0, answer
    tokens_per_second = answer["eval_count"] / (answer["eval_duration"] / 1e9)
    record_property("ollama_model", name)
    record_property("ollama_tokens_per_second", round(tokens_per_second, 2))
    print(
        f"\n{host_in.name}: {name}: {answer['eval_count']} tokens at"
        f" {tokens_per_second:.1f} tokens/s (load {answer.get('load_duration', 0) / 1e9:.1f} s)"
    )

    loaded = json.loads(host_in.testinfra.check_output(f"curl -fsS --max-time 10 {API}/api/ps"))
    entry = next(
        (m for m in loaded.get("models") or [] if name in (m.get("name"), m.get("model"))), None
    )
    assert entry is not None, f"{host_in.name}: /api/ps does not list {name}: {loaded}"
    size_vram, size = entry["size_vram"], entry["size"]
    record_property("ollama_size_vram", size_vram)
    assert size_vram > 0, f"{host_in.name}: {name} is loaded on the CPU only (size_vram 0)"
    vram = sum(size_of(gpu["vram"]) for gpu in host_in.data["gpus"] if gpu["vendor"] == "amd")
    predicted = fit(
        name,
        size_of(model["size"]),
        vram=vram,
        ram=size_of(host_in.data["memory"]),
        gpu_overhead=size_of(settings["ollama_gpu_overhead"]),
        ram_reserve=size_of(settings["ollama_ram_reserve"]),
    )
    if predicted.verdict == "gpu":
        assert size_vram == size, (
            f"{host_in.name}: {name} should fit the GPU ({predicted.report()}), but only"
            f" {gib(size_vram)} of {gib(size)} is in VRAM"
        )
    else:
        assert abs(size_vram - predicted.on_gpu) <= 0.10 * predicted.on_gpu, (
            f"{host_in.name}: {name} has {gib(size_vram)} in VRAM; the preflight predicts"
            f" {gib(predicted.on_gpu)} ({predicted.report()})"
        )


@pytest.mark.parametrize(
    "unit",
    [
        "ollama.service",
        "ollama-model-ready.service",
        "actr-engine.service",
        "openclaw-pipeline.service",
    ],
)
def test_inference_services_run_and_start_at_boot(host_in: InventoryHost, unit: str) -> None:
    service = host_in.testinfra.service(unit)
    assert service.is_running and service.is_enabled


def test_the_model_was_ready_at_this_boot(host_in: InventoryHost) -> None:
    show = host_in.testinfra.check_output(
        "systemctl show ollama-model-ready.service --property=ActiveState,Result"
    )
    # systemctl prints the properties in its own order, not the order asked.
    assert sorted(show.split()) == ["ActiveState=active", "Result=success"], show


def pipeline_model(node: InventoryHost) -> str | None:
    """The model ollama-model-ready loads: openclaw_model, else the first of ollama_models."""
    chosen = node.data.get("openclaw_model")
    models = node.data.get("ollama_models") or []
    name = chosen or (models[0]["name"] if models else None)
    return full_name(name) if name else None


@pytest.mark.hardware
def test_the_pipelines_model_loads_into_vram(host_in: InventoryHost) -> None:
    model = pipeline_model(host_in)
    if not has_amd_gpu(host_in) or on_standin(host_in) or model is None:
        pytest.skip("stand-in or no model: no GPU to load it on")
    body = shlex.quote(json.dumps({"model": model, "stream": False}))
    # Loads it if the keep-alive let it go (minutes for a 42 GB model); no prompt, no output.
    host_in.testinfra.check_output(
        f"curl -fsS --max-time 900 localhost:11434/api/generate -d {body}"
    )
    ps = json.loads(host_in.testinfra.check_output("curl -fsS localhost:11434/api/ps"))
    entry = next((m for m in ps["models"] if model in (m["name"], m["model"])), None)
    assert entry is not None, f"{host_in.name}: {model} is not loaded: {ps}"
    assert entry["size_vram"] > 0, f"{host_in.name}: {model} runs on the CPU only: {entry}"


def test_ollama_and_actr_engine_answer(host_in: InventoryHost) -> None:
    version = json.loads(host_in.testinfra.check_output("curl -fsS localhost:11434/api/version"))
    assert version["version"]
    health = json.loads(host_in.testinfra.check_output("curl -fsS localhost:8100/health"))
    assert health == {"status": "ok"}


def test_credentials_are_root_only(host_in: InventoryHost) -> None:
    for path in ("/etc/actr-engine/db-password", "/etc/openclaw-pipeline/gateway-token"):
        secret = host_in.testinfra.file(path)
        assert (secret.user, secret.mode) == ("root", 0o600), path


PLUGIN = "/usr/local/lib/openclaw-plugins/actr-memory"
OPENCLAW_STANDIN = "/opt/openclaw/lib/openclaw/TEST-DOUBLE"


def test_the_memory_plugin_is_root_owned_and_enabled(host_in: InventoryHost) -> None:
    if host_in.data.get("openclaw_memory_plugin") is False:
        assert not host_in.testinfra.file(PLUGIN).exists
        return
    for path in (PLUGIN, *(f"{PLUGIN}/{name}" for name in ("index.js", "package.json"))):
        item = host_in.testinfra.file(path)
        assert (item.user, item.group) == ("root", "root"), path
        assert item.mode == (0o755 if path == PLUGIN else 0o644), path
    assert host_in.testinfra.run(f"runuser -u openclaw -- test -w {PLUGIN}").rc != 0
    config = json.loads(host_in.testinfra.file("/etc/openclaw-pipeline/openclaw.json").content)
    entry = config["plugins"]["entries"]["actr-memory"]
    assert entry["enabled"] is True and config["plugins"]["load"]["paths"] == [PLUGIN]
    assert entry["config"]["tokenCredential"] == "actr-engine-token"
    unit = host_in.testinfra.check_output("systemctl cat openclaw-pipeline.service")
    assert "LoadCredential=actr-engine-token:/etc/actr-engine/api-token" in unit


def test_the_gateway_loads_the_memory_plugin_with_its_tools(host_in: InventoryHost) -> None:
    """OpenClaw itself (not the lab's stand-in) loads the plugin and registers both tools."""
    if host_in.testinfra.file(OPENCLAW_STANDIN).exists:
        pytest.skip("the lab's OpenClaw is a stand-in: it loads no plugin code")
    if host_in.data.get("openclaw_memory_plugin") is False:
        pytest.skip("openclaw_memory_plugin is off on this host")
    environment = host_in.testinfra.check_output(
        "systemctl show openclaw-pipeline -p Environment --value"
    )
    inspect = host_in.testinfra.check_output(
        f"runuser -u openclaw -- env {environment} /opt/openclaw/bin/openclaw plugins inspect"
        " actr-memory --runtime --json"
    )
    plugin = json.loads(inspect)["plugin"]
    assert plugin["status"] == "loaded", plugin.get("error")
    assert plugin["toolNames"] == ["actr_remember", "actr_recall"]


def test_ollama_can_write_its_models_directory(host_in: InventoryHost) -> None:
    """Every parent must let the ollama user through (a root-only parent broke pulls once)."""
    environment = host_in.testinfra.check_output("systemctl show ollama -p Environment --value")
    settings = dict(item.split("=", 1) for item in environment.split() if "=" in item)
    models = settings.get("OLLAMA_MODELS")
    assert models, f"{host_in.name}: ollama.service sets no OLLAMA_MODELS ({environment!r})"
    check = host_in.testinfra.run(f"runuser -u ollama -- test -w {models}")
    assert check.rc == 0, f"{host_in.name}: the ollama user cannot write {models}"


def test_the_vm_has_the_qemu_guest_agent(host_in: InventoryHost) -> None:
    guest = host_in.data.get("guest") or {}
    assert guest.get("kind") == "qemu", f"{host_in.name}: expected a Proxmox VM, got {guest}"
    assert host_in.testinfra.package("qemu-guest-agent").is_installed


@pytest.mark.hardware
def test_the_guest_agent_answers_on_its_virtio_port(host_in: InventoryHost) -> None:
    virt = host_in.testinfra.run("systemd-detect-virt --container").stdout.strip()
    if virt not in ("", "none"):
        pytest.skip(f"{host_in.name} is a container ({virt}, the lab): no virtio agent port")
    port = "/dev/virtio-ports/org.qemu.guest_agent.0"
    assert host_in.testinfra.file(port).exists, f"{host_in.name}: no {port}: agent=1 not set?"
    assert host_in.testinfra.service("qemu-guest-agent").is_running


def test_the_hdd_share_is_mounted_with_its_tiers(host_in: InventoryHost) -> None:
    pool = (host_in.data.get("guest") or {}).get("share_pool")
    if not pool:
        pytest.skip(f"{host_in.name} has no guest.share_pool")
    mount_point = f"/srv/{pool}"
    assert host_in.testinfra.mount_point(mount_point).exists, f"{mount_point} is not mounted"
    for sub in ("archive/models", "datasets", "checkpoints", "media"):
        assert host_in.testinfra.file(f"{mount_point}/{sub}").is_directory, sub
    assert host_in.testinfra.service("homelab-tier-down.timer").is_enabled


@pytest.mark.hardware
def test_the_hdd_share_is_virtiofs_from_the_hypervisor(host_in: InventoryHost) -> None:
    pool = (host_in.data.get("guest") or {}).get("share_pool")
    virt = host_in.testinfra.run("systemd-detect-virt --container").stdout.strip()
    if not pool or virt not in ("", "none"):
        pytest.skip(f"{host_in.name}: no share_pool, or a container ({virt}, the lab: a bind)")
    mount = host_in.testinfra.mount_point(f"/srv/{pool}")
    assert mount.filesystem == "virtiofs", mount.filesystem
    assert mount.device == f"{host_in.name}-{pool}", mount.device
