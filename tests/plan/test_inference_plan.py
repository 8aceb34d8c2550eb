"""Plans of ROCm and Ollama on ageis-node's real facts (Ubuntu 24.04, R9700 passed through)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tasks.ageis_node.model_capacity import GIB
from tasks.common.datamodel.preflight import InvalidData
from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import REPO, Plan, plan
from tests.plan.machines import (
    MODEL_READY_AFTER_START,
    MODEL_READY_ON_CPU,
    OLLAMA_CPU_FALLBACK,
    OLLAMA_ON_GPU,
    ROCMINFO_NO_GPU,
    ROCMINFO_R9700,
    Machine,
)

HOST = "ageis-node"
KEYRING = "/etc/apt/keyrings/rocm.gpg"
AMD_FINGERPRINT = "CA8BB4727A47B4D09B4EE8969386B48A1A693C5C"
OLLAMA_SHA = "193c41ffee30411a76af4484dae9cdd4c2d6f8f877b7096925c36f2489af131f"


def cause(error: BaseException) -> str:
    """The deploy's own error, as pyinfra's CLI wraps it."""
    while error.__cause__ or error.__context__:
        if isinstance(error, RuntimeError):
            break
        error = error.__cause__ or error.__context__
    return str(error)


def upload(result: Plan, op_name: str) -> str:
    return next(c for c in result.op(HOST, op_name).commands if c.startswith("upload "))


@pytest.fixture
def node(plan_of) -> Plan:
    return plan_of("deploys/ageis_node.py", limit=[HOST])


def test_rocm_sources_are_amds_versioned_repositories_for_noble(node: Plan) -> None:
    assert upload(node, "AMD's ROCm 7.2.1 apt sources").splitlines()[4:] == [
        "Types: deb",
        "URIs: https://repo.radeon.com/rocm/apt/7.2.1",
        "Suites: noble",
        "Components: main",
        "Architectures: amd64",
        f"Signed-By: {KEYRING}",
        "",
        "Types: deb",
        "URIs: https://repo.radeon.com/amdgpu/30.30.1/ubuntu",
        "Suites: noble",
        "Components: main",
        "Architectures: amd64",
        f"Signed-By: {KEYRING}",
    ]


def test_amds_key_is_checked_and_its_repositories_pinned_at_600(node: Plan) -> None:
    assert node.op(HOST, "AMD's ROCm signing key").commands == [
        f"/usr/local/sbin/install-apt-key {HOST} rocm_key_url"
        f" https://repo.radeon.com/rocm/rocm.gpg.key rocm_key_fingerprint {AMD_FINGERPRINT}"
        f" {KEYRING}"
    ]
    pin = upload(node, "Pin AMD's repositories")
    assert pin.startswith("upload /etc/apt/preferences.d/rocm-pin-600\n")
    assert pin.splitlines()[-3:] == [
        "Package: *",
        "Pin: release o=repo.radeon.com",
        "Pin-Priority: 600",
    ]


def test_amdgpu_dkms_with_the_running_kernels_headers_and_rocm(node: Plan) -> None:
    (command,) = node.op(HOST, "amdgpu-dkms, kernel headers and ROCm").commands
    assert "--no-install-recommends" in command
    assert command.endswith(
        " linux-headers-6.8.0-86-generic"
        " linux-modules-extra-6.8.0-86-generic amdgpu-dkms rocm-hip-runtime rocminfo amd-smi-lib"
    )
    ops = [op.name for op in node.for_host(HOST)]

    # Key, source and pin come before the package lists are refreshed and packages installed.
    def at(part: str) -> int:
        return next(i for i, name in enumerate(ops) if part in name)

    assert (
        at("AMD's ROCm 7.2.1 apt sources")
        < at("Refresh package lists for AMD's")
        < at("amdgpu-dkms, kernel headers")
    )


def test_ollama_and_gpu_users_join_render_and_video(plan_of) -> None:
    node = plan_of(
        "deploys/ageis_node.py", limit=[HOST], override_data={"rocm_gpu_users": ["ubuntu"]}
    )
    commands = node.op(HOST, "ubuntu may use the GPU").commands
    assert any("usermod" in c and "render,video" in c and c.endswith("ubuntu") for c in commands)
    assert not any("ops may use the GPU" in op.name for op in node.for_host(HOST))
    ollama_user = " ".join(node.op(HOST, "Ollama's system user").commands)
    assert "useradd" in ollama_user and "-G render,video" in ollama_user


def test_declared_gpu_missing_from_the_bus_stops_naming_host_and_device(plan_of, fleet) -> None:
    fleet[HOST].pci_ids = ["8086:29c0", "1b36:000c"]
    with pytest.raises(Exception) as error:
        plan_of("deploys/ageis_node.py", limit=[HOST])
    text = cause(error.value)
    assert text.startswith("host 'ageis-node': its data declares the AMD GPU 'r9700'")
    assert "does not show 1002:7551" in text and "Nothing was changed" in text


def test_no_amd_gpu_declared_means_no_rocm(plan_of) -> None:
    result = plan_of(
        "deploys/ageis_node.py",
        limit=[HOST],
        override_data={"gpus": [], "guest": None, "ollama_models": []},
    )
    names = " ".join(op.name for op in result.for_host(HOST))
    assert "ROCm" not in names and "amdgpu" not in names
    # Ollama without the ROCm archive.
    (install,) = result.op(HOST, "SHA-256 verified").commands
    assert "rocm" not in install


def refused_before_planning(controller_home: Path, fleet, pve_double, **data: Any) -> str:
    """The data validation's refusal of ``data`` on the real facts: the run stops before any
    of the host's facts is read, so nothing is planned and nothing touched."""
    tables = {name: machine.facts() for name, machine in fleet.items()}
    with pytest.raises(InvalidData) as caught:
        plan(
            "deploys/ageis_node.py",
            tables,
            home=controller_home,
            secrets=PLAN_SECRETS,
            limit=[HOST],
            override_data={**pve_double.data, **data},
        )
    assert tables[HOST].asked == [], "refused only after the host's facts were read"
    return caught.value.message


