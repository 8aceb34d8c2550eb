"""Ollama on ageis-node: a pinned, verified release, its service and the models of the data.

The release (``ollama_version``) is installed the documented way: ``ollama-linux-amd64.tar.zst``,
plus ``ollama-linux-amd64-rocm.tar.zst`` on a host whose data declares an AMD GPU (releases
since 0.14 publish their Linux archives as .tar.zst only; .tgz names still work for older
ones), downloaded from
``ollama_release_url``, each checked against its SHA-256 (``ollama_sha256`` pins it; an archive
not pinned there is checked against the ``sha256sum.txt`` the release publishes), the old
libraries removed and the archives unpacked into ``/usr`` (``files/install-ollama``). The
install and every upgrade run inside the snapshot guard.

Its own system user ``ollama`` (in ``render`` and ``video`` for /dev/kfd and /dev/dri), the
documented unit plus a drop-in with the environment: Ollama listens on 127.0.0.1:11434 only
(it has no authentication of its own, so only this host's clients, actr-engine and the
pipeline, reach it; the firewall opens nothing for it and node-exporter's local-probe collector
checks it on the host), and from the data the models directory on the SSD pool, keep-alive,
parallelism, flash attention and the context length.

Before any model is pulled, the capacity preflight (``tasks/ageis_node/model_capacity.py``)
compares each model's size with the usable VRAM and the RAM the host's other services leave: a
model that does not fit is refused, at data validation before anything connects, unless the
data allows CPU offload (``ollama_allow_cpu_offload``) and the rest fits the RAM; the plan
reports each placement. Models are pulled only when ``/api/tags`` does not list them, with
ollama's progress.

The release, unit, environment and every pull are triggers of the inference span
(``inference_guard.py``): a change to them snapshots the VM first, and after them Ollama is
restarted (or the VM rebooted, when ROCm's kernel driver changed too) and the change proven
(``gpu_proof.py``). The service operation here only starts and enables Ollama: the restart that
applies a new release or environment is the span's, once, after the pulls.

Where this run changes nothing of the inference stack, the GPU proof is read while planning
(``gpu_proof_from_facts``), where an AMD GPU is declared (``ollama_gpu_proof``): Ollama's
discovery at its last start (``ollama_discovery.py``, the unit's journal) must name a ROCm
device of ``rocm_gfx_target``. When it says CPU, or names no such device, the run stops naming
the host, what the log said and the documented fix (the ROCm 7 kernel driver, a reboot).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server, systemd

from tasks.ageis_node.model_capacity import capacity_problems, gib, preflight
from tasks.ageis_node.ollama_discovery import OllamaDiscovery, gpu_problem
from tasks.ageis_node.rocm import DATA as ROCM
from tasks.ageis_node.rocm import GPU_GROUPS, amd_gpus
from tasks.ageis_node.snapshot_guard import Span
from tasks.common.datamodel.forms import (
    ABSOLUTE_PATH,
    Bool,
    Field,
    Int,
    ListOf,
    MapOf,
    Optional,
    Size,
    Str,
    Struct,
)
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE
from tasks.common.ports import Port
from tasks.common.templating import file_path, template_path

GROUPS = (AGEIS_NODE,)
PORT = 11434
USER = "ollama"
HOME = "/usr/share/ollama"
MARKER = "/usr/lib/ollama/.homelab-release"
UNIT = "/etc/systemd/system/ollama.service"
DROP_IN_DIR = "/etc/systemd/system/ollama.service.d"
DROP_IN = f"{DROP_IN_DIR}/homelab.conf"
INSTALLER = "/usr/local/sbin/install-ollama"
WAIT = "/usr/local/sbin/wait-for-http"
API = f"http://127.0.0.1:{PORT}"
# Linux archives are .tar.zst from Ollama 0.14 on (the release workflow builds no .tgz).
BASE_ARCHIVE = "ollama-linux-amd64.tar.zst"
ROCM_ARCHIVE = "ollama-linux-amd64-rocm.tar.zst"

# No authentication of its own: on loopback only, for this host's clients (actr-engine, the
# pipeline); probed on the host.
PORTS = (Port(PORT, "tcp", "ollama", probe="http:/api/version", loopback=True),)
BIND = "127.0.0.1"

VERSION = Str(r"[0-9]+\.[0-9]+\.[0-9]+(-rc[0-9]+)?", what='an Ollama version such as "0.20.7"')
ARCHIVE = Str(
    r"ollama-linux-amd64(-rocm)?\.(tgz|tar\.zst)",
    what='an Ollama archive name such as "ollama-linux-amd64.tar.zst"',
)
SHA256 = Str(r"[0-9a-f]{64}", what="a SHA-256, 64 lower-case hex digits")
URL = Str(r"https?://[^\s]+", what='an http(s) URL such as "https://github.com/..."')
MODEL_NAME = Str(
    r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?",
    what='an Ollama model name such as "llama3.1:70b-instruct-q4_K_M"',
)
MODEL = Struct(
    {
        "name": Field(MODEL_NAME, doc="name as `ollama pull` takes it"),
        "size": Field(Size(), doc="size of its weights (ollama.com lists it)"),
    },
    what="a model with name, size",
)
ENV_NAME = Str(r"OLLAMA_[A-Z_]+", what='an Ollama environment variable such as "OLLAMA_DEBUG"')
ENV_VALUE = Str(r"[^\"\\\n]*", what="a value without quotes, backslashes or newlines")

DATA = Schema(
    "ollama",
    Key(
        "ollama_version",
        VERSION,
        "0.20.7",
        "Ollama release installed (pinned; >= 0.18 for the R9700: its ROCm 7.2 bundle).",
        GROUPS,
    ),
    Key(
        "ollama_release_url",
        URL,
        "https://github.com/ollama/ollama/releases/download/v{version}",
        "Where the release's archives are downloaded from ({version}: ollama_version).",
        GROUPS,
    ),
    Key(
        "ollama_checksums_url",
        URL,
        "https://github.com/ollama/ollama/releases/download/v{version}/sha256sum.txt",
        "The release's published SHA-256 list, for archives ollama_sha256 does not pin.",
        GROUPS,
    ),
    Key(
        "ollama_archive",
        ARCHIVE,
        BASE_ARCHIVE,
        "The release's main archive (CPU runtime and the ollama binary).",
        GROUPS,
    ),
    Key(
        "ollama_rocm_archive",
        ARCHIVE,
        ROCM_ARCHIVE,
        "The release's ROCm archive, installed where an AMD GPU is declared.",
        GROUPS,
    ),
    Key(
        "ollama_sha256",
        MapOf(ARCHIVE, SHA256),
        {BASE_ARCHIVE: "193c41ffee30411a76af4484dae9cdd4c2d6f8f877b7096925c36f2489af131f"},
        "Pinned SHA-256 per archive of ollama_version (others: the published list).",
        GROUPS,
    ),
    Key(
        "ollama_models_dir",
        Optional(ABSOLUTE_PATH),
        None,
        "Models directory; None: <ssd pool path>/ollama/models. Its parents must let the"
        " ollama user through (755).",
        GROUPS,
    ),
    Key("ollama_keep_alive", Str(r"-?[0-9]+[smh]?"), "30m", "OLLAMA_KEEP_ALIVE.", GROUPS),
    Key("ollama_num_parallel", Int(1, 64), 1, "OLLAMA_NUM_PARALLEL (requests per model).", GROUPS),
    Key(
        "ollama_max_loaded_models",
        Int(1, 16),
        1,
        "OLLAMA_MAX_LOADED_MODELS (models in memory at once).",
        GROUPS,
    ),
    Key("ollama_flash_attention", Bool(), True, "OLLAMA_FLASH_ATTENTION.", GROUPS),
    Key(
        "ollama_context_length",
        Int(512, 1048576),
        8192,
        "OLLAMA_CONTEXT_LENGTH (default context window, tokens).",
        GROUPS,
    ),
    Key(
        "ollama_environment",
        MapOf(ENV_NAME, ENV_VALUE),
        {},
        "Further OLLAMA_* variables for the service.",
        GROUPS,
    ),
    Key(
        "ollama_models",
        ListOf(MODEL, unique=True),
        [],
        "Models pulled when missing ({name, size}); checked against VRAM and RAM first.",
        GROUPS,
    ),
    Key(
        "ollama_gpu_overhead",
        Size(),
        "2G",
        "VRAM kept for Ollama's runtime, KV cache and graph (capacity preflight).",
        GROUPS,
    ),
    Key(
        "ollama_gpu_proof",
        Bool(),
        True,
        "Stop when Ollama's GPU discovery finds no ROCm device of rocm_gfx_target where an AMD"
        " GPU is declared (off only in the lab: its Ollama is a test double, with no GPU).",
        GROUPS,
    ),
    Key(
        "ollama_ram_reserve",
        Size(),
        "4G",
        "RAM kept for the OS, actr-engine, the pipeline and Ollama's own buffers (capacity"
        " preflight; PostgreSQL's postgresql_memory_percent is counted on top).",
        GROUPS,
    ),
    Key(
        "ollama_allow_cpu_offload",
        Bool(),
        False,
        "Allow a model that does not fit the usable VRAM to run split between GPU and system"
        " RAM (slower); False refuses it (capacity preflight).",
        GROUPS,
    ),
    checks=(capacity_problems,),
)


class OllamaModels(FactBase[list[str] | None]):
    """Names of the models the local Ollama has (``/api/tags``); None when it does not answer."""

    reads_other_hosts = False

    def command(self) -> str:
        return f"curl -fsS --max-time 5 {API}/api/tags 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str] | None:
        try:
            tags = json.loads("\n".join(output))
        except json.JSONDecodeError:
            return None
        return sorted(model.get("name", "") for model in tags.get("models") or [])


def full_name(name: str) -> str:
    """Ollama's name for a model: ``latest`` is the tag when none is given."""
    return name if ":" in name else f"{name}:latest"


