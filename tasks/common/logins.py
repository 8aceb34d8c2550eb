"""Who pyinfra logs in as: the admin user once a run has proven that login, else the host's
first-contact user.

A bare host is reached the way its installer left it: root by SSH key (Proxmox VE, Debian, an
LXC guest Proxmox created with the admin's keys), or the cloud-init user on the VM (Proxmox
passes the admin user as its ``ciuser``, with sudo). The first run creates the admin user with
its keys and sudo; at the end of that run, before root login goes off, the controller logs in
as the admin with the same key and runs ``sudo -n true`` (:func:`prove_admin_login`). Only a
proven login is recorded, on this controller, in ``login_record_directory``: one small JSON
file per inventory host. Every later run logs in as the recorded user with sudo (pyinfra's
``_sudo``).

The choice is made while the inventory loads (:func:`log_in_as_recorded`, called from the
inventory file), because pyinfra connects before any deploy code runs. A host whose data names
``ssh_user`` itself (host or group data, or ``--user``) is left as it says.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.common.datamodel.forms import UNIX_NAME, Optional, Str
from tasks.common.datamodel.keys import Key, Schema

DATA = Schema(
    "logins",
    Key(
        "first_login_user",
        Optional(UNIX_NAME),
        None,
        "The login of a host no run has proven the admin login on yet; None: root, or the admin"
        " user on a VM guest (cloud-init creates it).",
    ),
    Key(
        "login_record_directory",
        Str(r"[^\0\n]+", what='a directory on the controller, such as "~/.local/state/x"'),
        "~/.local/state/homelab-as-code/logins",
        "Where this controller records the hosts whose admin login (SSH key, sudo) is proven.",
    ),
)

PROOF_TIMEOUT_S = 15.0


class LoginNotProven(Exception):
    """The admin login did not work: root login stays as it is."""


def record_file(directory: str | Path, name: str) -> Path:
    """The record of inventory host ``name`` (one file per host)."""
    return Path(directory).expanduser() / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.json"


def recorded_user(directory: str | Path, name: str) -> str | None:
    """The admin user proven on ``name``; None without a (readable, well-formed) record."""
    try:
        user = json.loads(record_file(directory, name).read_text()).get("user")
    except (OSError, ValueError, AttributeError):
        return None
    try:
        return UNIX_NAME.check(user)
    except Exception:
        return None


def write_record(directory: str | Path, name_of_host: str, user: str, address: str) -> Path:
    """Record that ``user`` logs in to ``name_of_host`` with sudo (mode 600, atomically)."""
    path = record_file(directory, name_of_host)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    proven = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = json.dumps({"user": user, "address": address, "proven": proven}, indent=1) + "\n"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".record-")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)
    return path


def first_login_user(data: MutableMapping[str, Any] | Any) -> str:
    """The login of a host before its admin login is proven."""
    if chosen := data.get("first_login_user"):
        return str(chosen)
    guest = data.get("guest") or {}
    if guest.get("kind") == "qemu":
        return str(data.get("admin_user") or "ops")  # Proxmox's ciuser: cloud-init gives sudo
    return "root"


def login_of(name: str, data: Any) -> tuple[str, bool]:
    """``(user, sudo)`` pyinfra logs in to host ``name`` with, from its merged data."""
    directory = data.get("login_record_directory") or DATA.defaults()["login_record_directory"]
    user = recorded_user(directory, name) or first_login_user(data)
    return user, user != "root"


def failed_login_hint(name: str, data: Any) -> str:
    """What to check when pyinfra could not log in to ``name`` with its chosen login."""
    directory = data.get("login_record_directory") or DATA.defaults()["login_record_directory"]
    path = record_file(directory, name)
    user = data.get("ssh_user") or "root"
    if recorded_user(directory, name):
        return (
            f"{name}: logged in as {user}, the admin login recorded in {path}; if the host was"
            " installed anew, remove that file so the next run logs in as its first user"
        )
    return (
        f"{name}: logged in as {user}, its first login (no admin login recorded in {path});"
        " if an earlier run from another controller turned root login off, record the admin"
        f' login here: {{"user": "<admin_user>"}} in {path}'
    )


def log_in_as_recorded(
    namespace: MutableMapping[str, Any], inventory: Iterable[Any] | None
) -> None:
    """From an inventory file: give each host the login of :func:`login_of`.

    ``namespace`` is the inventory file's ``globals()``: its host lists of ``(name, data)``
    pairs get ``ssh_user`` (and ``_sudo``) written into their data. ``inventory`` is the loaded
    inventory ``check_inventory_file`` returns (group data merged in); None (pyinfra's loader
    running the file again) does nothing.
    """
    if inventory is None:
        return
    data_of: dict[str, list[MutableMapping[str, Any]]] = {}
    for value in namespace.values():
        if isinstance(value, list):
            for item in value:
                if (
                    isinstance(item, tuple)
                    and len(item) == 2
                    and isinstance(item[0], str)
                    and isinstance(item[1], dict)
                ):
                    data_of.setdefault(item[0], []).append(item[1])
    for host in inventory:
        if host.data.get("ssh_user"):
            continue  # named in the data: left as it says
        user, sudo = login_of(host.name, host.data)
        for data in data_of.get(host.name, []):
            data["ssh_user"] = user
            if sudo:
                data["_sudo"] = True
                # An upload goes to a file the login writes, then sudo copies it into place.
                # pyinfra would take the temporary directory from TMPDIR asked under sudo, and
                # libpam-tmpdir (hardening) makes that root's private /tmp/user/0.
                data.setdefault("_temp_dir", "/tmp")


def prove_admin_login(
    host_name: str,
    hostname: str,
    port: int,
    user: str,
    key_file: str | None,
    key_password: str | None,
    known_hosts_file: str,
    record_directory: str,
    sudo_without_password: bool,
) -> None:
    """Log in to the host as ``user`` with the run's key, check sudo, and record the login.

    The host key must be the one already recorded in ``known_hosts_file`` (nothing is added).
    Raises :class:`LoginNotProven`, naming the login and the reason, when any step fails.
    """
    import paramiko

    where = f"{user}@{hostname}" + ("" if port == 22 else f":{port}")
    client = paramiko.SSHClient()
    known = Path(known_hosts_file).expanduser()
    if known.is_file():
        client.load_host_keys(str(known))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            hostname,
            port=port,
            username=user,
            key_filename=str(Path(key_file).expanduser()) if key_file else None,
            passphrase=key_password,
            look_for_keys=key_file is None,
            allow_agent=key_file is None,
            timeout=PROOF_TIMEOUT_S,
            banner_timeout=PROOF_TIMEOUT_S,
            auth_timeout=PROOF_TIMEOUT_S,
        )
        command = "sudo -n true" if sudo_without_password else "true"
        _, stdout, stderr = client.exec_command(command, timeout=PROOF_TIMEOUT_S)
        status = stdout.channel.recv_exit_status()
        if status != 0:
            said = stderr.read().decode(errors="replace").strip()[:200]
            raise LoginNotProven(
                f"host {host_name!r}: logged in as {where}, but `{command}` exited {status}"
                f" ({said or 'no message'}); root login stays on"
            )
    except (paramiko.SSHException, OSError, EOFError) as error:
        raise LoginNotProven(
            f"host {host_name!r}: the admin login {where} failed"
            f" ({type(error).__name__}: {error}); root login stays on"
        ) from None
    finally:
        client.close()
    write_record(record_directory, host_name, user, hostname)
