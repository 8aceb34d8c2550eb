"""Who may log in by SSH: the admin group, and root only where the data asks for it.

Reads ``sshd_permit_root_login``, ``admin_user``, ``admin_group`` and ``admin_sudo_nopasswd``
(:mod:`tasks.base.admin_user`), and the login record (:mod:`tasks.common.logins`). It runs last
in every run. When pyinfra reached the host as another user than the admin (root on a fresh
install, the first run of a new guest), the controller first logs in as the admin with the
run's key and checks ``sudo -n true``; only when that works is the login recorded and root
login turned off, so no run can lock the admin out. A failed proof stops the host there, root
login unchanged, naming the login and the reason.

Root login stays off by default, also on the hypervisor: a single Proxmox VE node needs no root
SSH (its web shell logs in locally). A Proxmox cluster does (join, migration): set
``sshd_permit_root_login = "prohibit-password"`` on its nodes.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import python, systemd

from tasks.base import admin_user
from tasks.base.ssh_server import CHECK
from tasks.common import logins
from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.host_keys import endpoint_of

DATA = Schema(
    "ssh_login",
    Key(
        "sshd_permit_root_login",
        Str(choices=("no", "prohibit-password")),
        "no",
        "Root SSH login: off, or by key only (a Proxmox cluster's nodes need it).",
    ),
)

# Read before 10-homelab.conf and any other drop-in: sshd keeps the first value of a keyword.
DROP_IN = "/etc/ssh/sshd_config.d/05-homelab-login.conf"


def reached_as() -> str:
    """The user pyinfra logged in to this host as."""
    return str(host.data.get("ssh_user") or "root")


@deploy("SSH login", data_defaults={**DATA.defaults(), **logins.DATA.defaults()})
def ssh_login() -> None:
    settings = DATA.read(host)
    admin = admin_user.DATA.read(host)
    record = logins.DATA.read(host)
    if reached_as() != admin.admin_user:
        endpoint = endpoint_of(host)
        python.call(
            name=f"Admin login proven: {admin.admin_user} by SSH key, with sudo",
            function=logins.prove_admin_login,
            host_name=host.name,
            hostname=endpoint.hostname,
            port=endpoint.port,
            user=admin.admin_user,
            key_file=host.data.get("ssh_key"),
            key_password=host.data.get("ssh_key_password"),
            known_hosts_file=endpoint.known_hosts_file,
            record_directory=record.login_record_directory,
            sudo_without_password=admin.admin_sudo_nopasswd,
        )
    elif logins.recorded_user(record.login_record_directory, host.name) != admin.admin_user:
        # Reached as the admin with sudo (the VM's first login is cloud-init's admin user):
        # this run is the proof; record it, as a proven login is recorded everywhere else.
        python.call(
            name=f"Admin login recorded: {admin.admin_user} (this run logged in with it)",
            function=logins.write_record,
            directory=record.login_record_directory,
            name_of_host=host.name,
            user=admin.admin_user,
            address=endpoint_of(host).hostname,
        )
    allow_groups = [admin.admin_group]
    if settings.sshd_permit_root_login != "no":
        allow_groups.append("root")
    installed = checked_template(
        name=f"SSH login: the admin group, root {settings.sshd_permit_root_login}",
        template="sshd-homelab-login.conf.j2",
        dest=DROP_IN,
        mode="644",
        check=f"'{CHECK}'",
        permit_root_login=settings.sshd_permit_root_login,
        allow_groups=" ".join(allow_groups),
    )
    systemd.service(
        name="Reload sshd for who may log in",
        service="ssh",
        running=None,
        reloaded=True,
        _if=installed.did_change,
    )
