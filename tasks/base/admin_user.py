"""The admin user: SSH key login, member of the admin group, sudo for that group.

Reads ``admin_user``, ``admin_group``, ``admin_ssh_public_key_files`` (read on the controller,
so the keys never have to be written into the repository) and ``admin_sudo_nopasswd``.
The sudoers file is checked with ``visudo -cf`` before it goes live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import UNIX_NAME, Bool, Form, FormError, ListOf
from tasks.common.datamodel.keys import Key, Schema

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


class PublicKeyFile(Form):
    """A path on the controller to an OpenSSH public key; normalises to the key's text."""

    description = 'a readable OpenSSH public key file such as "~/.ssh/id_ed25519.pub"'

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise FormError(self.description, value)
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise FormError(self.description + " (cannot read it)", value) from None
        parts = text.split()
        if len(parts) < 2 or parts[0] not in KEY_TYPES or "PRIVATE KEY" in text:
            raise FormError(self.description + " (not a public key)", value)
        return text


DATA = Schema(
    "admin_user",
    Key("admin_user", UNIX_NAME, "ops", "Admin login on every host."),
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
