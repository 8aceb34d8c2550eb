"""The OpenClaw plugin actr-memory (files/openclaw-actr-memory) run by Node against actr-engine.

The plugin's real module is imported by a small Node driver, registered with an API TEST DOUBLE
(it only records ``registerTool``, as OpenClaw's loader calls it), and its tools are executed
against actr-engine's real HTTP handler (``files/actr-engine``) on loopback, whose store is an
in-memory TEST DOUBLE (``StoreDouble``; ``psycopg`` is a stand-in module, as in
test_actr_server.py). So the bearer token, the bodies and the answers are actr-engine's own.
Node >= 18 is needed (``make test-unit`` installs the distribution's nodejs where it is missing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "files" / "actr-engine"))
if "psycopg" not in sys.modules:
    _psycopg_double = types.ModuleType("psycopg")
    _psycopg_double.Error = type("Error", (Exception,), {})  # type: ignore[attr-defined]
    _psycopg_double.Connection = object  # type: ignore[attr-defined]
    sys.modules["psycopg"] = _psycopg_double

from actr_engine.server import Config, Engine, handler_for

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "files" / "openclaw-actr-memory"
TOKEN = "actr-T0k3n-9qWm2xLr7vB4"

# The driver: argv[2] is {"config", "ctx", "calls": [[tool, params], ...]}; it prints what the
# loader saw and each call's result or error, as JSON.
DRIVER = """
import { pathToFileURL } from "node:url";
const [pluginPath, spec] = process.argv.slice(2);
const { config, ctx, calls } = JSON.parse(spec);
const plugin = (await import(pathToFileURL(pluginPath).href)).default;
const registered = [];
const api = {
  pluginConfig: config,
  registerTool: (factory, opts) => registered.push({ factory, opts }),
};
const out = { id: plugin.id, configSchema: plugin.configSchema, registered: [], results: [] };
try {
  plugin.register(api);
} catch (error) {
  out.registerError = error.message;
  console.log(JSON.stringify(out));
  process.exit(0);
}
const tools = registered.flatMap(({ factory, opts }) => {
  out.registered.push(opts.names);
  return factory(ctx);
});
out.tools = tools.map((tool) => ({ name: tool.name, parameters: tool.parameters }));
for (const [name, params] of calls) {
  const tool = tools.find((candidate) => candidate.name === name);
  try {
    const result = await tool.execute("call-1", params);
    out.results.push({ text: result.content[0].text, details: result.details });
  } catch (error) {
    out.results.push({ error: error.message });
  }
}
console.log(JSON.stringify(out));
"""


class StoreDouble(Engine):
    """actr-engine without its database (TEST DOUBLE): memories in a list, the most recently
    stored first on retrieval, each with a made-up activation."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.stored: list[dict[str, Any]] = []
        self.retrievals: list[dict[str, Any]] = []

    def store(self, payload: dict[str, Any]) -> int:
        self.stored.append(payload)
        return len(self.stored)

    def retrieve(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.retrievals.append(payload)
        newest = list(enumerate(self.stored, start=1))[::-1][: payload["limit"]]
        chunks = [
            {"id": i, "content": p["content"], "metadata": p["metadata"], "activation": 2.0 / i}
            for i, p in newest
        ]
        return {"chunks": chunks, "elapsed_ms": 0.1}

    def record_access(self, answer: dict[str, Any]) -> None:
        pass

    def release(self) -> None:
        pass

    def healthy(self) -> bool:
        return True


@pytest.fixture
def engine() -> Iterator[tuple[str, StoreDouble]]:
    config = Config(
        listen_host="127.0.0.1", listen_port=0, database="", password=None, decay=0.5,
        mismatch_penalty=1.0, threshold=None, candidates=20, embedder_url=None,
        embedder_model="m", api_token=TOKEN, max_body=1 << 20, client_timeout=5.0,
    )  # fmt: skip
    double = StoreDouble(config)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(double))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", double
    finally:
        server.shutdown()


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """What systemd's LoadCredential= gives the gateway: a directory with the token file."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "actr-engine-token").write_text(TOKEN + "\n")
    return directory


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node (>= 18) is needed for this test: `make test-unit` installs nodejs")
    return found


def run(
    tmp_path: Path,
    config: dict[str, Any],
    calls: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    credentials: Path | None = None,
) -> dict[str, Any]:
    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER)
    spec = {
        "config": config,
        "ctx": {"agentId": "main", "sessionKey": "agent:main:main"},
        "calls": [list(call) for call in calls],
    }
    env = {"PATH": "/usr/bin:/bin"}
    if credentials is not None:
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    done = subprocess.run(
        [node(), str(driver), str(PLUGIN / "index.js"), json.dumps(spec)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def config_for(url: str, **changes: Any) -> dict[str, Any]:
    return {"baseUrl": url, "tokenCredential": "actr-engine-token", "recallLimit": 3, **changes}


def test_manifest_package_and_module_agree(tmp_path: Path) -> None:
    """OpenClaw validates the config with the manifest before loading the module, and refuses
    tools the manifest does not declare: the three files must say the same."""
    manifest = json.loads((PLUGIN / "openclaw.plugin.json").read_text())
    package = json.loads((PLUGIN / "package.json").read_text())
    loaded = run(tmp_path, config_for("http://127.0.0.1:8100"))
    assert package["openclaw"]["extensions"] == ["./index.js"] and package["type"] == "module"
    assert loaded["id"] == manifest["id"] == "actr-memory"
    assert loaded["configSchema"] == manifest["configSchema"]
    assert loaded["registered"] == [manifest["contracts"]["tools"]]
    assert [tool["name"] for tool in loaded["tools"]] == ["actr_remember", "actr_recall"]
    assert set(manifest["toolMetadata"]) == set(manifest["contracts"]["tools"])
    assert manifest["activation"] == {"onStartup": True}


def test_remember_then_recall_through_actr_engine(tmp_path: Path, engine, credentials) -> None:
    url, double = engine
    memory = "The R9700 holds 29 GiB of the 70B model; the rest is in system RAM."
    out = run(
        tmp_path,
        config_for(url),
        [
            ("actr_remember", {"content": f"  {memory}\n", "tags": ["hardware"]}),
            ("actr_remember", {"content": "Backups run nightly to the HDD pool."}),
            ("actr_recall", {"cue": "where does the model live", "limit": 50}),
        ],
        credentials,
    )
    remembered, _, recalled = out["results"]
    assert remembered == {"text": "Remembered as memory 1.", "details": {"id": 1}}
    assert double.stored[0] == {
        "content": memory,
        "metadata": {
            "source": "openclaw",
            "agentId": "main",
            "sessionKey": "agent:main:main",
            "tags": ["hardware"],
        },
    }
    # The model asked for 50; the configured recallLimit (3) caps what reaches actr-engine.
    assert double.retrievals == [{"cue": "where does the model live", "limit": 3}]
    assert recalled["text"].splitlines() == [
        "Memories, most active first:",
        "1. [memory 2, activation 1.000] Backups run nightly to the HDD pool.",
        f"2. [memory 1, activation 2.000] {memory}",
    ]
    assert [chunk["id"] for chunk in recalled["details"]["chunks"]] == [2, 1]


def test_recall_schema_caps_the_limit_at_the_configured_one(tmp_path: Path) -> None:
    out = run(tmp_path, config_for("http://127.0.0.1:8100", recallLimit=7))
    recall = next(tool for tool in out["tools"] if tool["name"] == "actr_recall")
    assert recall["parameters"]["properties"]["limit"]["maximum"] == 7
    assert recall["parameters"]["required"] == ["cue"]


def test_a_recall_with_nothing_to_return_says_so(tmp_path: Path, engine, credentials) -> None:
    url, _ = engine
    out = run(tmp_path, config_for(url), [("actr_recall", {"cue": "anything"})], credentials)
    assert out["results"] == [
        {"text": "No memory came back for that cue.", "details": {"chunks": []}}
    ]


def test_a_wrong_token_is_actr_engines_401(tmp_path: Path, engine, credentials) -> None:
    url, double = engine
    (credentials / "actr-engine-token").write_text("not-the-token\n")
    out = run(tmp_path, config_for(url), [("actr_remember", {"content": "x"})], credentials)
    assert out["results"] == [
        {"error": "actr-engine /chunks: HTTP 401: a valid bearer token is needed"}
    ]
    assert double.stored == []


def test_without_the_credential_the_tool_says_how_to_pass_it(tmp_path: Path, engine) -> None:
    url, double = engine
    out = run(tmp_path, config_for(url), [("actr_recall", {"cue": "x"})], credentials=None)
    (result,) = out["results"]
    assert "no $CREDENTIALS_DIRECTORY" in result["error"]
    assert "LoadCredential=actr-engine-token:" in result["error"]
    assert double.retrievals == []


def test_an_unreachable_engine_is_named(tmp_path: Path, credentials) -> None:
    out = run(
        tmp_path,
        config_for("http://127.0.0.1:9", timeoutMs=2000),
        [("actr_recall", {"cue": "x"})],
        credentials,
    )
    assert out["results"][0]["error"].startswith(
        "actr-engine http://127.0.0.1:9/retrieve did not answer:"
    )


@pytest.mark.parametrize(
    "call, error",
    [
        (("actr_remember", {"content": "   "}), "actr_remember: content must be a non-empty text"),
        (("actr_remember", {"content": "x" * 100_001}), "content is 100001 characters"),
        (("actr_remember", {"content": "x", "tags": [1]}), "tags must be a list of at most 16"),
        (("actr_recall", {"cue": ""}), "actr_recall: cue must be a non-empty text"),
        (("actr_recall", {"cue": "x", "limit": 0}), "limit must be a whole number of at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    tmp_path: Path, engine, credentials, call: tuple[str, dict[str, Any]], error: str
) -> None:
    url, double = engine
    out = run(tmp_path, config_for(url), [call], credentials)
    assert error in out["results"][0]["error"]
    assert double.stored == [] and double.retrievals == []


@pytest.mark.parametrize(
    "change, named",
    [
        ({"baseUrl": "ftp://127.0.0.1:8100"}, 'config.baseUrl is "ftp://127.0.0.1:8100"'),
        ({"baseUrl": "http://127.0.0.1:8100/api"}, "config.baseUrl is"),
        ({"tokenCredential": "../etc/shadow"}, 'config.tokenCredential is "../etc/shadow"'),
        ({"recallLimit": 0}, "config.recallLimit is 0; expected a whole number from 1 to 1000"),
    ],
)
def test_a_bad_config_fails_the_plugins_load_by_name(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    out = run(tmp_path, config_for("http://127.0.0.1:8100", **change))
    assert named in out["registerError"]
    assert out["registerError"].startswith('actr-memory: plugins.entries["actr-memory"].config.')
    assert out["registered"] == []
