"""actr-engine on ageis-node: ACT-R declarative memory over the memory store, as a service.

By default the reference engine shipped in ``files/actr-engine/`` (stdlib HTTP server +
psycopg 3): store a chunk, retrieve by cue, activation = base-level learning over the access
history (decay ``actr_engine_decay``) plus pgvector similarity; each retrieval is recorded as
an access. A user's own engine replaces it through the data: ``actr_engine_source`` (a path on
the controller, a pip requirement such as "my-engine==1.2", or a git URL with its ref), its
``actr_engine_command`` and ``actr_engine_environment``.

The engine lives in a venv (``/opt/actr-engine/venv``, with the distribution's psycopg from
the system site-packages), installed again only when the source changed. Its unit requires
``memory-store-integrity.service`` (a failed integrity check keeps it down), comes after
Ollama and ``ollama-model-ready.service`` (ordering only: memories work without the model),
waits (bounded) for the embedding server when it has one, and restarts on failure with a
growing delay.

Text is embedded by default: memories stored and cues given as text go to the inventory's
embedder (``actr_engine_embedder_url`` names another server, ``actr_engine_text_cues`` turns it
off). The embedder is not a hard dependency: the engine starts when the server's wait runs out,
a memory stored while the server is down is kept without its embedding (the embedder's vector
indexer embeds it when it is back), and only a text cue is refused (502) meanwhile.

The database password (secret ``memory_store_actr_engine_password``) and the API token its
clients must send to store and retrieve (secret ``actr_engine_api_token``) reach it as systemd
credentials, never in its environment or on a command line; a new token is rolled out by
changing the secret.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server, systemd

from tasks.ageis_node.ollama import WAIT
from tasks.common.datamodel.forms import (
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
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE, EMBEDDER, MACHINE
from tasks.common.datamodel.secrets import Secret, SecretSpec, load_secrets
from tasks.common.ports import Port
from tasks.common.secret_files import secret_file
from tasks.common.templating import REPO_ROOT, file_path, template_path
from tasks.embedder.embedding_server import PORT as EMBEDDING_PORT

GROUPS = (AGEIS_NODE,)
PORT = 8100
USER = "actr-engine"
BASE = "/opt/actr-engine"
VENV = f"{BASE}/venv"
SRC = f"{BASE}/src"
MARKER = f"{BASE}/.installed"
CONFIG_DIR = "/etc/actr-engine"
PASSWORD_FILE = f"{CONFIG_DIR}/db-password"
UNIT = "/etc/systemd/system/actr-engine.service"
DROP_IN_DIR = "/etc/systemd/system/actr-engine.service.d"
DROP_IN = f"{DROP_IN_DIR}/homelab.conf"
PASSWORD_SECRET = "memory_store_actr_engine_password"
TOKEN_SECRET = "actr_engine_api_token"
TOKEN_FILE = f"{CONFIG_DIR}/api-token"

SECRETS = (
    SecretSpec(
        TOKEN_SECRET,
        GROUPS,
        "a long random bearer token clients of actr-engine send to store and retrieve memories",
        "token",
    ),
)

PORTS = (Port(PORT, "tcp", "actr-engine", probe="http:/health", metrics_path="/metrics"),)

SOURCE = Struct(
    {
        "kind": Field(Str(choices=("path", "package", "git")), doc="where the engine comes from"),
        "ref": Field(
            Str(r"[^\s]+", what='a path, pip requirement or git URL, such as "files/actr-engine"'),
            doc="path (controller, relative to the repository), requirement, or git URL",
        ),
        "rev": Field(Optional(Str(r"[^\s@]+")), required=False, doc="git ref (kind git)"),
    },
    what="an engine source with kind, ref",
)
COMMAND = ListOf(Str(r"[^\n]+", what="a command-line word"), min_items=1)
ENV_NAME = Str(r"[A-Z][A-Z0-9_]*", what='an environment variable name such as "ACTR_DECAY"')
ENV_VALUE = Str(r"[^\"\\\n]*", what="a value without quotes, backslashes or newlines")
FLOAT = Predicate(Str(r"-?[0-9]+(\.[0-9]+)?"), lambda v: True, 'a number such as "0.5"')
EMBEDDER_URL = Str(
    r"https?://[^\s/]+(/[^\s]*)?",
    what='an http(s) URL such as "http://embedder.home.arpa:8300/v1/embeddings"',
)

DATA = Schema(
    "actr_engine",
    Key(
        "actr_engine_source",
        SOURCE,
        {"kind": "path", "ref": "files/actr-engine"},
        "Engine to install: the reference (files/actr-engine), a pip requirement or a git URL.",
        GROUPS,
    ),
    Key(
        "actr_engine_command",
        COMMAND,
        ["actr-engine"],
        "Command of the service; a first word without / is the venv's bin/ script.",
        GROUPS,
    ),
    Key(
        "actr_engine_environment",
        MapOf(ENV_NAME, ENV_VALUE),
        {},
        "Further environment of the engine (a user's engine reads its settings here).",
        GROUPS,
    ),
    Key(
        "actr_engine_bind",
        Str(r"[0-9.]+", what='an IPv4 address such as "0.0.0.0"'),
        "0.0.0.0",
        "Address the engine listens on (port 8100; the firewall admits monitoring only).",
        GROUPS,
    ),
    Key("actr_engine_decay", FLOAT, "0.5", "Base-level decay d of ACT-R.", GROUPS),
    Key(
        "actr_engine_mismatch_penalty",
        FLOAT,
        "1.0",
        "Weight P of similarity in activation (A = B + P(sim - 1)).",
        GROUPS,
    ),
    Key(
        "actr_engine_threshold",
        Optional(FLOAT),
        None,
        "Retrieval threshold tau; None returns the best chunks whatever their activation.",
        GROUPS,
    ),
    Key(
        "actr_engine_candidates",
        Int(1, 1000),
        20,
        "Nearest neighbours (pgvector) ranked by activation per retrieval.",
        GROUPS,
    ),
    Key(
        "actr_engine_ef_search",
        Int(10, 1000),
        100,
        "pgvector's HNSW search breadth for the nearest candidates (hnsw.ef_search; pgvector's"
        " own 40 misses the nearest memory among many near-equal ones); at least"
        " actr_engine_candidates.",
        GROUPS,
    ),
    Key(
        "actr_engine_embedder_url",
        Optional(EMBEDDER_URL),
        None,
        "Embedding server (OpenAI-style /v1/embeddings) for memories and cues given as text;"
        " None: the inventory's embedder (its lan_address, port 8300) when actr_engine_text_cues"
        " is on and the inventory has one.",
        GROUPS,
    ),
    Key(
        "actr_engine_text_cues",
        Bool(),
        True,
        "Embed text (memories stored and cues) through an embedding server; False: callers give"
        " embeddings and a text cue is refused.",
        GROUPS,
    ),
    Key(
        "actr_engine_embedder_wait",
        Int(1, 3600),
        120,
        "Seconds the engine's start waits for the embedding server's /health; it starts anyway"
        " after that (memories are stored, text cues wait for the server).",
        GROUPS,
    ),
)


def source_digest(source: dict[str, Any]) -> str:
    """What the install marker records: the source, and for a path the hash of its files."""
    if source["kind"] == "git":
        return f"git {source['ref']}@{source.get('rev') or 'HEAD'}"
    if source["kind"] == "package":
        return f"package {source['ref']}"
    root = local_source(source)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _shipped(p)):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"path {source['ref']} {digest.hexdigest()[:16]}"


def _shipped(path: Path) -> bool:
    return not any(part in ("__pycache__", "build") or part.endswith(".egg-info")
                   for part in path.parts) and not path.name.endswith(".pyc")  # fmt: skip


def local_source(source: dict[str, Any]) -> Path:
    root = Path(source["ref"])
    root = root if root.is_absolute() else REPO_ROOT / root
    if not (root / "pyproject.toml").is_file():
        raise RuntimeError(
            f"host {host.name!r}: key 'actr_engine_source.ref' is {source['ref']!r}; expected a"
            " directory on this controller with a pyproject.toml (a Python package)"
        )
    return root


def pip_command(source: dict[str, Any]) -> str:
    # umask 022: the service's user reads what root installs (the hosts' login umask is 027).
    pip = f"umask 022 && {VENV}/bin/pip install --quiet --disable-pip-version-check"
    if source["kind"] == "path":
        # The reference needs only psycopg, from the distribution (system site-packages).
        return f"{pip} --no-index --no-build-isolation --no-deps {SRC}"
    if source["kind"] == "package":
        return f"{pip} {shlex.quote(source['ref'])}"
    rev = f"@{source['rev']}" if source.get("rev") else ""
    return f"{pip} {shlex.quote('git+' + source['ref'].removeprefix('git+') + rev)}"


def exec_start(command: list[str]) -> str:
    first = command[0] if command[0].startswith("/") else f"{VENV}/bin/{command[0]}"
    return " ".join(shlex.quote(word) for word in [first, *command[1:]])


def health_url(embedder_url: str) -> str:
    parts = urlsplit(embedder_url)
    return f"{parts.scheme}://{parts.netloc}/health"


def embedder_url(settings: Any) -> str | None:
    """The embedding server for text: ``actr_engine_embedder_url``, else the inventory's first
    embedder on its LAN address (an address, not a name: the engine starts at boot before the
    DNS guest may answer); None when text cues are off or the inventory has no embedder."""
    if not settings.actr_engine_text_cues:
        return None
    if settings.actr_engine_embedder_url:
        return settings.actr_engine_embedder_url
    embedders = inventory.get_group(EMBEDDER, [])
    if not embedders:
        return None
    address = MACHINE.read(embedders[0]).lan_address
    return f"http://{address}:{EMBEDDING_PORT}/v1/embeddings"


def environment(settings: Any) -> dict[str, str]:
    env = {
        "ACTR_LISTEN": f"{settings.actr_engine_bind}:{PORT}",
        "ACTR_DATABASE": "host=127.0.0.1 port=5432 dbname=memory_store user=actr_engine",
        "ACTR_DECAY": settings.actr_engine_decay,
        "ACTR_MISMATCH_PENALTY": settings.actr_engine_mismatch_penalty,
        "ACTR_THRESHOLD": settings.actr_engine_threshold or "",
        "ACTR_CANDIDATES": str(settings.actr_engine_candidates),
        "ACTR_EF_SEARCH": str(max(settings.actr_engine_ef_search, settings.actr_engine_candidates)),
        "ACTR_EMBEDDER_URL": embedder_url(settings) or "",
    }
    env.update(settings.actr_engine_environment)
    return env


@deploy("actr-engine", data_defaults=DATA.defaults())
def actr_engine() -> None:
    settings = DATA.read(host)
    source = settings.actr_engine_source
    secrets = load_secrets()
    password = secrets[PASSWORD_SECRET]

    packages = ["python3-venv", "python3-psycopg", "python3-setuptools", "curl"]
    if source["kind"] == "git":
        packages.append("git")
    apt.packages(name="Python venv, psycopg 3 and tools for actr-engine", packages=packages)
    server.user(
        name="actr-engine's system user",
        user=USER,
        system=True,
        home=BASE,
        shell="/usr/sbin/nologin",
    )
    files.directory(name="actr-engine's directory", path=BASE, mode="755")
    files.put(name=f"Install {WAIT}", src=file_path("wait-for-http"), dest=WAIT, mode="755")
    if source["kind"] == "path":
        root = local_source(source)
        shipped = sorted(p for p in root.rglob("*") if p.is_file() and _shipped(p))
        for directory in sorted({str(p.parent.relative_to(root)) for p in shipped}):
            files.directory(
                name=f"actr-engine's source: {directory}/",
                path=f"{SRC}/{directory}".rstrip("/.") or SRC,
                mode="755",
            )
        for path in shipped:
            files.put(
                name=f"actr-engine's source: {path.relative_to(root)}",
                src=str(path),
                dest=f"{SRC}/{path.relative_to(root)}",
                mode="644",
            )
    # Not pip.venv: it has no umask, and under the hosts' 027 the service user could not read it.
    venv = server.shell(
        name="actr-engine's venv (system site-packages: the distribution's psycopg)",
        commands=[
            f"test -x {VENV}/bin/python || (umask 022 && python3 -m venv --system-site-packages"
            f" {VENV})"
        ]
        if not host.get_fact(FileContents, path=f"{VENV}/pyvenv.cfg")
        else [],
    )
    digest = source_digest(source)
    have = " ".join(host.get_fact(FileContents, path=MARKER) or []).strip()
    install = server.shell(
        name=f"Install actr-engine ({digest})",
        commands=[
            pip_command(source),
            f"echo {shlex.quote(digest)} > {MARKER}",
        ]
        if have != digest or venv.will_change
        else [],
    )

    files.directory(name="actr-engine's configuration", path=CONFIG_DIR, mode="750")
    secret = secret_file(
        name="actr-engine's database password (root-only file, a systemd credential)",
        content=Secret(password.reveal() + "\n"),
        dest=PASSWORD_FILE,
    )
    token = secret_file(
        name="actr-engine's API token (root-only file, a systemd credential)",
        content=Secret(secrets[TOKEN_SECRET].reveal() + "\n"),
        dest=TOKEN_FILE,
    )
    embedder = embedder_url(settings)
    unit = files.template(
        name="actr-engine's systemd unit",
        src=template_path("actr-engine.service.j2"),
        dest=UNIT,
        mode="644",
        password_file=PASSWORD_FILE,
        token_file=TOKEN_FILE,
        wait=WAIT,
        embedder_health=health_url(embedder) if embedder else None,
        embedder_wait=settings.actr_engine_embedder_wait,
        command=exec_start(settings.actr_engine_command),
    )
    files.directory(name="actr-engine's drop-in directory", path=DROP_IN_DIR, mode="755")
    drop_in = files.template(
        name="actr-engine's environment (drop-in)",
        src=template_path("actr-engine-homelab.conf.j2"),
        dest=DROP_IN,
        mode="644",
        environment=environment(settings),
    )
    changed = [unit, drop_in, install, secret, token]
    systemd.service(
        name="actr-engine runs and starts at boot",
        service="actr-engine.service",
        running=True,
        enabled=True,
        daemon_reload=unit.will_change or drop_in.will_change,
        restarted=any(op.will_change for op in changed),
    )
