"""openclaw-pipeline on ageis-node: the OpenClaw gateway on the local Ollama, as a service.

Node.js: OpenClaw needs Node.js >= 24.16. Neither Ubuntu 24.04 (18) nor Debian 13 (20) ships
it, so it comes from NodeSource's signed deb repository (``node_<major>.x``, suite
``nodistro``), its key checked against ``nodejs_key_fingerprint``, the exact version pinned
(``nodejs_version``; apt pin priority 1001). OpenClaw itself: ``npm install`` of the pinned
``openclaw_version`` into ``/opt/openclaw`` (source kind ``npm``), or a release archive with
its SHA-256 (kind ``archive``: an offline mirror, the lab's stand-in), or a directory on the
host (kind ``path``).

The gateway's configuration (``openclaw.json``: the Ollama provider at the local Ollama, the
default model, gateway port 18789 with token auth, the token from secret
``openclaw_gateway_token`` as a systemd credential) is written by the deploy. The agents' memory
is actr-engine, through OpenClaw's own extension mechanism: the plugin ``actr-memory``
(``files/openclaw-actr-memory``, plain ESM, no dependency) is installed root-owned under
``/usr/local/lib/openclaw-plugins``, named in ``plugins.load.paths`` and enabled with its config
(actr-engine's URL, the name of the credential that holds its API token) in
``plugins.entries``; the token itself is actr-engine's own token file loaded as a systemd
credential, never in openclaw.json (world-readable) or a command line. The unit comes last in
ageis-node's boot order and requires ``memory-store-integrity.service``,
``ollama-model-ready.service`` (the model loaded, on the GPU where one is declared) and
``actr-engine.service``; before it starts it waits (bounded) for Ollama and actr-engine. The
restart hook ``files/openclaw-pipeline-recover`` works on what OpenClaw keeps in flight: its
own restart recovery resumes the turns a crash or power cut interrupted (``resume``), or the
hook cancels them through the gateway's RPC once it answers (``discard``), as
``openclaw_pipeline_on_restart`` says.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server, systemd

from tasks.ageis_node import actr_engine
from tasks.ageis_node.ollama import API as OLLAMA_API
from tasks.ageis_node.ollama import WAIT, full_name
from tasks.common.apt_keys import Fingerprint, verified_keyring
from tasks.common.datamodel.forms import (
    ABSOLUTE_PATH,
    Bool,
    Field,
    Int,
    ListOf,
    MapOf,
    Optional,
    Predicate,
    Str,
    Struct,
)
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE
from tasks.common.datamodel.secrets import Secret, SecretSpec, load_secrets
from tasks.common.ports import TAILNET, Port
from tasks.common.secret_files import secret_file
from tasks.common.templating import file_path, template_path

GROUPS = (AGEIS_NODE,)
PORT = 18789
USER = "openclaw"
PREFIX = "/opt/openclaw"
MARKER = f"{PREFIX}/.installed"
CONFIG_DIR = "/etc/openclaw-pipeline"
CONFIG = f"{CONFIG_DIR}/openclaw.json"
TOKEN_FILE = f"{CONFIG_DIR}/gateway-token"
STATE_DIR = "/var/lib/openclaw-pipeline"
RECOVER = "/usr/local/sbin/openclaw-pipeline-recover"
UNIT = "/etc/systemd/system/openclaw-pipeline.service"
DROP_IN_DIR = "/etc/systemd/system/openclaw-pipeline.service.d"
DROP_IN = f"{DROP_IN_DIR}/homelab.conf"
# The memory plugin: root-owned and not writable by the gateway's user (OpenClaw refuses a
# plugin path owned by another user than itself or root, or writable by all).
PLUGIN_ID = "actr-memory"
PLUGINS_DIR = "/usr/local/lib/openclaw-plugins"
PLUGIN_DIR = f"{PLUGINS_DIR}/{PLUGIN_ID}"
PLUGIN_FILES = ("package.json", "openclaw.plugin.json", "index.js")
PLUGIN_SOURCE = "openclaw-actr-memory"
ACTR_CREDENTIAL = "actr-engine-token"
# Seconds the stop may take: OpenClaw drains active turns for up to 315 s and needs 15 s more;
# its restart-recovery docs ask hand-written units for TimeoutStopSec=330 and KillMode=mixed.
STOP_TIMEOUT = 330
# The discard step's longest run after the start (files/openclaw-pipeline-recover: READY_WAIT
# for the gateway, RECOVERY_WINDOW for its re-dispatches), with a margin.
DISCARD_SECONDS = 180 + 60 + 60
NODE_KEYRING = "/usr/share/keyrings/nodesource.gpg"
NODE_SOURCES = "/etc/apt/sources.list.d/nodesource.sources"
NODE_PIN = "/etc/apt/preferences.d/nodejs.pref"
MIN_NODE = (24, 16)

PORTS = (Port(PORT, "tcp", "openclaw-gateway", probe="tcp", consumers=(TAILNET,)),)

SECRETS = (
    SecretSpec(
        "openclaw_gateway_token",
        GROUPS,
        "a long random token clients of the OpenClaw gateway authenticate with",
        "token",
    ),
)


def _node_ok(version: str) -> bool:
    major, minor, *_ = (int(part) for part in version.split("."))
    return (major, minor) >= MIN_NODE


NODE_VERSION = Predicate(
    Str(r"[0-9]+\.[0-9]+\.[0-9]+"),
    _node_ok,
    'a Node.js version >= 24.16.0 (OpenClaw needs it), such as "24.21.0"',
)
SOURCE = Struct(
    {
        "kind": Field(Str(choices=("npm", "archive", "path"))),
        "url": Field(Optional(Str(r"https?://[^\s]+")), required=False, doc="archive URL"),
        "sha256": Field(Optional(Str(r"[0-9a-f]{64}")), required=False, doc="archive SHA-256"),
        "path": Field(Optional(ABSOLUTE_PATH), required=False, doc="directory on the host"),
    },
    what="an OpenClaw source with kind (npm, archive with url and sha256, path)",
)
COMMAND = ListOf(Str(r"[^\n]+", what="a command-line word"), min_items=1)
ENV_NAME = Str(r"[A-Z][A-Z0-9_]*", what='an environment variable name such as "OPENCLAW_X"')
ENV_VALUE = Str(r"[^\"\\\n]*", what="a value without quotes, backslashes or newlines")


def _source_complete(source: dict[str, Any]) -> bool:
    if source["kind"] == "archive":
        return bool(source.get("url") and source.get("sha256"))
    if source["kind"] == "path":
        return bool(source.get("path"))
    return True


DATA = Schema(
    "openclaw_pipeline",
    Key("nodejs_version", NODE_VERSION, "24.21.0", "Node.js version pinned (NodeSource).", GROUPS),
    Key(
        "nodejs_repo_url",
        Str(r"https?://[^\s]+"),
        "https://deb.nodesource.com/node_{major}.x",
        "NodeSource's deb repository ({major}: nodejs_version's major; suite nodistro).",
        GROUPS,
    ),
    Key(
        "nodejs_key_url",
        Str(r"https?://[^\s]+"),
        "https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key",
        "Where NodeSource's signing key is downloaded from.",
        GROUPS,
    ),
    Key(
        "nodejs_key_fingerprint",
        Fingerprint(),
        "6F71F525282841EEDAF851B42F59B5F99B1BE0B4",
        "Fingerprint NodeSource's key must have.",
        GROUPS,
    ),
    Key("openclaw_version", Str(r"[0-9][0-9.]*[0-9]"), "2026.9.6", "OpenClaw release.", GROUPS),
    Key(
        "openclaw_source",
        Predicate(SOURCE, _source_complete, SOURCE.description),
        {"kind": "npm"},
        "Where OpenClaw comes from: npm (the registry), archive {url, sha256} or path.",
        GROUPS,
    ),
    Key(
        "openclaw_pipeline_command",
        COMMAND,
        [f"{PREFIX}/bin/openclaw", "gateway", "--port", str(PORT)],
        "Command of the service (the OpenClaw gateway).",
        GROUPS,
    ),
    Key(
        "openclaw_pipeline_environment",
        MapOf(ENV_NAME, ENV_VALUE),
        {},
        "Further environment of the gateway.",
        GROUPS,
    ),
    Key(
        "openclaw_model",
        Optional(Str(r"[a-z0-9][a-z0-9._/:-]*")),
        None,
        "Ollama model the gateway's agents use; None: the first of ollama_models.",
        GROUPS,
    ),
    Key(
        "openclaw_memory_plugin",
        Bool(),
        True,
        "The agents' memory is actr-engine: the actr-memory plugin (actr_remember, actr_recall).",
        GROUPS,
    ),
    Key(
        "openclaw_memory_recall_limit",
        Int(1, 1000),
        5,
        "Most memories one actr_recall returns (at most actr_engine_candidates).",
        GROUPS,
    ),
    Key(
        "openclaw_pipeline_on_restart",
        Str(choices=("resume", "discard")),
        "resume",
        "After a run that did not stop cleanly: resume its interrupted turns, or cancel them.",
        GROUPS,
    ),
    Key(
        "openclaw_pipeline_recover_command",
        Optional(Str(r"[^\n\"\\]+")),
        None,
        "Command run instead of the default resume/discard (PIPELINE_RECOVERY, _STATE_DIR).",
        GROUPS,
    ),
    Key(
        "openclaw_pipeline_wait",
        Int(1, 3600),
        120,
        "Seconds the start waits for Ollama and actr-engine.",
        GROUPS,
    ),
)


def node_major(version: str) -> str:
    return version.split(".")[0]


def actr_engine_url() -> str:
    """Where actr-engine answers on this host (its bind address, loopback for a wildcard one)."""
    bind = actr_engine.DATA.read(host).actr_engine_bind
    address = "127.0.0.1" if bind in ("0.0.0.0", "127.0.0.1") else bind
    return f"http://{address}:{actr_engine.PORT}"


def memory_plugin_config(settings: Any) -> dict[str, Any]:
    """``plugins`` of openclaw.json: the actr-memory plugin, loaded from its directory and
    enabled with actr-engine's URL and the name of its token's credential (not the token)."""
    candidates = actr_engine.DATA.read(host).actr_engine_candidates
    limit = settings.openclaw_memory_recall_limit
    if limit > candidates:
        raise DataError(
            host.name,
            "openclaw_memory_recall_limit",
            limit,
            f"at most actr_engine_candidates ({candidates}): actr-engine refuses a larger limit",
        )
    return {
        "load": {"paths": [PLUGIN_DIR]},
        "entries": {
            PLUGIN_ID: {
                "enabled": True,
                "config": {
                    "baseUrl": actr_engine_url(),
                    "tokenCredential": ACTR_CREDENTIAL,
                    "recallLimit": limit,
                    "timeoutMs": 10000,
                },
            }
        },
    }


def gateway_config(settings: Any) -> str:
    """openclaw.json: the local Ollama as the only provider, token auth on the gateway, and
    (``openclaw_memory_plugin``) actr-engine as the agents' memory."""
    model = settings.openclaw_model
    if model is None:
        models = host.data.get("ollama_models") or []
        model = full_name(models[0]["name"]) if models else None
    config: dict[str, Any] = {
        "gateway": {
            "mode": "local",
            "port": PORT,
            "bind": "lan",
            "auth": {"mode": "token"},
        },
        "models": {
            "mode": "merge",
            "providers": {
                "ollama": {
                    "baseUrl": OLLAMA_API,
                    "apiKey": "ollama-local",
                    "api": "ollama",
                    "models": [{"id": model, "name": model}] if model else [],
                }
            },
        },
    }
    if model:
        config["agents"] = {"defaults": {"model": {"primary": f"ollama/{model}"}}}
    if settings.openclaw_memory_plugin:
        config["plugins"] = memory_plugin_config(settings)
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def install_commands(settings: Any) -> list[str]:
    source, version = settings.openclaw_source, settings.openclaw_version
    marker = f"echo {shlex.quote(install_id(settings))} > {MARKER}"
    if source["kind"] == "npm":
        spec = shlex.quote(f"openclaw@{version}")
        return [
            f"umask 022 && npm install --global --prefix {PREFIX} --omit=dev --no-fund {spec}",
            marker,
        ]
    if source["kind"] == "archive":
        url, sha = shlex.quote(source["url"]), source["sha256"]
        return [
            "umask 022 && work=$(mktemp -d) && trap 'rm -rf \"$work\"' EXIT && "
            f'curl -fsSL --retry 3 -o "$work/openclaw.tgz" {url} && '
            f'echo "{sha}  $work/openclaw.tgz" | sha256sum -c --quiet - && '
            f"rm -rf {PREFIX}/lib/openclaw && mkdir -p {PREFIX}/lib/openclaw {PREFIX}/bin && "
            f'tar -C {PREFIX}/lib/openclaw --strip-components=1 -xzf "$work/openclaw.tgz" && '
            f"ln -sfn {PREFIX}/lib/openclaw/bin/openclaw {PREFIX}/bin/openclaw",
            marker,
        ]
    return [
        f"umask 022 && mkdir -p {PREFIX}/bin && ln -sfn {shlex.quote(source['path'])}/bin/openclaw"
        f" {PREFIX}/bin/openclaw",
        marker,
    ]