def models_dir(settings: Any) -> str:
    if settings.ollama_models_dir:
        return settings.ollama_models_dir
    ssd = (host.data.get("pools") or {}).get("ssd")
    if not ssd:
        raise RuntimeError(
            f"host {host.name!r}: key 'ollama_models_dir' is None and the host has no 'ssd' "
            "pool to put the models on; expected an absolute path such as "
            '"/srv/ssd/ollama/models", or an ssd pool in the host\'s pools'
        )
    return f"{ssd['path'].rstrip('/')}/ollama/models"


def archives(settings: Any) -> list[str]:
    wanted = [settings.ollama_archive]
    if amd_gpus(host.data):
        wanted.append(settings.ollama_rocm_archive)
    return wanted


def install_command(settings: Any, wanted: list[str]) -> str:
    entries = [f"{name}={settings.ollama_sha256.get(name, '-')}" for name in wanted]
    args = [
        INSTALLER,
        host.name,
        settings.ollama_version,
        settings.ollama_release_url.format(version=settings.ollama_version),
        settings.ollama_checksums_url.format(version=settings.ollama_version),
        MARKER,
        *entries,
    ]
    return " ".join(shlex.quote(arg) for arg in args)


def capacity_preflight(settings: Any) -> list[str]:
    """Each model against the host's budget (``model_capacity``): the plan reports where it
    goes; one the host cannot hold stops the run (data validation refused it already)."""
    return preflight(host, settings)


