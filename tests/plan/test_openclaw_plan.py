"""Plans of openclaw-pipeline on ageis-node's real facts: the agents' memory (the actr-memory
plugin wired to actr-engine) and the restart hook on OpenClaw's own restart recovery."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasks.ageis_node.openclaw_pipeline import (
    CONFIG,
    CONFIG_DIR,
    DROP_IN,
    DROP_IN_DIR,
    PLUGIN_DIR,
    PLUGIN_FILES,
    PLUGINS_DIR,
    RECOVER,
    TOKEN_FILE,
    UNIT,
)
from tasks.common.datamodel.keys import DataError
from tests.plan.conftest import PLAN_SECRETS
from tests.plan.harness import REPO, Plan
from tests.plan.machines import Machine

HOST = "ageis-node"
SECRET = PLAN_SECRETS["actr_engine_api_token"]
SERVICE_OP = "openclaw-pipeline runs and starts at boot"


@pytest.fixture
def node(plan_of) -> Plan:
    return plan_of("deploys/ageis_node.py", limit=[HOST])


def openclaw_json(result: Plan) -> dict[str, Any]:
    return json.loads(result.upload(HOST, CONFIG))


def unit_lines(result: Plan) -> list[str]:
    return result.upload(HOST, UNIT).splitlines()


def test_openclaw_json_enables_the_memory_plugin_at_actr_engine(node: Plan) -> None:
    assert openclaw_json(node)["plugins"] == {
        "load": {"paths": ["/usr/local/lib/openclaw-plugins/actr-memory"]},
        "entries": {
            "actr-memory": {
                "enabled": True,
                "config": {
                    "baseUrl": "http://127.0.0.1:8100",
                    "tokenCredential": "actr-engine-token",
                    "recallLimit": 5,
                    "timeoutMs": 10000,
                },
            }
        },
    }
    # No allowlist: plugins.allow is exclusive and would shut out OpenClaw's bundled plugins
    # (the Ollama provider among them).
    assert "allow" not in openclaw_json(node)["plugins"]


def test_actr_engines_token_reaches_the_gateway_only_as_a_credential(node: Plan) -> None:
    lines = unit_lines(node)
    assert "LoadCredential=gateway-token:/etc/openclaw-pipeline/gateway-token" in lines
    # actr-engine's own root-only token file: one source, rotated with actr-engine.
    assert "LoadCredential=actr-engine-token:/etc/actr-engine/api-token" in lines
    # Credentials with ExecStartPost=: Type=exec, so the post step starts after the gateway's
    # process has its credentials (Type=simple races on them: "Protocol error" on a restart).
    assert "Type=exec" in lines and "Type=simple" not in lines
    assert node.upload(HOST, "/etc/actr-engine/api-token") == SECRET + "\n"
    # Not in openclaw.json (mode 644), the unit, its environment or any other command of the
    # pipeline's: only the root-only files of the two tokens hold it.
    assert SECRET not in node.upload(HOST, CONFIG)
    assert (
        "chmod 644 /etc/openclaw-pipeline/openclaw.json"
        in node.op(HOST, "OpenClaw gateway configuration").commands
    )
    pipeline_ops = [op for op in node.for_host(HOST) if op.name.startswith("openclaw-pipeline |")]
    leaking = [
        op.name
        for op in pipeline_ops
        for command in op.commands
        if SECRET in command and not command.startswith(f"upload {TOKEN_FILE}\n")
    ]
    assert pipeline_ops and leaking == []


def test_the_plugin_is_installed_root_owned_and_read_only(node: Plan) -> None:
    directory = node.op(HOST, "OpenClaw's actr-memory plugin").commands
    assert f"chmod 755 {PLUGIN_DIR}" in directory and f"chown root:root {PLUGIN_DIR}" in directory
    for name in PLUGIN_FILES:
        path = f"{PLUGIN_DIR}/{name}"
        assert node.upload(HOST, path) == (REPO / "files/openclaw-actr-memory" / name).read_text()
        commands = node.op(HOST, f"OpenClaw's actr-memory plugin: {name}").commands
        assert f"chmod 644 {path}" in commands and f"chown root:root {path}" in commands
    names = [op.name for op in node.for_host(HOST)]
    # The plugin is in place before the gateway (re)starts and loads it.
    assert names.index("openclaw-pipeline | OpenClaw's actr-memory plugin: index.js") < next(
        i for i, name in enumerate(names) if SERVICE_OP in name
    )


def test_the_manifests_config_schema_accepts_what_the_deploy_writes(node: Plan) -> None:
    """OpenClaw validates plugins.entries[id].config against the manifest before it loads the
    plugin: the deploy's config must fit (keys, types, patterns, bounds)."""
    import re

    schema = json.loads((REPO / "files/openclaw-actr-memory/openclaw.plugin.json").read_text())
    schema = schema["configSchema"]
    config = openclaw_json(node)["plugins"]["entries"]["actr-memory"]["config"]
    assert set(schema["required"]) <= set(config) <= set(schema["properties"])
    for key, value in config.items():
        rule = schema["properties"][key]
        if rule["type"] == "string":
            assert isinstance(value, str) and re.search(rule["pattern"], value), key
        else:
            assert isinstance(value, int) and rule["minimum"] <= value <= rule["maximum"], key