def capacity_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ": capacity: " in r.getMessage()]


def test_seed_70b_offload_is_allowed_by_the_data_and_reported_with_the_split(
    plan_of, caplog
) -> None:
    # group_data/ageis_node.py allows the seed's split on purpose; inventory.py gives the VM
    # 24 GiB for it: 24 - 2.9 (PostgreSQL, 12 %) - 4 (reserve) = 17.1 GiB left for 13 GiB.
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        result = plan_of("deploys/ageis_node.py", limit=[HOST])
    (report,) = capacity_reports(caplog)
    assert report.startswith(
        "ageis-node: capacity: llama3.1:70b-instruct-q4_K_M (42.0 GiB) does not fit 29.0 GiB"
        " of usable VRAM (32.0 GiB - 3.0 GiB overhead): CPU offload (ollama_allow_cpu_offload),"
        " 29.0 GiB on the GPU (69%) and 13.0 GiB in system RAM of the 17.1 GiB the other"
        " services leave; 4.1 GiB of RAM to spare"
    )
    assert "tight" not in report
    assert result.op(HOST, "Pull the model llama3.1:70b-instruct-q4_K_M").changes


def test_over_budget_model_is_refused_before_anything_is_planned(
    controller_home: Path, fleet, pve_double
) -> None:
    big = [{"name": "llama3.1:405b", "size": "243G"}]
    message = refused_before_planning(controller_home, fleet, pve_double, ollama_models=big)
    assert "host 'ageis-node': key 'ollama_models[0]' is" in message
    assert "{'name': 'llama3.1:405b', 'size': '243.0 GiB'}" in message
    assert (
        "llama3.1:405b (243.0 GiB) is refused: split, 29.0 GiB on the GPU and 214.0 GiB in"
        " system RAM, but the other services leave 17.1 GiB of RAM: 196.9 GiB short" in message
    )
    assert "VRAM usable 29.0 GiB (32.0 GiB - 3.0 GiB ollama_gpu_overhead)" in message
    assert "RAM left 17.1 GiB (24.0 GiB - 2.9 GiB PostgreSQL" in message
    assert "Nothing was pulled or changed. Fix: a smaller quantisation" in message


def test_offload_not_allowed_refuses_a_model_that_does_not_fit_the_gpu(
    controller_home: Path, fleet, pve_double
) -> None:
    message = refused_before_planning(
        controller_home, fleet, pve_double, ollama_allow_cpu_offload=False
    )
    assert "llama3.1:70b-instruct-q4_K_M (42.0 GiB) is refused" in message
    assert "CPU offload is not allowed (ollama_allow_cpu_offload is False: the GPU is" in message
    assert "the RAM part would fit (4.1 GiB to spare)" in message
    assert "set ollama_allow_cpu_offload = True to run it split" in message


def test_zero_headroom_is_refused_not_reported_as_tight(
    controller_home: Path, fleet, pve_double
) -> None:
    # 32 GiB VRAM - 3 GiB = 29 GiB usable; RAM left 24 GiB - 12 % - 4 GiB: a model that
    # leaves exactly nothing (sizes in bytes, as Size() reads "123B").
    ram = 24 * GIB
    left = ram - ram * 12 // 100 - 4 * GIB
    exact = [{"name": "exact:fit", "size": f"{29 * GIB + left}B"}]
    message = refused_before_planning(controller_home, fleet, pve_double, ollama_models=exact)
    assert "exact:fit" in message and "no room to spare" in message


def test_a_model_that_fits_the_gpu_passes_without_offload(plan_of, caplog) -> None:
    small = [{"name": "qwen3:14b", "size": "9G"}]
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        result = plan_of(
            "deploys/ageis_node.py",
            limit=[HOST],
            override_data={"ollama_models": small, "ollama_allow_cpu_offload": False},
        )
    assert capacity_reports(caplog) == [
        "ageis-node: capacity: qwen3:14b (9.0 GiB) fits the GPU: 29.0 GiB of VRAM usable"
        " (32.0 GiB - 3.0 GiB overhead), 20.0 GiB to spare"
    ]
    assert result.op(HOST, "Pull the model qwen3:14b").changes


def test_ollama_release_is_pinned_and_verified(node: Plan) -> None:
    (install,) = node.op(HOST, "SHA-256 verified").commands
    assert install == (
        "/usr/local/sbin/install-ollama ageis-node 0.20.7"
        " https://github.com/ollama/ollama/releases/download/v0.20.7"
        " https://github.com/ollama/ollama/releases/download/v0.20.7/sha256sum.txt"
        " /usr/lib/ollama/.homelab-release"
        f" ollama-linux-amd64.tar.zst={OLLAMA_SHA} ollama-linux-amd64-rocm.tar.zst=-"
    )
    # The .tar.zst archives need zstd, installed before the installer runs.
    ops = [op.name for op in node.for_host(HOST)]
    zstd = next(i for i, name in enumerate(ops) if "zstd (Ollama's .tar.zst archives)" in name)
    assert "zstd" in " ".join(node.for_host(HOST)[zstd].commands)
    assert zstd < next(i for i, name in enumerate(ops) if "SHA-256 verified" in name)


