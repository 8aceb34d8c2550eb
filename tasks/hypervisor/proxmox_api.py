"""How the deploy reaches the hypervisor's Proxmox VE API (guests, storages, backups, snapshots).

Proxmox allows two ways in: ``root@pam`` with a password (the only way to set a raw
``hostpci0`` address), or an API token (then passthrough goes through a PCI resource mapping).
The secret is the password or the token's secret, per ``proxmox_api_token_name``.

The client is proxmoxer's HTTPS backend, made by :func:`connect` from the hypervisor's data
and the secret. TLS is verified unless ``proxmox_api_verify_tls`` is false: against the
host's own CA, ``/etc/pve/pve-root-ca.pem``, read over SSH on first contact and pinned
(:mod:`tasks.hypervisor.proxmox_ca`); against ``proxmox_api_ca_file``; or, with
``proxmox_api_ca_from_host`` false, against the system's CAs (a certificate of your own).
Calls come from the controller: reads while pyinfra plans (like facts), writes inside
``python.call`` operations at execute time, and only when the read state differs from the
data (:func:`api_change`), so ``--dry`` shows them and a converged host plans none. Every
write that answers a UPID is waited on (:meth:`Proxmox.call`); a task
that ends in anything but ``OK`` raises :class:`TaskFailed` with the task's log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra import host as current_host
from pyinfra import inventory as current_inventory
from pyinfra import logger
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import python

from tasks.common.datamodel.forms import Bool, Int, Optional, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.datamodel.machine import HYPERVISOR
from tasks.common.datamodel.secrets import ISSUED, SecretSpec, load_secrets
from tasks.common.ports import ADMIN, Port
from tasks.hypervisor import proxmox_ca

ADDRESS = Str(
    r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?",
    what='a host name or IPv4 address such as "pve.home.arpa" or "192.168.1.10"',
)

DATA = Schema(
    "proxmox_api",
    Key(
        "proxmox_api_user",
        Str(r"[^@\s]+@(pam|pve|[a-z0-9-]+)", what='a Proxmox user such as "root@pam"'),
        "root@pam",
        "Proxmox user the deploy logs in as.",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_api_token_name",
        Optional(Str(r"[A-Za-z][A-Za-z0-9._-]*", what='a token ID such as "homelab"')),
        None,
        "API token ID of that user; None logs in with the password instead.",
        (HYPERVISOR,),
    ),
    Key("proxmox_api_port", Int(1, 65535), 8006, "Port of the API.", (HYPERVISOR,)),
    Key(
        "proxmox_api_verify_tls",
        Bool(),
        True,
        "Verify the API's TLS certificate (false only for a self-signed one you accept).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_api_host",
        Optional(ADDRESS),
        None,
        "Where the controller reaches the API; None: the hypervisor's lan_address.",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_api_ca_file",
        Optional(Str(r"[^\0]+", what='a file on the controller, such as "pve-root-ca.pem"')),
        None,
        "CA certificate (PEM, on the controller) the API's certificate must chain to; None:"
        " see proxmox_api_ca_from_host.",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_api_ca_from_host",
        Bool(),
        True,
        "Without proxmox_api_ca_file: trust the host's own CA (/etc/pve/pve-root-ca.pem), read"
        " over SSH on first contact, recorded and then pinned; false: the system's CAs (for"
        " a certificate of your own, such as ACME's).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_api_ca_fingerprint",
        Optional(
            Str(
                r"([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}",
                what="a SHA-256 fingerprint, 32 hex pairs joined by colons (openssl x509"
                " -noout -fingerprint -sha256)",
            )
        ),
        None,
        "The host's CA pinned by its SHA-256 fingerprint, read at its console; None trusts the"
        " CA met first (then recorded).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_api_ca_record_directory",
        Str(r"[^\0]+", what='a directory on the controller, such as "~/.local/state/ca"'),
        "~/.local/state/homelab-as-code/proxmox-ca",
        "Where this controller records each hypervisor's CA (one PEM file per host).",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_node",
        Optional(Str(r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?", what='a node name, "pve"')),
        None,
        "Proxmox node name of the hypervisor; None: its inventory name.",
        (HYPERVISOR,),
    ),
    Key(
        "proxmox_task_timeout",
        Int(10, 86400),
        1800,
        "Seconds to wait for one Proxmox task (UPID) before failing the run.",
        (HYPERVISOR,),
    ),
)

SECRETS = (
    SecretSpec(
        "proxmox_api_secret",
        (HYPERVISOR,),
        "the Proxmox password of proxmox_api_user, or the secret of proxmox_api_token_name",
        ISSUED,
    ),
)

# pveproxy: the web interface and the API, open to the admin's devices (and monitoring) only.
PORTS = (Port(8006, "tcp", "proxmox-web", probe="tcp", consumers=(ADMIN,)),)

POLL_SECONDS = 0.5


class ProxmoxError(RuntimeError):
    """The API cannot be reached, refused a request, or a task failed."""


class TaskFailed(ProxmoxError):
    """A Proxmox task (UPID) ended in an error; the message carries the task's log."""