def test_the_restart_hook_works_on_openclaws_restart_recovery(node: Plan) -> None:
    lines = unit_lines(node)
    state = "/var/lib/openclaw-pipeline"
    assert f"ExecStartPre={RECOVER} resume {state}" in lines
    assert f"ExecStartPost={RECOVER} started {state} /opt/openclaw/bin/openclaw" in lines
    assert f"ExecStopPost={RECOVER} stopped {state}" in lines
    # What OpenClaw's restart-recovery docs ask of a hand-written unit, so a stop drains the
    # active turns instead of killing them; the start holds two waits and the discard step.
    assert "KillMode=mixed" in lines and "TimeoutStopSec=330" in lines
    assert "TimeoutStartSec=540" in lines  # 2 x 120 s waits + 300 s for the discard
    assert "ExecStartPre=/usr/local/sbin/wait-for-http http://127.0.0.1:8100/health 120" in lines
    assert node.upload(HOST, RECOVER) == (REPO / "files/openclaw-pipeline-recover").read_text()
    assert f"chmod 755 {RECOVER}" in node.op(HOST, f"Install {RECOVER}").commands
    # The old hook's directory is gone from the hook: OpenClaw never wrote there.
    assert "inflight" not in "\n".join(lines)


def test_discard_and_a_shorter_wait_reach_the_unit(plan_of) -> None:
    node = plan_of(
        "deploys/ageis_node.py",
        limit=[HOST],
        override_data={"openclaw_pipeline_on_restart": "discard", "openclaw_pipeline_wait": 30},
    )
    lines = unit_lines(node)
    assert f"ExecStartPre={RECOVER} discard /var/lib/openclaw-pipeline" in lines
    assert "TimeoutStartSec=360" in lines


def test_a_specific_actr_engine_address_is_used_by_the_plugin_and_the_wait(plan_of) -> None:
    node = plan_of(
        "deploys/ageis_node.py", limit=[HOST], override_data={"actr_engine_bind": "127.0.0.2"}
    )
    config = openclaw_json(node)["plugins"]["entries"]["actr-memory"]["config"]
    assert config["baseUrl"] == "http://127.0.0.2:8100"
    assert "ExecStartPre=/usr/local/sbin/wait-for-http http://127.0.0.2:8100/health 120" in (
        unit_lines(node)
    )


def test_the_plugin_can_be_turned_off(plan_of, fleet: dict[str, Machine]) -> None:
    fleet[HOST].directories |= {PLUGINS_DIR, PLUGIN_DIR}  # a node where it was on
    node = plan_of(
        "deploys/ageis_node.py", limit=[HOST], override_data={"openclaw_memory_plugin": False}
    )
    assert "plugins" not in openclaw_json(node)
    assert not [line for line in unit_lines(node) if "actr-engine-token" in line]
    assert node.op(HOST, "OpenClaw's actr-memory plugin (off: removed)").commands == [
        f"rm -rf {PLUGIN_DIR}"
    ]
    assert all(node.upload_or_none(HOST, f"{PLUGIN_DIR}/{name}") is None for name in PLUGIN_FILES)


def test_a_recall_limit_over_actr_engines_candidates_is_a_clear_error(plan_of) -> None:
    with pytest.raises(BaseException) as caught:
        plan_of(
            "deploys/ageis_node.py",
            limit=[HOST],
            override_data={"openclaw_memory_recall_limit": 21},
        )
    error = caught.value
    while not isinstance(error, DataError) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    assert isinstance(error, DataError), repr(caught.value)
    assert (error.host, error.key, error.given) == (HOST, "openclaw_memory_recall_limit", 21)
    assert "at most actr_engine_candidates (20)" in error.expected


def converge(node: Plan, machine: Machine) -> None:
    """Put on ``machine`` what ``node`` (the first run's plan) writes for the pipeline."""
    written = {
        CONFIG: 644,
        UNIT: 644,
        DROP_IN: 644,
        RECOVER: 755,
        TOKEN_FILE: 600,
        **{f"{PLUGIN_DIR}/{name}": 644 for name in PLUGIN_FILES},
    }
    for path, mode in written.items():
        machine.files[path] = node.upload(HOST, path)
        machine.modes[path] = mode
    machine.directories |= {
        CONFIG_DIR, DROP_IN_DIR, PLUGINS_DIR, PLUGIN_DIR, "/etc/systemd/system", "/usr/local/sbin"
    }  # fmt: skip
    machine.running["openclaw-pipeline"] = True
    machine.enabled["openclaw-pipeline"] = True


def test_a_converged_node_rewrites_nothing_and_keeps_the_gateway_running(
    node: Plan, plan_of, fleet: dict[str, Machine]
) -> None:
    converge(node, fleet[HOST])
    again = plan_of("deploys/ageis_node.py", limit=[HOST])
    for path in (CONFIG, UNIT, DROP_IN, RECOVER, *(f"{PLUGIN_DIR}/{n}" for n in PLUGIN_FILES)):
        assert again.upload_or_none(HOST, path) is None, path
    plugin_ops = [op for op in again.for_host(HOST) if "actr-memory plugin" in op.name]
    assert len(plugin_ops) == 1 + len(PLUGIN_FILES)
    assert [op.name for op in plugin_ops if op.commands] == []
    assert not [c for c in again.op(HOST, SERVICE_OP).commands if "restart" in c]


def test_a_changed_plugin_file_is_replaced_and_restarts_the_gateway(
    node: Plan, plan_of, fleet: dict[str, Machine]
) -> None:
    converge(node, fleet[HOST])
    index = f"{PLUGIN_DIR}/index.js"
    fleet[HOST].files[index] = "// an older version\n"
    again = plan_of("deploys/ageis_node.py", limit=[HOST])
    assert again.upload(HOST, index) == (REPO / "files/openclaw-actr-memory/index.js").read_text()
    assert any(
        "systemctl restart openclaw-pipeline.service" in c
        for c in again.op(HOST, SERVICE_OP).commands
    )
