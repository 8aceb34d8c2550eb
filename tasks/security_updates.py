"""Security updates: unattended-upgrades for the security archive only, never a reboot.

Reads ``security_updates_mail`` (where unattended-upgrades mails its report; None: no mail) and
``security_updates_mail_only_on_error``. Reboots stay deliberate here: a kernel update waits
for the operator (the snapshot guard and the boot order matter more than a day's delay).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from tasks.datamodel.forms import Bool, Optional, Str
from tasks.datamodel.keys import Key, Schema
from tasks.templating import template_path

EMAIL = Str(r"[^@\s]+@[^@\s]+", what='an e-mail address such as "ops@example.org"')

DATA = Schema(
    "security_updates",
    Key(
        "security_updates_mail",
        Optional(EMAIL),
        None,
        "Mail unattended-upgrades' reports here (needs a working MTA); None: journal only.",
    ),
    Key(
        "security_updates_mail_only_on_error",
        Bool(),
        True,
        "Mail only when an upgrade failed.",
    ),
)


@deploy("Security updates", data_defaults=DATA.defaults())
def security_updates() -> None:
    settings = DATA.read(host)
    apt.packages(
        name="Install unattended-upgrades",
        packages=["unattended-upgrades"],
        no_recommends=True,
    )
    files.template(
        name="Security archive only, no automatic reboot",
        src=template_path("unattended-upgrades-homelab.conf.j2"),
        dest="/etc/apt/apt.conf.d/52homelab-unattended-upgrades",
        mode="644",
        mail=settings.security_updates_mail,
        mail_report="only-on-error" if settings.security_updates_mail_only_on_error else "always",
    )
    files.template(
        name="Run unattended-upgrades daily",
        src=template_path("auto-upgrades.j2"),
        dest="/etc/apt/apt.conf.d/20auto-upgrades",
        mode="644",
    )
