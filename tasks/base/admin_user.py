"""The admin user: SSH key login, member of the admin group, sudo for that group.

Reads ``admin_user``, ``admin_group``, ``admin_ssh_public_key_files`` (read on the controller,
so the keys never have to be written into the repository) and ``admin_sudo_nopasswd``.
The sudoers file is checked with ``visudo -cf`` before it goes live.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import UNIX_NAME, Bool, Form, FormError, ListOf, Predicate
from tasks.common.datamodel.keys import Key, Schema

# Key types the generated sshd accepts (templates/sshd-homelab.conf.j2, PubkeyAcceptedAlgorithms
# from tasks/base/ssh_server.py): ed25519, its FIDO variant, and RSA (signing with SHA-2) of at
# least RequiredRSASize bits. A key of any other type would be installed and then refused at
# login, locking the admin out once root login is off.
ACCEPTED_KEY_TYPES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ssh-rsa")
MIN_RSA_BITS = 3072
# Accounts the system or the deploy itself runs as: an admin login of that name would take over
# (or be taken over by) the service's account. Short on purpose: the names a person might pick.
RESERVED_ACCOUNTS = ("root", "daemon", "bin", "sys", "nobody", "postgres", "ollama")


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    """One length-prefixed field of an SSH public key blob (RFC 4253, section 6.6)."""
    length = int.from_bytes(blob[offset : offset + 4], "big")
    end = offset + 4 + length
    if length == 0 or end > len(blob):
        raise ValueError("truncated key blob")
    return blob[offset + 4 : end], end


def key_problem(line: str) -> str | None:
    """Why sshd would refuse this authorized_keys line, or None when it accepts it."""
    parts = line.split()
    if len(parts) < 2:
        return "not a public key"
    key_type, encoded = parts[0], parts[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
        blob_type, offset = _ssh_string(blob, 0)
    except (binascii.Error, ValueError):
        return "not a public key"
    if blob_type.decode(errors="replace") != key_type:
        return "not a public key"
    if key_type not in ACCEPTED_KEY_TYPES:
        return (
            f"a {key_type} key, which sshd here refuses; accepted: "
            f"{', '.join(ACCEPTED_KEY_TYPES)} (RSA of at least {MIN_RSA_BITS} bits)"
        )
    if key_type == "ssh-rsa":
        try:
            _exponent, offset = _ssh_string(blob, offset)
            modulus, _ = _ssh_string(blob, offset)
        except ValueError:
            return "not a public key"
        bits = int.from_bytes(modulus, "big").bit_length()
        if bits < MIN_RSA_BITS:
            return f"an RSA key of {bits} bits; sshd here requires at least {MIN_RSA_BITS}"
    return None


class PublicKeyFile(Form):
    """A path on the controller to an OpenSSH public key; normalises to the key's text.

    Every key in the file must be of a type the generated sshd accepts.
    """

    description = (
        'a readable OpenSSH public key file such as "~/.ssh/id_ed25519.pub" (ed25519, or RSA of'
        f" at least {MIN_RSA_BITS} bits)"
    )

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value or "\n" in value or "\0" in value:
            raise FormError(self.description, value)
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise FormError(self.description + " (cannot read it)", value) from None
        if "PRIVATE KEY" in text:
            raise FormError(self.description + " (not a public key)", value)
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        problems = [key_problem(line) for line in lines] or ["not a public key"]
        for problem in problems:
            if problem:
                raise FormError(f"{self.description} ({problem})", value)
        return text


ADMIN_USER = Predicate(
    UNIX_NAME,
    lambda name: name not in RESERVED_ACCOUNTS,
    'a Unix user name such as "ops", not a system or service account the deploy relies on'
    f" ({', '.join(RESERVED_ACCOUNTS)})",
)


DATA = Schema(
    "admin_user",
    Key("admin_user", ADMIN_USER, "ops", "Admin login on every host."),
    Key("admin_group", UNIX_NAME, "homelab-admins", "Group allowed to log in by SSH and sudo."),
    Key(
        "admin_ssh_public_key_files",
        ListOf(PublicKeyFile(), min_items=1),
        ["~/.ssh/id_ed25519.pub"],
        "Public keys (files on the controller) allowed to log in as the admin.",
    ),
    Key("admin_sudo_nopasswd", Bool(), True, "Sudo without a password (pyinfra needs it)."),
)


@deploy("Admin user", data_defaults=DATA.defaults())
def admin_user() -> None:
    settings = DATA.read(host)
    server.group(name=f"Admin group {settings.admin_group}", group=settings.admin_group)
    server.user(
        name=f"Admin user {settings.admin_user}",
        user=settings.admin_user,
        groups=[settings.admin_group],
        shell="/bin/bash",
        home=f"/home/{settings.admin_user}",
        create_home=True,
    )
    server.user_authorized_keys(
        name="Admin SSH keys (only these)",
        user=settings.admin_user,
        group=settings.admin_user,
        public_keys=settings.admin_ssh_public_key_files,
        delete_keys=True,
        # Named, not looked up: on the first run the user does not exist yet at planning time.
        authorized_key_directory=f"/home/{settings.admin_user}/.ssh",
    )
    checked_template(
        name="Sudo for the admin group",
        template="sudoers-admin.j2",
        dest="/etc/sudoers.d/homelab-admin",
        mode="440",
        check="visudo -cf {}",
        admin_group=settings.admin_group,
        nopasswd=settings.admin_sudo_nopasswd,
    )