@deploy("Ollama", data_defaults=DATA.defaults())
def ollama(span: Span) -> None:
    settings = DATA.read(host)
    directory = models_dir(settings)
    capacity_preflight(settings)
    wanted = archives(settings)

    if any(name.endswith(".zst") for name in wanted):
        apt.packages(name="zstd (Ollama's .tar.zst archives)", packages=["zstd"])
    for script, dest in (("install-ollama", INSTALLER), ("wait-for-http", WAIT)):
        files.put(name=f"Install {dest}", src=file_path(script), dest=dest, mode="755")
    server.user(
        name="Ollama's system user (render, video)",
        user=USER,
        system=True,
        home=HOME,
        create_home=True,
        shell="/bin/false",
        groups=list(GPU_GROUPS),
    )
    if not settings.ollama_models_dir:
        # Made explicitly: `mkdir -p` under the hosts' login umask (027) would leave the parent
        # root-only, and the ollama user could not reach its models (a rebuilt SSD hit this).
        files.directory(
            name=f"Ollama's directory on the SSD pool {directory.rsplit('/', 1)[0]}",
            path=directory.rsplit("/", 1)[0],
            user="root",
            group="root",
            mode="755",
        )
    files.directory(
        name=f"Ollama's models directory {directory}",
        path=directory,
        user=USER,
        group=USER,
        mode="750",
    )

    marker = host.get_fact(FileContents, path=MARKER)
    have = " ".join(marker or []).strip()
    want = " ".join([settings.ollama_version, *wanted])
    installed = have != want
    old = have.split()[0] if have else None
    change = (
        f"Ollama {old} -> {settings.ollama_version}"
        if old and old != settings.ollama_version
        else f"Ollama {settings.ollama_version} install"
    )
    command = install_command(settings, wanted)
    # A trigger of the span: the VM is snapshotted only when the install plans a change.
    span.watch(
        change,
        lambda: server.shell(
            name=f"{change} ({', '.join(wanted)}, SHA-256 verified)",
            commands=[command] if installed else [],
        ),
    )

    unit = files.template(
        name="Ollama's systemd unit",
        src=template_path("ollama.service.j2"),
        dest=UNIT,
        mode="644",
        models_dir=directory,
    )
    files.directory(name="Ollama's drop-in directory", path=DROP_IN_DIR, mode="755")
    drop_in = files.template(
        name="Ollama's environment (drop-in)",
        src=template_path("ollama-homelab.conf.j2"),
        dest=DROP_IN,
        mode="644",
        bind=BIND,
        port=PORT,
        models_dir=directory,
        keep_alive=settings.ollama_keep_alive,
        num_parallel=settings.ollama_num_parallel,
        max_loaded_models=settings.ollama_max_loaded_models,
        flash_attention=settings.ollama_flash_attention,
        context_length=settings.ollama_context_length,
        extra_environment=settings.ollama_environment,
    )
    # What loads on the GPU and how: a change is proven after the span's restart.
    span.trigger("Ollama's unit and environment", unit, drop_in)
    # Running for the pulls; the span restarts it once after them when anything changed.
    systemd.service(
        name="Ollama runs and starts at boot",
        service="ollama.service",
        running=True,
        enabled=True,
        daemon_reload=unit.will_change or drop_in.will_change,
    )

    present = host.get_fact(OllamaModels)
    for model in settings.ollama_models:
        name = full_name(model["name"])
        if present is not None and name in present:
            continue
        span.watch(
            f"the model {name}",
            lambda name=name, model=model: server.shell(
                name=f"Pull the model {name} ({gib(model['size'])})",
                commands=[f"{WAIT} {API}/api/version 120 && ollama pull {shlex.quote(name)}"],
            ),
        )


