"""Tailscale on the nodes: Tailscale's signed apt repository, tailscaled, and the tailnet login.

Runs on the hypervisor, ageis-node and the embedder; the service guests are reached over the
LAN. The repository's signing key is downloaded on the host and trusted only when its
fingerprint is ``tailscale_key_fingerprint`` (``tasks/common/apt_keys.py``); the deb822 source names
it in ``Signed-By:``, so it signs Tailscale's repository and nothing else. ``tailscale_track``
picks the stable or unstable track, ``tailscale_version`` optionally pins a version.

``tailscale up`` runs only on a node that is not logged in (``TailscaleState``, from
``tailscale status --json``). The auth key (secret ``tailscale_auth_key``) is uploaded as the
content of a root-only file and passed as ``--auth-key=file:PATH``, never as a value on a
command line; the file exists only for the login: it is removed right after it, and on every
run of a logged-in node. The login states every setting, with ``--reset`` (settings made by
hand on the node go back to Tailscale's defaults). A refused key fails the run naming the host
(``files/tailscale-login``). On a logged-in node, a changed hostname, ``--ssh``,
``--accept-dns`` or ``--accept-routes`` is applied with ``tailscale set``; tags can only change
with a new login, so a difference is reported, not forced.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from tasks.common.apt_keys import Fingerprint, verified_keyring
from tasks.common.datamodel.forms import Bool, Form, FormError, ListOf, Optional, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE, EMBEDDER, HYPERVISOR
from tasks.common.datamodel.secrets import ISSUED, SecretSpec, load_secrets
from tasks.common.ports import LAN, Port
from tasks.common.secret_files import secret_file
from tasks.common.templating import file_path, template_path

NODE_GROUPS = (HYPERVISOR, AGEIS_NODE, EMBEDDER)

KEYRING = "/usr/share/keyrings/tailscale-archive-keyring.gpg"
SOURCES = "/etc/apt/sources.list.d/tailscale.sources"
PIN_FILE = "/etc/apt/preferences.d/tailscale.pref"
AUTH_KEY_DIR = "/etc/tailscale"
AUTH_KEY_FILE = f"{AUTH_KEY_DIR}/authkey"
LOGIN = "/usr/local/sbin/tailscale-login"
# How long `tailscale up` may wait for the node to reach Running before it gives up.
UP_TIMEOUT = "120s"
# Distributions Tailscale's repository serves (os-release ID); Proxmox VE reports debian.
DISTROS = ("debian", "ubuntu")
# BackendStates of a node that is logged in and wants to be up: no `tailscale up` then.
UP_STATES = ("Running", "Starting")
# Logged in, but an admin must approve the machine first: logging in again would not help.
AWAITING_APPROVAL = "NeedsMachineAuth"

FILLED_IN = ("track", "distro", "codename")


@dataclass(frozen=True)
class UrlTemplate(Form):
    """An http(s) URL in which ``{track}``, ``{distro}`` and ``{codename}`` are filled in."""

    example: str

    @property
    def description(self) -> str:  # type: ignore[override]
        return (
            f'an http(s) URL such as "{self.example}" (the deploy fills in '
            + ", ".join("{" + name + "}" for name in FILLED_IN)
            + ")"
        )

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s]+", value):
            raise FormError(self.description, value)
        try:
            value.format(**{name: name for name in FILLED_IN})
        except (KeyError, IndexError, ValueError):
            raise FormError(self.description, value) from None
        return value


TAILSCALE_HOSTNAME = Str(
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", what='a single DNS label such as "ageis-node"'
)
TAG = Str(r"tag:[A-Za-z0-9][A-Za-z0-9-]*", what='a Tailscale tag such as "tag:homelab"')
VERSION = Str(
    r"[0-9]+\.[0-9]+\.[0-9]+([-+~.][0-9A-Za-z.+~-]+)?",
    what='a Tailscale package version such as "1.90.6"',
)

DATA = Schema(
    "tailscale",
    Key(
        "tailscale_track",
        Str(choices=("stable", "unstable")),
        "stable",
        "Tailscale's release track the apt source follows.",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_version",
        Optional(VERSION),
        None,
        "Pin this exact Tailscale version (apt pin); None follows the track.",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_repo_url",
        UrlTemplate("https://pkgs.tailscale.com/{track}/{distro}"),
        "https://pkgs.tailscale.com/{track}/{distro}",
        "Tailscale's apt repository (suite: the host's codename, component main).",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_key_url",
        UrlTemplate("https://pkgs.tailscale.com/{track}/{distro}/{codename}.noarmor.gpg"),
        "https://pkgs.tailscale.com/{track}/{distro}/{codename}.noarmor.gpg",
        "Where the repository's signing key is downloaded from.",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_key_fingerprint",
        Fingerprint(),
        "2596A99EAAB33821893C0A79458CA832957F5868",
        "Fingerprint the downloaded signing key must have (Tailscale's package signing key).",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_hostname",
        Optional(TAILSCALE_HOSTNAME),
        None,
        "The node's name in the tailnet; None uses the inventory name.",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_tags",
        ListOf(TAG, unique=True),
        [],
        "ACL tags the node advertises at login (the auth key must allow them).",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_ssh",
        Bool(),
        False,
        "Tailscale SSH (--ssh); off keeps OpenSSH's key-only login the way in.",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_accept_dns",
        Bool(),
        False,
        "Use the tailnet's DNS settings (--accept-dns); off keeps the LAN's own resolver.",
        NODE_GROUPS,
    ),
    Key(
        "tailscale_accept_routes",
        Bool(),
        False,
        "Use subnet routes other nodes advertise (--accept-routes).",
        NODE_GROUPS,
    ),
)

SECRETS = (
    SecretSpec(
        "tailscale_auth_key",
        NODE_GROUPS,
        "a Tailscale auth key (admin console) the nodes log in with: reusable, pre-approved,"
        " allowed the tailscale_tags",
        ISSUED,
    ),
)

# tailscaled's WireGuard port: direct (not relayed) connections between nodes on the LAN.
PORTS = (Port(41641, "udp", "tailscaled", consumers=(LAN,)),)

_PREFS_MARK = "#homelab-tailscale-prefs"


class TailscaleState(FactBase[dict[str, Any] | None]):
    """The node's ``BackendState`` and prefs; None when tailscale is not installed.

    ``backend_state`` is ``Unavailable`` when tailscaled does not answer, else what
    ``tailscale status --json`` says: ``NeedsLogin``, ``Running``, ``Stopped``, ...;
    ``prefs`` is ``tailscale debug prefs`` (Hostname, RunSSH, CorpDNS, RouteAll, AdvertiseTags).
    """

    # Its answer depends on another host (the tailnet: other nodes and the coordination server).
    reads_other_hosts = True

    def command(self) -> str:
        return (
            "command -v tailscale >/dev/null 2>&1 || exit 0; "
            "tailscale status --json 2>/dev/null || echo '{}'; "
            f"echo '{_PREFS_MARK}'; "
            "tailscale debug prefs 2>/dev/null || echo '{}'"
        )

    def process(self, output: list[str]) -> dict[str, Any] | None:
        if not output:
            return None
        if _PREFS_MARK in output:
            cut = output.index(_PREFS_MARK)
            status_lines, prefs_lines = output[:cut], output[cut + 1 :]
        else:
            status_lines, prefs_lines = output, []
        status = _json_object(status_lines)
        return {
            "backend_state": status.get("BackendState") or "Unavailable",
            "prefs": _json_object(prefs_lines),
        }


def _json_object(lines: list[str]) -> dict[str, Any]:
    try:
        value = json.loads("\n".join(lines) or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _release() -> tuple[str, str]:
    """The host's distribution ID (as Tailscale's repository names it) and codename."""
    meta = host.get_fact(LinuxDistribution).get("release_meta") or {}
    distro, codename = meta.get("ID", "").lower(), meta.get("VERSION_CODENAME", "")
    if distro not in DISTROS or not codename:
        raise RuntimeError(
            f"host {host.name!r}: Tailscale's apt repository is set up here for "
            f"{' and '.join(DISTROS)} hosts; this one runs "
            f"{meta.get('PRETTY_NAME') or distro or 'an unknown system'}"
        )
    return distro, codename


def _node_name(configured: str | None) -> str:
    name = configured or host.name
    try:
        return TAILSCALE_HOSTNAME.check(name)
    except FormError:
        raise RuntimeError(
            f"host {host.name!r}: key 'tailscale_hostname' is None and the inventory name "
            f"{host.name!r} is not a valid tailnet name; expected {TAILSCALE_HOSTNAME}"
        ) from None


def up_command(settings: Any, name: str) -> str:
    """The login command: ``tailscale up`` with every setting, the key read from its file."""
    flags = [
        "--reset",
        f"--auth-key=file:{AUTH_KEY_FILE}",
        f"--hostname={name}",
        f"--accept-dns={_flag(settings.tailscale_accept_dns)}",
        f"--accept-routes={_flag(settings.tailscale_accept_routes)}",
        f"--ssh={_flag(settings.tailscale_ssh)}",
    ]
    if settings.tailscale_tags:
        flags.append(f"--advertise-tags={','.join(settings.tailscale_tags)}")
    flags.append(f"--timeout={UP_TIMEOUT}")
    return " ".join([LOGIN, shlex.quote(host.name), "tailscale", "up", *flags])


def wanted_prefs(settings: Any, name: str) -> dict[str, Any]:
    """The prefs (as ``tailscale debug prefs`` names them) that ``tailscale set`` can change."""
    return {
        "Hostname": name,
        "RunSSH": settings.tailscale_ssh,
        "CorpDNS": settings.tailscale_accept_dns,
        "RouteAll": settings.tailscale_accept_routes,
    }


def _converge_prefs(settings: Any, name: str, prefs: dict[str, Any]) -> None:
    if not prefs:
        host.noop("Tailscale: logged in; its prefs cannot be read, so they are left as they are")
        return
    wanted = wanted_prefs(settings, name)
    if any(prefs.get(pref) != value for pref, value in wanted.items()):
        server.shell(
            name="Tailscale settings (tailscale set)",
            commands=[
                "tailscale set"
                f" --hostname={name}"
                f" --accept-dns={_flag(settings.tailscale_accept_dns)}"
                f" --accept-routes={_flag(settings.tailscale_accept_routes)}"
                f" --ssh={_flag(settings.tailscale_ssh)}"
            ],
        )
    advertised = sorted(prefs.get("AdvertiseTags") or [])
    if advertised != sorted(settings.tailscale_tags):
        logger.warning(
            f"{host.name}: tailscale_tags is {sorted(settings.tailscale_tags)}, the node"
            f" advertises {advertised}; tags change only with a new login: run"
            " `tailscale logout` on the node and deploy again, or re-tag it in the admin console"
        )


@deploy("Tailscale", data_defaults=DATA.defaults())
def tailscale() -> None:
    settings = DATA.read(host)
    distro, codename = _release()
    filled = {"track": settings.tailscale_track, "distro": distro, "codename": codename}
    repo_url = settings.tailscale_repo_url.format(**filled)
    name = _node_name(settings.tailscale_hostname)

    key = verified_keyring(
        name="Tailscale's signing key (fingerprint checked)",
        url=settings.tailscale_key_url.format(**filled),
        url_key="tailscale_key_url",
        fingerprint=settings.tailscale_key_fingerprint,
        fingerprint_key="tailscale_key_fingerprint",
        dest=KEYRING,
    )
    sources = files.template(
        name="Tailscale's apt source",
        src=template_path("tailscale.sources.j2"),
        dest=SOURCES,
        mode="644",
        user="root",
        group="root",
        track=settings.tailscale_track,
        repo_url=repo_url,
        codename=codename,
        keyring=KEYRING,
    )
    if settings.tailscale_version:
        files.template(
            name=f"Pin Tailscale {settings.tailscale_version}",
            src=template_path("tailscale.pref.j2"),
            dest=PIN_FILE,
            mode="644",
            user="root",
            group="root",
            version=settings.tailscale_version,
        )
    else:
        files.file(name="No Tailscale version pin", path=PIN_FILE, present=False)
    installed = "tailscale" in (host.get_fact(DebPackages) or {})
    apt.update(
        name="Refresh package lists for Tailscale's repository",
        _if=lambda: not installed or key.did_change() or sources.did_change(),
    )
    package = "tailscale"
    if settings.tailscale_version:
        package += f"={settings.tailscale_version}"
    apt.packages(
        name="Install tailscale",
        packages=[package],
        no_recommends=True,
        allow_downgrades=bool(settings.tailscale_version),
    )
    systemd.service(
        name="tailscaled runs and starts at boot",
        service="tailscaled",
        running=True,
        enabled=True,
    )

    files.directory(
        name="Tailscale auth key directory (root only)",
        path=AUTH_KEY_DIR,
        user="root",
        group="root",
        mode="700",
    )
    files.put(
        name="Install the tailscale login wrapper",
        src=file_path("tailscale-login"),
        dest=LOGIN,
        mode="755",
    )

    state = host.get_fact(TailscaleState)
    backend = state["backend_state"] if state else None
    if backend in UP_STATES:
        _converge_prefs(settings, name, state["prefs"])
    elif backend == AWAITING_APPROVAL:
        host.noop(
            "Tailscale: logged in, waiting for an admin to approve the machine (admin console)"
        )
    else:
        # The reusable auth key is on the host only for the login itself.
        secret_file(
            name="Tailscale auth key (root-only file, for this login only)",
            content=load_secrets()["tailscale_auth_key"],
            dest=AUTH_KEY_FILE,
        )
        server.shell(
            name="Log in to the tailnet (tailscale up)", commands=[up_command(settings, name)]
        )
    # After a login that worked (a failed one stops the run first) and on every later run: a
    # stolen host must not hand out a key that can add more machines to the tailnet.
    files.file(
        name="No Tailscale auth key left on the host after login",
        path=AUTH_KEY_FILE,
        present=False,
    )