def test_ollama_drop_in_carries_the_environment(node: Plan) -> None:
    text = upload(node, "Ollama's environment (drop-in)")
    assert text.splitlines()[4:] == [
        'Environment="OLLAMA_HOST=127.0.0.1:11434"',
        'Environment="OLLAMA_MODELS=/srv/ssd/ollama/models"',
        'Environment="OLLAMA_KEEP_ALIVE=30m"',
        'Environment="OLLAMA_NUM_PARALLEL=1"',
        'Environment="OLLAMA_MAX_LOADED_MODELS=1"',
        'Environment="OLLAMA_FLASH_ATTENTION=1"',
        'Environment="OLLAMA_CONTEXT_LENGTH=8192"',
        "",
    ]
    unit = upload(node, "Ollama's systemd unit")
    assert "RequiresMountsFor=/srv/ssd/ollama/models" in unit
    assert "Restart=on-failure" in unit and "RestartMaxDelaySec=60" in unit


def test_converged_node_plans_no_install_and_no_pull(plan_of, fleet) -> None:
    machine = fleet[HOST]
    machine.files["/usr/lib/ollama/.homelab-release"] = (
        "0.20.7 ollama-linux-amd64.tar.zst ollama-linux-amd64-rocm.tar.zst\n"
    )
    machine.ollama_models = ["llama3.1:70b-instruct-q4_K_M"]
    result = plan_of("deploys/ageis_node.py", limit=[HOST])
    names = [op.name for op in result.for_host(HOST)]
    assert result.op(HOST, "SHA-256 verified").commands == []
    assert not any("Pull the model" in name for name in names)


# --- the inference span: snapshot, change, reboot or restart, proof, then the snapshot goes ---

ROCM_PACKAGES = ("linux-headers-6.8.0-86-generic", "linux-modules-extra-6.8.0-86-generic",
                 "amdgpu-dkms", "rocm-hip-runtime", "rocminfo", "amd-smi-lib")  # fmt: skip
ROCM_SOURCES = "/etc/apt/sources.list.d/rocm.sources"
ROCM_PIN = "/etc/apt/preferences.d/rocm-pin-600"
OLLAMA_UNIT = "/etc/systemd/system/ollama.service"
OLLAMA_DROP_IN = "/etc/systemd/system/ollama.service.d/homelab.conf"
READY_UNIT = "/etc/systemd/system/ollama-model-ready.service"
READY_SCRIPT = "/usr/local/sbin/ollama-model-ready"
SEED_MODEL = "llama3.1:70b-instruct-q4_K_M"
SPAN = "a change to ROCm, Ollama or the model"


def put(machine: Machine, dest: str, content: str, mode: int = 644) -> None:
    """``dest`` on the machine as a rollout leaves it (root's, ``mode``, its parent there)."""
    machine.files[dest] = content
    machine.modes[dest] = mode
    machine.directories.add(dest.rsplit("/", 1)[0])


def with_rocm_installed(plan_of, machine: Machine) -> Machine:
    """ROCm 7.2.1 as an earlier run left it, the VM rebooted since (the driver is loaded): AMD's
    key, sources and pin, amdgpu-dkms, the kernel headers and ROCm's packages."""
    first = plan_of("deploys/ageis_node.py", limit=[HOST])
    for dest in (ROCM_SOURCES, ROCM_PIN):
        put(machine, dest, first.upload(HOST, dest))
    put(
        machine,
        "/usr/local/sbin/install-apt-key",
        (REPO / "files/install-apt-key").read_text(),
        755,
    )
    machine.keyrings[KEYRING] = [AMD_FINGERPRINT]
    machine.directories |= {"/etc/apt/keyrings", "/sys/module/amdgpu"}
    for name in ROCM_PACKAGES:
        machine.packages[name] = "1"
    machine.packages["rocm-core"] = "7.2.1.70201-81~24.04"
    return machine


def with_ollama_running(plan_of, machine: Machine) -> Machine:
    """Ollama and ollama-model-ready as an earlier run left them: this release, its unit and
    drop-in, running, the model pulled, the model-ready unit and script, run at this boot."""
    first = plan_of("deploys/ageis_node.py", limit=[HOST])
    for dest in (OLLAMA_UNIT, OLLAMA_DROP_IN, READY_UNIT):
        put(machine, dest, first.upload(HOST, dest))
    put(machine, READY_SCRIPT, (REPO / "files/ollama-model-ready").read_text(), 755)
    machine.files["/usr/lib/ollama/.homelab-release"] = (
        "0.20.7 ollama-linux-amd64.tar.zst ollama-linux-amd64-rocm.tar.zst\n"
    )
    for unit in ("ollama", "ollama-model-ready"):
        machine.running[unit] = machine.enabled[unit] = True
    machine.ollama_models = [SEED_MODEL]
    return machine


def converged(plan_of, machine: Machine) -> Machine:
    return with_ollama_running(plan_of, with_rocm_installed(plan_of, machine))


def names_of(result: Plan) -> list[str]:
    return [op.name for op in result.for_host(HOST)]


def position(names: list[str], part: str) -> int:
    return next(i for i, name in enumerate(names) if part in name)


