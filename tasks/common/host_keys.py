"""SSH host keys: trusted on first contact, then pinned; a changed key stops the whole run.

pyinfra checks each host's key against ``ssh_known_hosts_file`` with
``ssh_strict_host_key_checking`` (``group_data/all.py``: ``accept-new``): the first contact
records the key, every later one must match it. A host whose key no longer matches only fails
to connect, and pyinfra would carry on with the other hosts. :func:`require_trusted_host_keys`,
run first in every deploy, stops the run on every host before any operation instead, naming the
host and both fingerprints, the recorded and the one the host presents now.

``host_key_fingerprint`` (host data) pins a key by its OpenSSH fingerprint (``ssh-keygen -lf``,
``SHA256:...``): a host whose recorded key has another fingerprint stops the run too, so a key
trusted on first contact can be checked against the one read at the host's console. Hosts
without a pin have their fingerprint printed at each run, with the key to pin it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import paramiko
from pyinfra import logger

from tasks.common import logins
from tasks.common.datamodel.forms import Optional, Str
from tasks.common.datamodel.keys import Key, Schema

FINGERPRINT = Str(
    r"SHA256:[A-Za-z0-9+/]{43}", what='an OpenSSH SHA256 fingerprint such as "SHA256:" + 43 chars'
)

DATA = Schema(
    "host_keys",
    Key(
        "host_key_fingerprint",
        Optional(FINGERPRINT),
        None,
        "The host's SSH host key fingerprint (ssh-keygen -lf, at its console); None trusts the"
        " key met first (then pinned in the known-hosts file).",
    ),
)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
SCAN_TIMEOUT_S = 5.0
# What a known_hosts entry's type lets the server offer (RSA keys sign with SHA-2 today).
_OFFERED_TYPES = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}

# States already checked (weakly held: a plan test's next State may reuse a freed one's id()).
_checked_states: weakref.WeakSet[Any] = weakref.WeakSet()


class HostKeyMismatch(SystemExit):
    """A host's SSH key is not the trusted one: exits with status 2, nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as ``ssh-keygen -lf`` prints it (SHA256, unpadded base64)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Endpoint:
    """Where pyinfra reaches a host, and the name its key is recorded under."""

    hostname: str
    port: int
    known_hosts_file: str

    @property
    def entry(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def endpoint_of(host: Any) -> Endpoint:
    data = host.data
    return Endpoint(
        str(data.get("ssh_hostname") or host.name),
        int(data.get("ssh_port") or 22),
        str(data.get("ssh_known_hosts_file") or DEFAULT_KNOWN_HOSTS),
    )


def recorded_keys(endpoint: Endpoint) -> dict[str, paramiko.PKey]:
    """The keys (by type) the known-hosts file holds for ``endpoint``; {} when none."""
    path = os.path.expanduser(endpoint.known_hosts_file)
    if not os.path.isfile(path):
        return {}
    found = paramiko.HostKeys(path).lookup(endpoint.entry)
    return dict(found.items()) if found else {}


def presented_key(endpoint: Endpoint, key_type: str) -> paramiko.PKey | None:
    """The key of ``key_type`` the host presents now (an SSH key exchange, no login); None when
    it does not answer or offers no key of that type."""
    try:
        sock = socket.create_connection((endpoint.hostname, endpoint.port), SCAN_TIMEOUT_S)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    try:
        transport.get_security_options().key_types = _OFFERED_TYPES.get(key_type, [key_type])
        transport.start_client(timeout=SCAN_TIMEOUT_S)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError, ValueError):
        return None
    finally:
        transport.close()


def changed_key_problem(name: str, endpoint: Endpoint) -> str | None:
    """For a host that failed to connect: why, when its key changed (else None)."""
    for key_type, known in recorded_keys(endpoint).items():
        now = presented_key(endpoint, key_type)
        if now is not None and now.asbytes() != known.asbytes():
            return (
                f"host {name!r} ({endpoint.entry}): the SSH host key changed: recorded"
                f" {fingerprint(known)} ({key_type}) in {endpoint.known_hosts_file}, the host"
                f" presents {fingerprint(now)}. If the host was reinstalled, check the new"
                f" fingerprint at its console, then `ssh-keygen -R {endpoint.entry}"
                f" -f {endpoint.known_hosts_file}` (and set host_key_fingerprint) and run again"
            )
    return None


def pin_problem(name: str, endpoint: Endpoint, pinned: str) -> str | None:
    """For a connected host with a pinned fingerprint: a problem when no recorded key has it."""
    recorded = {fingerprint(key) for key in recorded_keys(endpoint).values()}
    if pinned in recorded:
        return None
    shown = ", ".join(sorted(recorded)) or "none"
    return (
        f"host {name!r} ({endpoint.entry}): key 'host_key_fingerprint' is {pinned!r}, but the"
        f" key recorded in {endpoint.known_hosts_file} has {shown}"
    )


def _preferred(keys: dict[str, paramiko.PKey]) -> tuple[str, paramiko.PKey] | None:
    """The key to show for a host: its Ed25519 key when it has one."""
    for key_type in ("ssh-ed25519", *sorted(keys)):
        if key_type in keys:
            return key_type, keys[key_type]
    return None


def trust_problems(hosts: Iterable[Any], failed: set[Any]) -> list[str]:
    """Every host-key problem of a run: changed keys of hosts that failed to connect, and
    recorded keys that do not match a pin. Prints the fingerprints of unpinned hosts."""
    problems: list[str] = []
    for host in hosts:
        endpoint = endpoint_of(host)
        if host in failed:
            problem = changed_key_problem(host.name, endpoint)
            if problem is None and (guest := host.data.get("guest")):
                logger.warning(
                    f"{host.name}: not reachable; a guest of {guest.get('hypervisor')}: if it is"
                    " not created yet, the hypervisor's part of this run creates it; run the"
                    " same command again once it has booted"
                )
            if problem is None:
                logger.warning(logins.failed_login_hint(host.name, host.data))
        elif pinned := host.data.get("host_key_fingerprint"):
            problem = pin_problem(host.name, endpoint, pinned)
        else:
            problem = None
            if shown := _preferred(recorded_keys(endpoint)):
                logger.info(
                    f"{host.name}: SSH host key {fingerprint(shown[1])} ({shown[0]}), trusted as"
                    " first met; pin it with host_key_fingerprint"
                )
        if problem:
            problems.append(problem)
    return problems


def require_trusted_host_keys() -> None:
    """From a deploy file: once per run, stop every host when any host's key is not trusted."""
    from pyinfra.context import ctx_state

    # The run's own State: pyinfra's context proxy compares and hashes as whichever State is
    # current, and lives for ever, so a WeakSet holding it would take a later run whose State
    # reuses a freed one's address for a run already checked.
    state = ctx_state.get()
    if state in _checked_states:
        return
    _checked_states.add(state)
    problems = trust_problems(list(state.inventory), set(state.failed_hosts))
    if problems:
        message = "SSH host keys that are not the trusted ones; nothing was changed:\n" + "\n".join(
            f"  - {problem}" for problem in problems
        )
        print(message, file=sys.stderr)
        raise HostKeyMismatch(message)