def not_on_gpu(problem: str, target: str, changed_anything: bool) -> RuntimeError:
    """The run's error: host, the declared card, what Ollama's log said, the documented fix."""
    gpu = amd_gpus(host.data)[0]
    amdgpu = ROCM.read(host).rocm_amdgpu_version
    return RuntimeError(
        f"host {host.name!r}: its data declares the AMD GPU {gpu['name']!r} ({gpu['model']}),"
        f" but Ollama's GPU discovery since its last start found no ROCm device {target}:"
        f" {problem}. Ollama runs on the CPU. Its ROCm 7 libraries need the ROCm 7 kernel driver"
        ' (Ollama\'s troubleshooting, "AMD Driver Version Mismatch"): check that amdgpu-dkms'
        f" of amdgpu {amdgpu} is installed and built for the running kernel (`dkms status`),"
        " reboot the VM so that it loads, then `rocminfo` must list"
        f" {target} (`sudo dmesg | grep -i -e amdgpu -e kfd` shows why not). Leave"
        " HSA_OVERRIDE_GFX_VERSION unset."
        + ("" if changed_anything else " Nothing was changed.")
        + " Set ollama_gpu_proof = False only on a host without the card."
    )


def gpu_proof_from_facts() -> None:
    """Where this run changes nothing of the inference stack: Ollama's discovery at its last
    start must name a ROCm device of ``rocm_gfx_target`` (see the module), read now."""
    if not amd_gpus(host.data):
        return
    target = ROCM.read(host).rocm_gfx_target
    if not DATA.read(host).ollama_gpu_proof:
        host.noop(f"Ollama's GPU proof ({target}): not checked, ollama_gpu_proof is off")
        return
    discovery = host.get_fact(OllamaDiscovery)
    device = discovery.rocm(target)
    if device is not None:
        host.noop(f"Ollama runs on the GPU: {device.summary()}")
        return
    problem = gpu_problem(discovery, target) or ""
    if discovery.reported:
        raise not_on_gpu(problem, target, changed_anything=False)
    # Running, but its journal no longer holds the start (rotated): no proof either way.
    logger.warning(
        f"{host.name}: Ollama's GPU use is not proven: {problem};"
        " `systemctl restart ollama` and roll out again to check it"
    )