def test_a_first_install_is_snapshotted_rebooted_proven_then_released(node: Plan) -> None:
    names = names_of(node)
    # One span: the snapshot before the first change; the reboot (amdgpu-dkms is new: its
    # driver loads at boot) after the last; the proof; the snapshot's removal after the proof.
    steps = [
        f"Snapshot VM 100 before {SPAN}",
        "amdgpu-dkms, kernel headers and ROCm",
        "Ollama 0.20.7 install (",
        f"Pull the model {SEED_MODEL}",
        "ollama-model-ready.service: ",
        "Reboot the VM: the new amdgpu driver loads at boot",
        "Wait for the boot to finish (ollama-model-ready.service loads the model)",
        "Proof: rocminfo lists gfx1201",
        "Proof: Ollama's discovery at its start names ROCm gfx1201",
        "Proof: ollama-model-ready.service succeeded since Ollama's start",
        f"Remove the snapshot taken before {SPAN}",
    ]
    found = [position(names, step) for step in steps]
    assert found == sorted(found), list(zip(steps, found, strict=True))
    # Each runs only when a trigger changed something (decided at run time).
    for step in (steps[0], *steps[5:]):
        assert node.op(HOST, step).conditional, step
    assert "( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &" in node.op(HOST, steps[5]).commands
    assert node.op(HOST, steps[6]).commands == [
        "timeout 1440 systemctl is-system-running --wait >/dev/null 2>&1; true",
        "/usr/local/sbin/wait-for-http http://127.0.0.1:11434/api/version 120 || true",
    ]
    # The boot restarts Ollama and runs the unit: no restart of their own before it.
    assert not any("Restart Ollama" in name for name in names)
    assert not any("restart" in c for c in node.op(HOST, "Ollama runs and starts").commands)
    ready = node.op(HOST, "ollama-model-ready.service runs at every start (run after the change")
    assert not any("start ollama-model-ready" in c for c in ready.commands), ready.commands


def test_a_rocm_upgrade_reboots_and_proves_before_the_snapshot_goes(plan_of, fleet, caplog) -> None:
    machine = converged(plan_of, fleet[HOST])
    machine.packages["rocm-core"] = "7.1.1.70101-38~24.04"
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        result = plan_of("deploys/ageis_node.py", limit=[HOST])
    names = names_of(result)
    assert (
        position(names, f"Snapshot VM 100 before {SPAN}")
        < position(names, "Upgrade ROCm to 7.2.1")
        < position(names, "Reboot the VM: the new amdgpu driver")
        < position(names, "Proof: rocminfo lists gfx1201")
        < position(names, f"Remove the snapshot taken before {SPAN}")
    )
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "ageis-node: ROCm 7.1.1 -> 7.2.1 (" in said
    assert "it loads at boot, so the VM reboots before the proof" in said
    # Ollama and the model-ready unit are as they were: nothing of theirs changes.
    assert result.op(HOST, "SHA-256 verified").commands == []
    assert result.op(HOST, "Ollama's environment (drop-in)").commands == []


@pytest.mark.parametrize(
    "data, trigger",
    [
        ({"ollama_context_length": 16384}, "Ollama's environment (drop-in)"),
        ({"ollama_flash_attention": False}, "Ollama's environment (drop-in)"),
        ({"ollama_model_ready_timeout": 600}, "ollama-model-ready.service: "),
        (
            {"ollama_models": [{"name": "qwen3:14b", "size": "9G"},
                               {"name": SEED_MODEL, "size": "42G"}]},
            "Pull the model qwen3:14b",
        ),
    ],
)  # fmt: skip
def test_a_model_or_parameter_change_restarts_ollama_and_proves_without_a_reboot(
    plan_of, fleet, data: dict[str, Any], trigger: str
) -> None:
    converged(plan_of, fleet[HOST])
    result = plan_of("deploys/ageis_node.py", limit=[HOST], override_data=data)
    names = names_of(result)
    assert result.op(HOST, trigger).changes
    restart = "Restart Ollama and load the model (ollama-model-ready.service)"
    steps = [
        f"Snapshot VM 100 before {SPAN}",
        trigger,
        restart,
        "Proof: rocminfo lists gfx1201",
        "Proof: Ollama's discovery at its start names ROCm gfx1201",
        "Proof: ollama-model-ready.service succeeded since Ollama's start",
        f"Remove the snapshot taken before {SPAN}",
    ]
    found = [position(names, step) for step in steps]
    assert found == sorted(found), list(zip(steps, found, strict=True))
    assert result.op(HOST, restart).conditional
    assert result.op(HOST, restart).commands == [
        "systemctl restart ollama.service",
        "/usr/local/sbin/wait-for-http http://127.0.0.1:11434/api/version 120 || true",
        "systemctl start ollama-model-ready.service || true",
    ]
    # The driver is as it was: no reboot; Ollama restarts once, in the span, after the pulls.
    assert not any("Reboot" in name for name in names)
    assert not any("restart" in c for c in result.op(HOST, "Ollama runs and starts").commands)


def test_a_converged_stack_plans_no_reboot_restart_or_proof(plan_of, fleet, caplog) -> None:
    machine = converged(plan_of, fleet[HOST])
    machine.ollama_discovery_output = OLLAMA_ON_GPU
    with caplog.at_level(logging.DEBUG, logger="pyinfra"):
        result = plan_of("deploys/ageis_node.py", limit=[HOST])
    inference = [op.name for op in result.for_host(HOST) if op.name.startswith("Inference | ")]
    assert not any(part in name for name in inference for part in ("Reboot", "Restart", "Proof:"))
    assert not any("Pull the model" in name for name in inference)
    # No trigger plans a change, so the snapshot (run-time condition) will not be taken.
    for trigger in ("AMD's ROCm signing key", "AMD's ROCm 7.2.1 apt sources", "Pin AMD's",
                    "amdgpu-dkms, kernel headers and ROCm", "SHA-256 verified",
                    "Ollama's systemd unit", "Ollama's environment (drop-in)",
                    f"Install {READY_SCRIPT}", "ollama-model-ready.service: "):  # fmt: skip
        assert result.op(HOST, trigger).commands == [], trigger
    assert result.op(HOST, f"Snapshot VM 100 before {SPAN}").conditional
    # The GPU proof is then read while planning: Ollama's discovery at its last start.
    said = " ".join(record.getMessage() for record in caplog.records)
    assert 'Ollama runs on the GPU: library=ROCm compute="gfx1201" name=ROCm0' in said