def install_id(settings: Any) -> str:
    source = settings.openclaw_source
    detail = source.get("sha256") or source.get("path") or "npm"
    return f"openclaw {settings.openclaw_version} {source['kind']} {detail}"


@dataclass(frozen=True)
class PipelineFiles:
    """The operations that write the service's unit, drop-in, configuration, token and
    memory plugin (any change restarts the gateway: it loads plugins when it starts)."""

    unit: OperationMeta
    drop_in: OperationMeta
    config: OperationMeta
    secret: OperationMeta
    plugin: tuple[OperationMeta, ...]


@deploy("openclaw-pipeline", data_defaults=DATA.defaults())
def openclaw_pipeline() -> None:
    settings = DATA.read(host)
    token = load_secrets()["openclaw_gateway_token"]
    _install_nodejs(settings)
    _install_openclaw(settings)
    plugin = _install_memory_plugin(settings.openclaw_memory_plugin)
    written = _configure(settings, token, plugin)
    _activate(written)


def _install_nodejs(settings: Any) -> None:
    """NodeSource's key, apt source and version pin, then Node.js ``nodejs_version``."""
    version = settings.nodejs_version
    key = verified_keyring(
        name="NodeSource's signing key (fingerprint checked)",
        url=settings.nodejs_key_url,
        url_key="nodejs_key_url",
        fingerprint=settings.nodejs_key_fingerprint,
        fingerprint_key="nodejs_key_fingerprint",
        dest=NODE_KEYRING,
    )
    sources = files.put(
        name=f"NodeSource's apt source (Node.js {node_major(version)}.x)",
        src=StringIO(
            "# Managed by homelab-as-code (tasks/ageis_node/openclaw_pipeline.py):"
            " local changes are overwritten.\nTypes: deb\n"
            f"URIs: {settings.nodejs_repo_url.format(major=node_major(version))}\n"
            f"Suites: nodistro\nComponents: main\nSigned-By: {NODE_KEYRING}\n"
        ),
        dest=NODE_SOURCES,
        mode="644",
    )
    pin = files.put(
        name=f"Pin Node.js {version}",
        src=StringIO(
            "# Managed by homelab-as-code (tasks/ageis_node/openclaw_pipeline.py):"
            " local changes are overwritten.\n"
            "# nodejs_version pins Node.js (OpenClaw needs >= 24.16).\n"
            f"Package: nodejs\nPin: version {version}-*\nPin-Priority: 1001\n"
        ),
        dest=NODE_PIN,
        mode="644",
    )
    node = (host.get_fact(DebPackages) or {}).get("nodejs") or []
    node_current = any(v.startswith(f"{version}-") for v in node)
    apt.update(
        name="Refresh package lists for NodeSource's repository",
        _if=lambda: not node_current or any(op.did_change() for op in (key, sources, pin)),
    )
    apt.packages(
        name=f"Node.js {version} (NodeSource)",
        packages=[f"nodejs={version}-*"] if not node_current else ["nodejs"],
        allow_downgrades=True,
    )


