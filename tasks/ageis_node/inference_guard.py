"""ageis-node's inference stack under one snapshot guard that spans its proof.

``inference`` runs ROCm (``rocm.py``), Ollama (``ollama.py``) and the model-ready unit
(``model_ready.py``) inside one span of the snapshot guard (``snapshot_guard.py``). Their
risky operations are its triggers: ROCm's repository and packages (amdgpu-dkms, the kernel
headers), Ollama's release, its unit and environment (context length, flash attention,
keep-alive, parallelism, loaded models, ``ollama_environment``: what loads on the GPU and how),
each model pulled, and ollama-model-ready's unit and script (which model, keep-alive, timeout,
the GPU check). When one of them changes something, in this order:

1. the VM is snapshotted (through the Proxmox API), before the first change;
2. the changes;
3. the VM reboots when the amdgpu kernel driver changed (amdgpu-dkms installed or upgraded, or
   built for the running kernel): it loads only at boot, and the boot starts Ollama and the
   model-ready unit afresh; the rollout waits for the boot to finish. Otherwise Ollama is
   restarted and the model-ready unit started (it loads the model);
4. the proof (``gpu_proof.py``): rocminfo lists ``rocm_gfx_target``, Ollama's discovery at its
   new start names the ROCm device, ollama-model-ready succeeded since that start;
5. the snapshot is removed.

A failure in 2 to 4 rolls the VM back to the snapshot (``snapshot_guard_on_failure``), and the
error names the step and what the host said. A converged host takes no snapshot, reboots
nothing and plans none of 3 and 4: Ollama's discovery is then read while planning (``ollama.py``,
``gpu_proof_from_facts``). Where the host is not a Proxmox VM, 2 to 4 run unguarded. A
container (the lab) has no kernel of its own: it is never rebooted; Ollama is restarted instead.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import python, server

from tasks.ageis_node import gpu_proof
from tasks.ageis_node.model_ready import UNIT_NAME, model_ready
from tasks.ageis_node.model_ready import start_timeout as model_ready_timeout
from tasks.ageis_node.ollama import API, WAIT, gpu_proof_from_facts, ollama
from tasks.ageis_node.ollama import DATA as OLLAMA
from tasks.ageis_node.ollama import PORTS as OLLAMA_PORTS
from tasks.ageis_node.rocm import DATA as ROCM
from tasks.ageis_node.rocm import amd_gpus, rocm
from tasks.ageis_node.snapshot_guard import Span, open_span
from tasks.common.facts import ContainerVirt

# The ports of the tasks it runs (roles.declared_ports reads a task module's PORTS).
PORTS = OLLAMA_PORTS
TITLE = "a change to ROCm, Ollama or the model"
# Seconds pyinfra waits for the VM to answer SSH again after its reboot.
REBOOT_TIMEOUT = 900
# Seconds the boot may take besides ollama-model-ready's own start timeout.
BOOT_MARGIN = 300
# Ollama logs its GPU discovery before its API answers: the proof reads the journal after this.
# Not a verdict of its own (the proof's steps say what is wrong, with the host's words).
API_UP = f"{WAIT} {API}/api/version 120 || true"


@deploy("Inference")
def inference() -> None:
    span = open_span(TITLE)
    driver_changes = rocm(span)
    ollama(span)
    model_ready(span)
    if span.planned():
        settle(span, driver_changes)
        prove(span)
    else:
        gpu_proof_from_facts()
    span.close()


def settle(span: Span, driver_changes: bool) -> None:
    """Reboot (the amdgpu driver changed) or restart Ollama and load the model, after the
    changes and only when they changed something (``span.changed``, at run time)."""
    container = host.get_fact(ContainerVirt) not in ("none", "")
    if driver_changes and not container:
        logger.info(
            f"{host.name}: {TITLE}: the amdgpu driver changes; the VM reboots so that it loads,"
            " then the proof; the snapshot stays until the proof passes"
        )
        server.reboot(
            name="Reboot the VM: the new amdgpu driver loads at boot (Ollama and the model too)",
            reboot_timeout=REBOOT_TIMEOUT,
            _if=span.changed,
        )
        wait = model_ready_timeout() + BOOT_MARGIN
        # Done when every job of the boot is (ollama-model-ready's start with the model load);
        # "degraded" (some unit failed) is for the proof to judge, so never a failure here.
        server.shell(
            name=f"Wait for the boot to finish ({UNIT_NAME} loads the model)",
            commands=[
                f"timeout {wait} systemctl is-system-running --wait >/dev/null 2>&1; true",
                API_UP,
            ],
            _if=span.changed,
        )
        return
    if driver_changes:
        host.noop(
            f"{TITLE}: {host.name} is a container (no kernel of its own): no reboot for the"
            " amdgpu driver; Ollama is restarted instead"
        )
    # Restarting Ollama restarts the unit that Requires= it when it is active; start waits
    # for that run, or runs it when it was not active. Its verdict is the proof's to read.
    server.shell(
        name=f"Restart Ollama and load the model ({UNIT_NAME})",
        commands=[
            "systemctl restart ollama.service",
            API_UP,
            f"systemctl start {shlex.quote(UNIT_NAME)} || true",
        ],
        _if=span.changed,
    )


def prove(span: Span) -> None:
    """The checks of ``gpu_proof``, each one operation inside the span."""
    gpus = amd_gpus(host.data)
    rocm_settings = ROCM.read(host)
    target = rocm_settings.rocm_gfx_target
    card = rocm_settings.rocm_check_pci
    if gpus:
        python.call(
            name=f"Proof: rocminfo lists {target}"
            if card
            else "Proof: rocminfo is installed (no card here: rocm_check_pci is off)",
            function=gpu_proof.prove_rocm,
            span=span,
            target=target,
            card=card,
            amdgpu=rocm_settings.rocm_amdgpu_version,
            _if=span.changed,
        )
        if OLLAMA.read(host).ollama_gpu_proof:
            python.call(
                name=f"Proof: Ollama's discovery at its start names ROCm {target}",
                function=gpu_proof.prove_discovery,
                span=span,
                target=target,
                _if=span.changed,
            )
        else:
            host.noop(f"Proof: Ollama's discovery ({target}) not checked: ollama_gpu_proof is off")
    python.call(
        name=f"Proof: {UNIT_NAME} succeeded since Ollama's start (the model is loaded)",
        function=gpu_proof.prove_model_ready,
        span=span,
        _if=span.changed,
    )