def seed_vm(pve_double) -> None:
    pve_double.double.state.guests[100] = {
        "kind": "qemu", "config": {"name": HOST, "cores": "4"}, "status": "running",
        "snapshots": {},
    }  # fmt: skip


def requests(pve_double, method: str) -> list[str]:
    return [path for m, path, _, _ in pve_double.double.requests if m == method]


def upgrade_after_reboot(plan_of, fleet) -> Machine:
    """A ROCm upgrade on a converged node, the host's facts as they read after the reboot."""
    machine = converged(plan_of, fleet[HOST])
    machine.packages["rocm-core"] = "7.1.1.70101-38~24.04"
    machine.rocminfo_output = ROCMINFO_R9700
    machine.ollama_discovery_output = OLLAMA_ON_GPU
    machine.unit_runs_output = MODEL_READY_AFTER_START
    return machine


def test_a_passing_proof_releases_the_snapshot(plan_of, fleet, pve_double, caplog) -> None:
    upgrade_after_reboot(plan_of, fleet)
    seed_vm(pve_double)
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        plan_of("deploys/ageis_node.py", limit=[HOST], run_python=True)
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "ageis-node: VM 100 snapshot 'guard-rocm-7-1-1-7-2-1-" in said
    for proof in ("rocminfo lists gfx1201", "Ollama runs on the GPU (ROCm gfx1201)",
                  "ollama-model-ready.service loaded the model since Ollama's start"):  # fmt: skip
        assert f"ageis-node: proof: {proof}" in said, proof
    assert "ROCm 7.1.1 -> 7.2.1 done; snapshot 'guard-rocm-7-1-1-7-2-1-" in said
    assert not any(p.endswith("/rollback") for p in requests(pve_double, "POST"))
    assert pve_double.double.state.guests[100]["snapshots"] == {}
    pve_double.assert_all_accepted()


@pytest.mark.parametrize(
    "fault, failed, says",
    [
        (
            {"rocminfo_output": ROCMINFO_NO_GPU},
            "Proof: rocminfo lists gfx1201",
            "rocminfo: rocminfo lists no GPU agent (exit status 1), not gfx1201: ROCk module"
            " version 6.8.0 is loaded",
        ),
        (
            {"ollama_discovery_output": OLLAMA_CPU_FALLBACK},
            "Proof: Ollama's discovery at its start names ROCm gfx1201",
            'found no ROCm device gfx1201: the log says: msg="failure during GPU discovery"'
            ' error="failed to finish discovery before timeout"',
        ),
        (
            {"unit_runs_output": MODEL_READY_ON_CPU},
            "Proof: ollama-model-ready.service succeeded since Ollama's start",
            "the model is not ready: ollama-model-ready.service is failed (result exit-code);"
            " its journal: ollama-model-ready: FAILED: llama3.1:70b-instruct-q4_K_M loaded on"
            " the CPU only",
        ),
    ],
)
def test_a_failing_proof_rolls_the_vm_back_and_says_why(
    plan_of, fleet, pve_double, caplog, fault: dict[str, Any], failed: str, says: str
) -> None:
    machine = upgrade_after_reboot(plan_of, fleet)
    for name, value in fault.items():
        setattr(machine, name, value)
    seed_vm(pve_double)
    with caplog.at_level(logging.INFO, logger="pyinfra"), pytest.raises(RuntimeError) as error:
        plan_of("deploys/ageis_node.py", limit=[HOST], run_python=True)
    assert str(error.value).startswith(
        "host 'ageis-node': the proof after ROCm 7.1.1 -> 7.2.1 failed: "
    )
    assert says in str(error.value)
    # The guard's policy (rollback): the VM back to the snapshot taken before the upgrade,
    # started again, the snapshot removed, and the log names the step that failed.
    posts = requests(pve_double, "POST")
    assert any(p.endswith("/snapshot") for p in posts) and posts[-1].endswith("/rollback")
    assert pve_double.double.state.guests[100]["snapshots"] == {}
    assert pve_double.double.state.guests[100]["status"] == "running"
    said = " ".join(record.getMessage() for record in caplog.records)
    step = repr(f"Inference | {failed}")[:-1]  # the step's name as the log quotes it
    assert f"ROCm 7.1.1 -> 7.2.1 failed in {step}" in said
    assert "VM 100 was rolled back to snapshot 'guard-rocm-7-1-1-7-2-1-" in said
    pve_double.assert_all_accepted()


def test_not_a_vm_the_change_and_its_proof_run_unguarded(plan_of, caplog) -> None:
    # A host that is no Proxmox VM (no guest data; no GPU passed through to it either).
    plain = {"guest": None, "gpus": [], "ollama_models": [{"name": "qwen3:4b", "size": "3G"}]}
    with caplog.at_level(logging.DEBUG, logger="pyinfra"):
        result = plan_of("deploys/ageis_node.py", limit=[HOST], override_data=plain)
    names = names_of(result)
    assert not any("snapshot" in name.lower() for name in names)
    assert (
        position(names, "Ollama 0.20.7 install (")
        < position(names, "Restart Ollama and load the model")
        < position(names, "Proof: ollama-model-ready.service succeeded since Ollama's start")
    )
    said = " ".join(record.getMessage() for record in caplog.records)
    assert (
        f"{SPAN}: ageis-node is not a Proxmox VM in the inventory; no snapshot: the change and"
        " its proof run unguarded" in said
    )