def _install_openclaw(settings: Any) -> None:
    """openclaw's system user and OpenClaw itself, installed when its marker names another
    release or source."""
    server.user(
        name="openclaw's system user",
        user=USER,
        system=True,
        home=STATE_DIR,
        shell="/usr/sbin/nologin",
    )
    have = " ".join(host.get_fact(FileContents, path=MARKER) or []).strip()
    files.directory(name="OpenClaw's prefix", path=PREFIX, mode="755")
    server.shell(
        name=f"Install OpenClaw {settings.openclaw_version} ({settings.openclaw_source['kind']})",
        commands=install_commands(settings) if have != install_id(settings) else [],
    )


def _install_memory_plugin(enabled: bool) -> tuple[OperationMeta, ...]:
    """The actr-memory plugin's files, root-owned and read-only for the gateway; gone when
    ``openclaw_memory_plugin`` is off."""
    if not enabled:
        return (
            files.directory(
                name="OpenClaw's actr-memory plugin (off: removed)", path=PLUGIN_DIR, present=False
            ),
        )
    files.directory(name="OpenClaw plugins installed by the deploy", path=PLUGINS_DIR, mode="755")
    directory = files.directory(
        name="OpenClaw's actr-memory plugin", path=PLUGIN_DIR, user="root", group="root", mode="755"
    )
    return (
        directory,
        *(
            files.put(
                name=f"OpenClaw's actr-memory plugin: {name}",
                src=file_path(f"{PLUGIN_SOURCE}/{name}"),
                dest=f"{PLUGIN_DIR}/{name}",
                user="root",
                group="root",
                mode="644",
            )
            for name in PLUGIN_FILES
        ),
    )


