"""The configured model loaded after every boot, and on the GPU: ``ollama-model-ready.service``.

A oneshot unit (``RemainAfterExit``) that ``Requires=`` and comes ``After=`` ``ollama.service``
runs ``files/ollama-model-ready``: a bounded wait for Ollama's API, then the model the pipeline
uses (``openclaw_model``, else the first of ``ollama_models``) loaded with an empty generate
request and ``ollama_keep_alive``, then ``/api/ps``. Where the data declares an AMD GPU, part
of the model must sit in VRAM (``size_vram`` > 0) or the unit fails, saying so in the journal:
Ollama fell back to the CPU. Where the data also says the host lacks the card
(``rocm_check_pci = False``: the lab, whose stand-in Ollama has no GPU) the model is loaded
and its placement only reported. Where CPU offload is not allowed (``ollama_allow_cpu_offload``)
a model partly in system RAM is a warning with the split.

Boot order on ageis-node: mounts, PostgreSQL, memory-store-integrity, ollama, this unit,
actr-engine (ordered after it only: memories work without the model), openclaw-pipeline
(``Requires=`` and ``After=`` it: a pipeline without its model is no use). The unit and script
are triggers of the inference span (``inference_guard.py``): when they, Ollama or ROCm change,
the span runs the unit after the changes (a restart of Ollama, or the VM's reboot when the
amdgpu driver changed) and the proof reads its verdict; the operation here then only enables
it. A converged host changes nothing, and starts the unit only when it is not active (where
the GPU is checked, only while the amdgpu driver is loaded: started without it, the model
would land on the CPU and the unit fail).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import Directory
from pyinfra.operations import files, systemd

from tasks.ageis_node.ollama import API, full_name
from tasks.ageis_node.ollama import DATA as OLLAMA
from tasks.ageis_node.rocm import DATA as ROCM
from tasks.ageis_node.rocm import amd_gpus
from tasks.ageis_node.snapshot_guard import Span
from tasks.common.datamodel.forms import Int
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE
from tasks.common.templating import file_path, template_path

GROUPS = (AGEIS_NODE,)
UNIT_NAME = "ollama-model-ready.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
SCRIPT = "/usr/local/sbin/ollama-model-ready"
# Seconds the unit waits for Ollama's API after a start (GPU discovery included).
API_WAIT = 180
# Present while the amdgpu driver is loaded (a module or built in).
DRIVER = "/sys/module/amdgpu"

DATA = Schema(
    "model_ready",
    Key(
        "ollama_model_ready_timeout",
        Int(30, 7200),
        900,
        "Seconds ollama-model-ready gives Ollama to load the model at every start (a 42 GB"
        " model from the SSD pool takes minutes).",
        GROUPS,
    ),
)


def ready_model(ollama: Any) -> str | None:
    """The model to load: the pipeline's (``openclaw_model``, else the first of
    ``ollama_models``, as the pipeline's configuration chooses), with Ollama's tag."""
    chosen = host.data.get("openclaw_model")
    if chosen:
        return full_name(chosen)
    return full_name(ollama.ollama_models[0]["name"]) if ollama.ollama_models else None


def require_kept_loaded(keep_alive: str) -> None:
    """A keep-alive of zero unloads the model as soon as it is loaded: nothing would be ready."""
    if re.fullmatch(r"-?0+[smh]?", keep_alive):
        raise RuntimeError(
            f"host {host.name!r}: key 'ollama_keep_alive' is {keep_alive!r}; expected a"
            ' duration above zero such as "30m", or -1 (kept loaded): ollama-model-ready loads'
            " the model at every start, and zero would unload it at once"
        )


def gpu_checked() -> bool:
    """Whether the unit requires the model on the GPU: the data declares an AMD GPU and does
    not say the host lacks it (``rocm_check_pci = False``, the lab's stand-in has no GPU)."""
    return bool(amd_gpus(host.data)) and ROCM.read(host).rocm_check_pci


def driver_loaded() -> bool:
    return bool(host.get_fact(Directory, path=DRIVER))


def command(model: str | None, keep_alive: str, timeout: int, gpu: bool, whole: bool) -> str:
    words = [SCRIPT, "--api", API, *(["--model", model] if model else [])]
    # --keep-alive=VALUE: a value such as "-1" must not read as an option.
    words += [f"--keep-alive={keep_alive}", "--wait", str(API_WAIT), "--timeout", str(timeout)]
    if gpu:
        words += ["--require-gpu", *(["--whole-on-gpu"] if whole else [])]
    return " ".join(shlex.quote(word) for word in words)


def start_timeout() -> int:
    """The unit's TimeoutStartSec: the API wait, the load, and a margin for the check."""
    return API_WAIT + DATA.read(host).ollama_model_ready_timeout + 60


@deploy("Ollama model ready", data_defaults=DATA.defaults())
def model_ready(span: Span) -> None:
    settings = DATA.read(host)
    ollama = OLLAMA.read(host)
    require_kept_loaded(ollama.ollama_keep_alive)
    model = ready_model(ollama)
    gpu = gpu_checked()
    timeout = settings.ollama_model_ready_timeout
    script = files.put(
        name=f"Install {SCRIPT}", src=file_path("ollama-model-ready"), dest=SCRIPT, mode="755"
    )
    unit = files.template(
        name=f"{UNIT_NAME}: {model or 'no model'} loaded after Ollama, before its clients",
        src=template_path("ollama-model-ready.service.j2"),
        dest=UNIT,
        mode="644",
        model=model,
        require_gpu=gpu,
        command=command(
            model, ollama.ollama_keep_alive, timeout, gpu, not ollama.ollama_allow_cpu_offload
        ),
        timeout_start=start_timeout(),
    )
    span.trigger(f"{UNIT_NAME} ({model or 'no model'})", script, unit)
    if span.planned():
        # The span runs the unit after the changes (restart or reboot) and reads its verdict.
        name, running = f"{UNIT_NAME} runs at every start (run after the change, below)", None
    elif not (gpu and model) or driver_loaded():
        name, running = f"{UNIT_NAME} has loaded the model and runs at every start", True
    else:
        logger.warning(
            f"{host.name}: {UNIT_NAME} is enabled, not started: the amdgpu driver is not"
            f" loaded ({DRIVER}), and without it {model} would land on the CPU; `dkms status`"
            " must show amdgpu built for the running kernel (a new kernel without its headers"
            " has none), then reboot the VM"
        )
        name, running = f"{UNIT_NAME} runs at every start (no GPU driver loaded now)", None
    systemd.service(
        name=name,
        service=UNIT_NAME,
        running=running,
        enabled=True,
        daemon_reload=unit.will_change,
    )