def test_in_a_container_without_the_card_the_lab_restarts_and_proves_what_it_can(
    plan_of, fleet
) -> None:
    # The lab's ageis-node: a container (no kernel, no reboot), the R9700 declared but absent
    # (rocm_check_pci off), Ollama a test double (ollama_gpu_proof off).
    fleet[HOST].container = "systemd-nspawn"
    lab = {"rocm_check_pci": False, "ollama_gpu_proof": False}
    result = plan_of("deploys/ageis_node.py", limit=[HOST], override_data=lab)
    names = names_of(result)
    assert not any("Reboot" in name for name in names)
    steps = [
        "amdgpu-dkms, kernel headers and ROCm",
        "Restart Ollama and load the model (ollama-model-ready.service)",
        "Proof: rocminfo is installed (no card here: rocm_check_pci is off)",
        "Proof: ollama-model-ready.service succeeded since Ollama's start",
        f"Remove the snapshot taken before {SPAN}",
    ]
    found = [position(names, step) for step in steps]
    assert found == sorted(found)
    assert not any("Proof: Ollama's discovery" in name for name in names)
    # Without the card the unit loads the model with no GPU check (--require-gpu absent).
    assert "--require-gpu" not in ready_exec(result)


def test_ollama_on_the_cpu_stops_the_run_with_the_log_and_the_fix(plan_of, fleet) -> None:
    machine = converged(plan_of, fleet[HOST])
    machine.ollama_discovery_output = OLLAMA_CPU_FALLBACK
    with pytest.raises(Exception) as error:
        plan_of("deploys/ageis_node.py", limit=[HOST])
    text = cause(error.value)
    assert text.startswith(
        "host 'ageis-node': its data declares the AMD GPU 'r9700' (AMD Radeon AI PRO R9700), but"
        " Ollama's GPU discovery since its last start found no ROCm device gfx1201:"
    )
    # What the log said: the discovery timeout and the CPU it fell back to.
    assert (
        'msg="failure during GPU discovery" error="failed to finish discovery before timeout"'
        in text
    )
    assert 'duration="30.000960852s"' in text and 'library=cpu total="15.6 GiB"' in text
    assert "ROCm 7 kernel driver" in text and "amdgpu 30.30.1" in text
    assert "reboot the VM" in text and "Nothing was changed" in text


def test_a_rocm_device_of_another_target_fails_too(plan_of, fleet) -> None:
    machine = converged(plan_of, fleet[HOST])
    machine.ollama_discovery_output = [
        line.replace("compute=gfx1201", "compute=gfx1100") for line in OLLAMA_ON_GPU
    ]
    with pytest.raises(Exception) as error:
        plan_of("deploys/ageis_node.py", limit=[HOST])
    assert 'library=ROCm compute="gfx1100"' in cause(error.value)
    assert "no ROCm device gfx1201" in cause(error.value)


def test_the_discovery_proof_is_off_only_by_the_data(plan_of, fleet) -> None:
    machine = converged(plan_of, fleet[HOST])
    machine.ollama_discovery_output = OLLAMA_CPU_FALLBACK
    off = {"ollama_gpu_proof": False}
    plan_of("deploys/ageis_node.py", limit=[HOST], override_data=off)  # converged: no verdict
    changed = plan_of("deploys/ageis_node.py", limit=[HOST],
                      override_data={**off, "ollama_context_length": 4096})  # fmt: skip
    names = names_of(changed)
    assert not any("Proof: Ollama's discovery" in name for name in names)
    assert any("Proof: ollama-model-ready.service succeeded" in name for name in names)


def test_actr_engine_unit_requires_the_integrity_check_and_waits_for_the_embedder(plan_of):
    url = "http://embedder.home.arpa:8300/v1/embeddings"
    node = plan_of(
        "deploys/ageis_node.py", limit=[HOST], override_data={"actr_engine_embedder_url": url}
    )
    unit = upload(node, "actr-engine's systemd unit")
    assert "Requires=memory-store-integrity.service" in unit
    # Ordered after the model-ready unit, not requiring it: memories work without the model.
    assert (
        "After=memory-store-integrity.service ollama.service ollama-model-ready.service"
        " network-online.target" in unit
    )
    assert "ollama-model-ready.service" not in unit.split("Requires=")[1].split("\n")[0]
    assert (
        "ExecStartPre=-/usr/local/sbin/wait-for-http http://embedder.home.arpa:8300/health 120"
        in unit
    )
    assert "ExecStart=/opt/actr-engine/venv/bin/actr-engine" in unit
    assert "LoadCredential=db-password:/etc/actr-engine/db-password" in unit
    assert "Restart=on-failure" in unit and "RestartMaxDelaySec=60" in unit
    env = upload(node, "actr-engine's environment (drop-in)")
    assert f'Environment="ACTR_EMBEDDER_URL={url}"' in env
    assert 'Environment="ACTR_DECAY=0.5"' in env and "password" not in env.lower()


def test_actr_engine_embeds_text_with_the_inventorys_embedder_by_default(plan_of) -> None:
    node = plan_of("deploys/ageis_node.py", limit=[HOST])
    env = upload(node, "actr-engine's environment (drop-in)")
    # The embedder of inventory.py by its LAN address: no DNS needed at boot.
    assert 'Environment="ACTR_EMBEDDER_URL=http://192.168.1.30:8300/v1/embeddings"' in env
    unit = upload(node, "actr-engine's systemd unit")
    # Bounded and not fatal ("-"): the engine starts without the embedder, keeping memories.
    assert "ExecStartPre=-/usr/local/sbin/wait-for-http http://192.168.1.30:8300/health 120" in unit