def _configure(settings: Any, token: Secret, plugin: tuple[OperationMeta, ...]) -> PipelineFiles:
    """The gateway's configuration and token, the helper scripts, the unit and its
    environment drop-in."""
    files.directory(name="openclaw-pipeline's configuration", path=CONFIG_DIR, mode="755")
    config = files.put(
        name="OpenClaw gateway configuration (local Ollama)",
        src=StringIO(gateway_config(settings)),
        dest=CONFIG,
        mode="644",
    )
    secret = secret_file(
        name="OpenClaw gateway token (root-only file, a systemd credential)",
        content=Secret(token.reveal() + "\n"),
        dest=TOKEN_FILE,
    )
    files.put(name=f"Install {RECOVER}", src=file_path("openclaw-pipeline-recover"),
              dest=RECOVER, mode="755")  # fmt: skip
    files.put(name=f"Install {WAIT}", src=file_path("wait-for-http"), dest=WAIT, mode="755")
    unit = files.template(
        name="openclaw-pipeline's systemd unit",
        src=template_path("openclaw-pipeline.service.j2"),
        dest=UNIT,
        mode="644",
        token_file=TOKEN_FILE,
        actr_credential=ACTR_CREDENTIAL if settings.openclaw_memory_plugin else None,
        actr_token_file=actr_engine.TOKEN_FILE,
        recover=RECOVER,
        on_restart=settings.openclaw_pipeline_on_restart,
        openclaw=f"{PREFIX}/bin/openclaw",
        wait=WAIT,
        wait_seconds=settings.openclaw_pipeline_wait,
        actr_url=actr_engine_url(),
        start_timeout=2 * settings.openclaw_pipeline_wait + DISCARD_SECONDS,
        stop_timeout=STOP_TIMEOUT,
        command=" ".join(shlex.quote(word) for word in settings.openclaw_pipeline_command),
    )
    files.directory(name="openclaw-pipeline's drop-in directory", path=DROP_IN_DIR, mode="755")
    drop_in = files.template(
        name="openclaw-pipeline's environment (drop-in)",
        src=template_path("openclaw-pipeline-homelab.conf.j2"),
        dest=DROP_IN,
        mode="644",
        environment=service_environment(settings),
    )
    return PipelineFiles(unit=unit, drop_in=drop_in, config=config, secret=secret, plugin=plugin)


def service_environment(settings: Any) -> dict[str, str]:
    """The service's environment: OpenClaw's paths, the local Ollama key and the data's own."""
    environment = {
        "OPENCLAW_CONFIG_PATH": CONFIG,
        "OPENCLAW_STATE_DIR": STATE_DIR,
        "HOME": STATE_DIR,
        "OLLAMA_API_KEY": "ollama-local",
        "NODE_ENV": "production",
        **settings.openclaw_pipeline_environment,
    }
    if settings.openclaw_pipeline_recover_command:
        environment["PIPELINE_RECOVER_COMMAND"] = settings.openclaw_pipeline_recover_command
    return environment


def _activate(written: PipelineFiles) -> None:
    """openclaw-pipeline runs and starts at boot; systemd reloads for a changed unit or drop-in
    and the service restarts for any changed file."""
    unit, drop_in = written.unit, written.drop_in
    systemd.service(
        name="openclaw-pipeline runs and starts at boot",
        service="openclaw-pipeline.service",
        running=True,
        enabled=True,
        daemon_reload=unit.will_change or drop_in.will_change,
        restarted=any(
            op.will_change
            for op in (unit, drop_in, written.config, written.secret, *written.plugin)
        ),
    )
