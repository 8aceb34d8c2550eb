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
(``Requires=`` and ``After=`` it: a pipeline without its model is no use). The rollout restarts
the unit when its unit or script changes (another model, keep-alive or check), which loads the
model now; a converged host changes nothing. Where the GPU is checked and its driver is not
loaded yet (a first ROCm install loads it at the next boot), the unit is only enabled: started
now it would find the model on the CPU; the VM's reboot, which the ROCm task asks for, runs it.
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


@deploy("Ollama model ready", data_defaults=DATA.defaults())
def model_ready() -> None:
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
        # The API wait, the load, and a margin for the check.
        timeout_start=API_WAIT + timeout + 60,
    )
    now = not (gpu and model) or driver_loaded()
    if not now:
        logger.warning(
            f"{host.name}: {UNIT_NAME} is enabled, not started: the amdgpu driver is not"
            f" loaded yet ({DRIVER}); reboot the VM (as the ROCm task says) and the unit loads"
            f" {model} on the GPU at that start"
        )
    systemd.service(
        name=f"{UNIT_NAME} has loaded the model and runs at every start"
        if now
        else f"{UNIT_NAME} runs at every start, from the next boot (no GPU driver loaded yet)",
        service=UNIT_NAME,
        running=True if now else None,
        enabled=True,
        daemon_reload=unit.will_change,
        restarted=now and (unit.will_change or script.will_change),
    )