def test_actr_engine_text_cues_can_be_turned_off(plan_of) -> None:
    node = plan_of(
        "deploys/ageis_node.py", limit=[HOST], override_data={"actr_engine_text_cues": False}
    )
    env = upload(node, "actr-engine's environment (drop-in)")
    assert 'Environment="ACTR_EMBEDDER_URL="' in env
    assert "wait-for-http" not in upload(node, "actr-engine's systemd unit")


def test_a_users_own_engine_replaces_the_reference(plan_of) -> None:
    node = plan_of(
        "deploys/ageis_node.py",
        limit=[HOST],
        override_data={
            "actr_engine_source": {"kind": "package", "ref": "my-engine==1.2"},
            "actr_engine_command": ["my-engine", "--serve"],
            "actr_engine_environment": {"MY_ENGINE_MODE": "fast"},
        },
    )
    install = node.op(HOST, "Install actr-engine (package my-engine==1.2)").commands
    assert install[0] == (
        "umask 022 && /opt/actr-engine/venv/bin/pip install --quiet --disable-pip-version-check"
        " my-engine==1.2"
    )
    assert "ExecStart=/opt/actr-engine/venv/bin/my-engine --serve" in upload(
        node, "actr-engine's systemd unit"
    )
    assert 'Environment="MY_ENGINE_MODE=fast"' in upload(node, "actr-engine's environment")
    assert not any("actr-engine's source" in op.name for op in node.for_host(HOST))


def test_pipeline_comes_last_with_its_restart_hook(node: Plan) -> None:
    unit = upload(node, "openclaw-pipeline's systemd unit")
    assert (
        "Requires=memory-store-integrity.service ollama-model-ready.service actr-engine.service"
        in unit
    )
    assert (
        "After=memory-store-integrity.service ollama.service ollama-model-ready.service"
        " actr-engine.service network-online.target" in unit
    )
    assert (
        "ExecStartPre=/usr/local/sbin/openclaw-pipeline-recover resume /var/lib/openclaw-pipeline"
        in unit
    )
    assert "ExecStopPost=/usr/local/sbin/openclaw-pipeline-recover stopped" in unit
    assert "ExecStartPre=/usr/local/sbin/wait-for-http http://127.0.0.1:8100/health 120" in unit
    config = upload(node, "OpenClaw gateway configuration")
    assert '"baseUrl": "http://127.0.0.1:11434"' in config
    assert '"primary": "ollama/llama3.1:70b-instruct-q4_K_M"' in config
    assert "plan-test-double" not in config  # the token is a credential, not in the config


def test_nodejs_from_nodesource_pinned(node: Plan) -> None:
    source = upload(node, "NodeSource's apt source")
    assert "URIs: https://deb.nodesource.com/node_24.x" in source
    assert "Suites: nodistro" in source
    assert "Signed-By: /usr/share/keyrings/nodesource.gpg" in source
    pin = upload(node, "Pin Node.js 24.21.0")
    assert pin.splitlines()[-3:] == [
        "Package: nodejs",
        "Pin: version 24.21.0-*",
        "Pin-Priority: 1001",
    ]
    (install,) = node.op(HOST, "Install OpenClaw 2026.9.6 (npm)").commands[:1]
    assert install == (
        "umask 022 && npm install --global --prefix /opt/openclaw --omit=dev --no-fund"
        " openclaw@2026.9.6"
    )


# --- the model ready after every boot (ollama-model-ready.service) ---


def ready_exec(node: Plan) -> str:
    (line,) = [
        line for line in node.upload(HOST, READY_UNIT).splitlines() if line.startswith("ExecStart=")
    ]
    return line.removeprefix("ExecStart=")


def test_model_ready_unit_loads_the_pipelines_model_after_ollama_and_checks_the_gpu(
    plan_of, fleet
) -> None:
    # ROCm as an earlier run left it: the unit is new, so the span starts it after Ollama's
    # restart (no reboot: the driver is loaded and unchanged).
    with_rocm_installed(plan_of, fleet[HOST])
    node = plan_of("deploys/ageis_node.py", limit=[HOST])
    unit = node.upload(HOST, READY_UNIT)
    assert unit.startswith("# Managed by homelab-as-code (templates/ollama-model-ready.service.j2)")
    lines = unit.splitlines()
    for wanted in (
        "Requires=ollama.service",
        "After=ollama.service",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "DynamicUser=yes",
        # 180 s for the API, 900 s for the load (ollama_model_ready_timeout), 60 s margin.
        "TimeoutStartSec=1140",
        "WantedBy=multi-user.target",
    ):
        assert wanted in lines, wanted
    # The data's keep-alive (ollama_keep_alive); the GPU check, for the R9700 the data
    # declares; offload allowed (group_data), so a split is no warning.
    assert ready_exec(node) == (
        f"{READY_SCRIPT} --api http://127.0.0.1:11434 --model {SEED_MODEL} --keep-alive=30m"
        " --wait 180 --timeout 900 --require-gpu"
    )
    script = node.upload(HOST, READY_SCRIPT)
    assert script == (REPO / "files/ollama-model-ready").read_text()
    assert f"chmod 755 {READY_SCRIPT}" in node.op(HOST, f"Install {READY_SCRIPT}").commands
    service = node.op(HOST, "ollama-model-ready.service runs at every start (run after the change")
    assert "systemctl enable ollama-model-ready.service" in service.commands
    assert not any("start ollama-model-ready" in c for c in service.commands)
    restart = node.op(HOST, "Restart Ollama and load the model")
    assert "systemctl start ollama-model-ready.service || true" in restart.commands