def _form(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as the API takes them: booleans 1/0, numbers as text, no None."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        out[key] = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
    return out


@dataclass
class Proxmox:
    """A logged-in API client for one hypervisor (``host_name`` is its inventory name)."""

    api: Any
    node: str
    host_name: str
    user: str
    token: bool
    timeout: int

    def _resource(self, path: str) -> Any:
        return self.api(path.strip("/"))

    def get(self, path: str, /, **params: Any) -> Any:
        return self._request("GET", path, params)

    def _request(self, method: str, path: str, params: Mapping[str, Any]) -> Any:
        from proxmoxer.core import ResourceException

        try:
            resource = self._resource(path)
            sent = _form(params)
            if method == "GET":
                return resource.get(**sent)
            if method == "DELETE":
                return resource.delete(**sent)
            return getattr(resource, method.lower())(**sent)
        except ResourceException as error:
            detail = "; ".join(f"{k}: {v}" for k, v in sorted((error.errors or {}).items()))
            raise ProxmoxError(
                f"{self.host_name}: Proxmox API {method} {path} refused: {error.status_code}"
                f" {error.content}" + (f" ({detail})" if detail else "")
            ) from None
        except OSError as error:
            raise ProxmoxError(
                f"{self.host_name}: Proxmox API {method} {path} failed: {error}"
            ) from None

    def call(self, method: str, path: str, what: str, /, **params: Any) -> Any:
        """A write; when it answers a UPID, wait for that task and fail with its log."""
        result = self._request(method, path, params)
        if isinstance(result, str) and result.startswith("UPID:"):
            self.wait(result, what)
        return result

    def wait(self, upid: str, what: str) -> dict[str, Any]:
        """Wait for task ``upid``; raise TaskFailed (with the task log) unless it ends OK."""
        node = upid.split(":")[1]
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.get(f"nodes/{node}/tasks/{upid}/status")
            if status.get("status") == "stopped":
                break
            if time.monotonic() > deadline:
                raise TaskFailed(
                    f"{self.host_name}: {what}: task {upid} still running after"
                    f" {self.timeout}s (proxmox_task_timeout)"
                )
            time.sleep(POLL_SECONDS)
        if status.get("exitstatus") != "OK":
            log = self.get(f"nodes/{node}/tasks/{upid}/log", limit=500)
            lines = "\n".join(f"    {entry.get('t', '')}" for entry in log)
            raise TaskFailed(
                f"{self.host_name}: {what} failed: {status.get('exitstatus')}\n"
                f"  task {upid}, log:\n{lines}"
            )
        return status


def settings_of(hypervisor: Any) -> Any:
    """The hypervisor host's API settings (checked)."""
    return DATA.read(hypervisor)


def tls_verification(hypervisor: Any) -> bool | str:
    """How a client verifies the API of ``hypervisor``: False (not at all), True (the system's
    CAs) or the CA file on this controller (``proxmox_api_ca_file`` or the recorded host CA)."""
    settings = settings_of(hypervisor)
    if not settings.proxmox_api_verify_tls:
        return False
    if settings.proxmox_api_ca_file:
        ca_file = Path(settings.proxmox_api_ca_file).expanduser()
        if not ca_file.is_file():
            raise ProxmoxError(
                f"host {hypervisor.name!r}: key 'proxmox_api_ca_file' is"
                f" {settings.proxmox_api_ca_file!r}; expected a readable PEM file on the"
                " controller (copy the host's /etc/pve/pve-root-ca.pem)"
            )
        return str(ca_file)
    if not settings.proxmox_api_ca_from_host:
        return True
    record = proxmox_ca.record_file(settings.proxmox_api_ca_record_directory, hypervisor.name)
    if not record.is_file():
        raise ProxmoxError(
            f"host {hypervisor.name!r}: the Proxmox API's CA is not recorded on this"
            f" controller yet ({record}); a run of deploys/full.py or deploys/hypervisor.py"
            f" on {hypervisor.name} reads it over SSH and records it"
        )
    return str(record)


_clients: dict[tuple[Any, ...], Proxmox] = {}


def connect(hypervisor: Any) -> Proxmox:
    """A logged-in client for the pyinfra host ``hypervisor`` (cached per run)."""
    from proxmoxer import ProxmoxAPI

    settings = settings_of(hypervisor)
    address = settings.proxmox_api_host or hypervisor.data.get("lan_address")
    node = settings.proxmox_node or hypervisor.name
    verify = tls_verification(hypervisor)
    secret = load_secrets().get("proxmox_api_secret")
    if secret is None:
        raise ProxmoxError(
            f"host {hypervisor.name!r}: the secret 'proxmox_api_secret' is missing (secrets"
            " file or HOMELAB_SECRET_PROXMOX_API_SECRET)"
        )
    key = (address, settings.proxmox_api_port, settings.proxmox_api_user,
           settings.proxmox_api_token_name, verify, secret.reveal())  # fmt: skip
    if key in _clients:
        return _clients[key]
    credentials: dict[str, Any]
    if settings.proxmox_api_token_name:
        credentials = {
            "token_name": settings.proxmox_api_token_name,
            "token_value": secret.reveal(),
        }
    else:
        credentials = {"password": secret.reveal()}
    try:
        api = ProxmoxAPI(
            address,
            port=settings.proxmox_api_port,
            user=settings.proxmox_api_user,
            verify_ssl=verify,
            timeout=30,
            **credentials,
        )
        api.version.get()
    except Exception as error:
        text = str(error).replace(secret.reveal(), "***")
        raise ProxmoxError(
            f"host {hypervisor.name!r}: the Proxmox API at https://{address}:"
            f"{settings.proxmox_api_port} does not answer or refuses"
            f" {settings.proxmox_api_user}"
            + (f"!{settings.proxmox_api_token_name}" if settings.proxmox_api_token_name else "")
            + f": {type(error).__name__}: {text}"
        ) from None
    client = Proxmox(
        api=api,
        node=node,
        host_name=hypervisor.name,
        user=settings.proxmox_api_user,
        token=bool(settings.proxmox_api_token_name),
        timeout=settings.proxmox_task_timeout,
    )
    _clients[key] = client
    return client


def forget_clients() -> None:
    """Drop cached clients (tests that restart the double)."""
    _clients.clear()


def hypervisor_named(name: str) -> Any:
    """The pyinfra host called ``name`` in the current inventory (a guest's hypervisor)."""
    found = current_inventory.get_host(name, None)
    if found is None:
        raise ProxmoxError(
            f"host {current_host.name!r}: its guest.hypervisor {name!r} is not in the inventory"
        )
    return found


def guests_of(hypervisor_name: str) -> list[tuple[str, dict[str, Any], Mapping[str, Any]]]:
    """(name, checked guest spec, host data) of every inventory host the hypervisor runs."""
    from tasks.common.datamodel.machine import GUEST

    found = []
    for other in current_inventory:
        spec = other.data.get("guest")
        if spec and spec.get("hypervisor") == hypervisor_name:
            found.append((other.name, GUEST.check(spec), other.data))
    return sorted(found, key=lambda item: item[1]["vmid"])


def api_change(name: str, changes: list[str], apply: Callable[[], None]) -> None:
    """One operation: run ``apply`` at execute time when ``changes`` (what differs) is not
    empty; else a no-op that names what was checked. ``changes`` lines are logged in the plan.
    """
    if not changes:
        current_host.noop(f"{name}: as the data says")
        return

    def run() -> None:
        apply()

    python.call(name=f"{name}: " + "; ".join(changes), function=run)


def reach(name: str) -> Proxmox | None:
    """The current (hypervisor) host's API client for planning; None when Proxmox VE is not
    installed yet (the host's first run installs it: the API work waits for the next run)."""
    from pyinfra.facts.deb import DebPackages

    def not_installed_yet() -> bool:
        if "pve-manager" in (current_host.get_fact(DebPackages) or {}):
            return False
        current_host.noop(
            f"{name}: Proxmox VE is not installed yet; this converges on the run after"
            " the installation"
        )
        return True

    settings = settings_of(current_host)
    uses_host_ca = (
        settings.proxmox_api_verify_tls
        and not settings.proxmox_api_ca_file
        and settings.proxmox_api_ca_from_host
    )
    if uses_host_ca:
        lines = current_host.get_fact(FileContents, path=proxmox_ca.HOST_CA)
        if lines is None:
            if not_installed_yet():
                return None
            raise ProxmoxError(
                f"host {current_host.name!r}: pve-manager is installed but {proxmox_ca.HOST_CA}"
                " is missing (pvecm updatecerts makes it)"
            )
        proxmox_ca.trust(
            current_host.name,
            "\n".join(lines) + "\n",
            settings.proxmox_api_ca_record_directory,
            settings.proxmox_api_ca_fingerprint,
        )
    try:
        return connect(current_host)
    except ProxmoxError:
        if not_installed_yet():
            return None
        raise


def get_or_none(api: Proxmox, path: str, /, **params: Any) -> Any:
    """GET ``path``, or None when the API says the object does not exist."""
    try:
        return api.get(path, **params)
    except ProxmoxError as error:
        if "does not exist" in str(error) or " 404 " in str(error):
            return None
        raise


def diff(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, str]:
    """The wanted keys whose current value (as text) differs."""
    return {
        key: str(value)
        for key, value in wanted.items()
        if str(current.get(key, "")) != str(int(value) if isinstance(value, bool) else value)
    }


def proxmox_api_stage(tasks: Sequence[Callable[[], None]]) -> None:
    """The tasks that work through the API (checks, storages, guests, the backup job); not a
    deploy of its own, so their operations keep their names.

    They read the API while pyinfra plans, so on a host whose Proxmox VE this run installs
    (plain Debian) there is nothing to read yet. There they run as one operation at execute
    time instead, after the installation and its reboot: their reads and writes then happen in
    that operation (pyinfra executes operations called inside it at once), so the guests are
    created in the same run and the next run converges them, as from the Proxmox ISO. (Not
    with an API token: the token is made in Proxmox VE, so the API work waits for the next run.)
    """
    from tasks.hypervisor.proxmox_ve import installs_proxmox_ve

    if not installs_proxmox_ve():
        for task in current_host.loop(tasks):  # each its own place (see deploys/roles.py)
            task()
        return
    settings = settings_of(current_host)
    if settings.proxmox_api_token_name:
        logger.warning(
            f"{current_host.name}: Proxmox VE API tasks wait: the API token"
            f" {settings.proxmox_api_user}!{settings.proxmox_api_token_name} cannot exist"
            " before Proxmox VE does; create it once this run has installed Proxmox VE, then"
            " run again"
        )
        return

    def after_installation() -> None:
        for task in current_host.loop(tasks):
            task()

    python.call(
        name="Proxmox VE API tasks (storages, guests, backup job), once this run has installed"
        " Proxmox VE",
        function=after_installation,
    )


@deploy("Proxmox VE API", data_defaults=DATA.defaults())
def proxmox_api_check() -> None:
    """Plan-time proof that the API answers with these credentials (its version)."""
    api = reach("Proxmox VE API")
    if api is not None:
        version = api.get("version")
        current_host.noop(f"Proxmox VE API answers: pve-manager {version.get('version')}")