def test_on_a_fresh_vm_the_unit_first_runs_at_the_reboot_after_the_driver_install(
    node: Plan,
) -> None:
    # ROCm's install (this run) builds amdgpu, which loads at boot: the span's reboot starts
    # Ollama and the unit; started before it, the model would land on the CPU.
    service = node.op(HOST, "ollama-model-ready.service runs at every start (run after the change")
    assert "systemctl enable ollama-model-ready.service" in service.commands
    assert not any("start" in c.split() for c in service.commands), service.commands
    names = names_of(node)
    assert position(names, "ollama-model-ready.service runs at every start") < position(
        names, "Reboot the VM: the new amdgpu driver loads at boot"
    )


def test_a_converged_node_without_the_driver_loaded_warns_and_does_not_start_the_unit(
    plan_of, fleet, caplog
) -> None:
    # A boot without the amdgpu module (its DKMS build missing for this kernel): started, the
    # unit would find the model on the CPU.
    machine = converged(plan_of, fleet[HOST])
    machine.directories.discard("/sys/module/amdgpu")
    machine.running["ollama-model-ready"] = False
    machine.ollama_discovery_output = OLLAMA_ON_GPU
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        node = plan_of("deploys/ageis_node.py", limit=[HOST])
    assert any(
        "ollama-model-ready.service is enabled, not started: the amdgpu driver is not loaded"
        in record.getMessage()
        for record in caplog.records
    )
    service = node.op(HOST, "ollama-model-ready.service runs at every start (no GPU driver")
    assert service.commands == []


def test_model_ready_comes_after_the_pulls_and_before_its_clients(node: Plan) -> None:
    names = [op.name for op in node.for_host(HOST)]

    def at(part: str) -> int:
        return next(i for i, name in enumerate(names) if part in name)

    assert (
        at(f"Pull the model {SEED_MODEL}")
        < at("ollama-model-ready.service: ")
        < at("ollama-model-ready.service runs at every start")
        < at("Proof: ollama-model-ready.service succeeded")
        < at("actr-engine runs and starts at boot")
        < at("openclaw-pipeline runs and starts at boot")
    )


@pytest.mark.parametrize(
    "data, flags",
    [
        # Offload not allowed: a model partly in system RAM is a warning in the journal.
        (
            {"ollama_models": [{"name": "qwen3:14b", "size": "9G"}],
             "ollama_allow_cpu_offload": False},
            "--require-gpu --whole-on-gpu",
        ),
        # The lab: the R9700 declared, the host without the card (its Ollama is a stand-in).
        ({"rocm_check_pci": False}, ""),
        # No GPU declared: the load runs, its placement is not checked.
        ({"gpus": [], "guest": None, "ollama_models": [{"name": "qwen3:4b", "size": "3G"}]}, ""),
    ],
)  # fmt: skip
def test_model_ready_checks_the_gpu_only_where_the_data_says_there_is_one(
    plan_of, data: dict[str, Any], flags: str
) -> None:
    node = plan_of("deploys/ageis_node.py", limit=[HOST], override_data=data)
    command = ready_exec(node)
    assert command.endswith("--timeout 900" + (f" {flags}" if flags else ""))
    assert "--model " in command  # the load itself runs everywhere
    # On this fresh VM the span runs the unit after the change: at the reboot where ROCm's
    # driver is installed (an AMD GPU declared), else after Ollama's restart.
    names = names_of(node)
    rebooted = any("Reboot the VM" in name for name in names)
    restarted = any("Restart Ollama and load the model" in name for name in names)
    assert (rebooted, restarted) == ((True, False) if data.get("gpus") != [] else (False, True))


def test_model_ready_loads_openclaws_model_with_the_datas_keep_alive(plan_of) -> None:
    node = plan_of(
        "deploys/ageis_node.py",
        limit=[HOST],
        override_data={
            "ollama_models": [
                {"name": "qwen3:14b", "size": "9G"},
                {"name": "qwen3:8b", "size": "5G"},
            ],
            "openclaw_model": "qwen3:8b",
            "ollama_keep_alive": "-1",
            "ollama_model_ready_timeout": 300,
        },
    )
    command = ready_exec(node)
    assert " --model qwen3:8b --keep-alive=-1 --wait 180 --timeout 300 " in command
    assert "TimeoutStartSec=540" in node.upload(HOST, READY_UNIT).splitlines()


def test_a_zero_keep_alive_is_refused_for_the_model_ready_unit(plan_of) -> None:
    with pytest.raises(Exception) as error:
        plan_of("deploys/ageis_node.py", limit=[HOST], override_data={"ollama_keep_alive": "0"})
    text = cause(error.value)
    assert text.startswith("host 'ageis-node': key 'ollama_keep_alive' is '0'; expected a")
    assert "zero would unload it at once" in text


def test_converged_node_changes_nothing_for_the_model_ready_unit(plan_of, fleet) -> None:
    fleet[HOST].directories.add("/sys/module/amdgpu")
    first = plan_of("deploys/ageis_node.py", limit=[HOST])
    task = "Inference | Ollama model ready | "
    fresh = [op for op in first.for_host(HOST) if op.name.startswith(task)]
    assert [op.changes for op in fresh] == [True, True, True]  # a first rollout writes, enables
    machine = fleet[HOST]
    machine.files[READY_UNIT] = first.upload(HOST, READY_UNIT)
    machine.files[READY_SCRIPT] = (REPO / "files/ollama-model-ready").read_text()
    machine.modes[READY_SCRIPT] = 755
    machine.directories |= {"/usr/local/sbin", "/etc/systemd/system"}
    machine.running["ollama-model-ready"] = True  # a oneshot that exited: active (exited)
    machine.enabled["ollama-model-ready"] = True
    again = plan_of("deploys/ageis_node.py", limit=[HOST])
    ready = [op for op in again.for_host(HOST) if op.name.startswith(task)]
    assert len(ready) == 3, [op.name for op in ready]
    assert [op.name for op in ready if op.changes] == []
