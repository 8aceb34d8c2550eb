"""Security updates: unattended-upgrades for the security archive only, never a reboot.

Reads ``security_updates_mail`` (where unattended-upgrades mails its report; None: no mail) and
``security_updates_mail_only_on_error``. Reboots stay deliberate here: a kernel update waits
for the operator (the snapshot guard and the boot order matter more than a day's delay).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.server import Date
from pyinfra.operations import apt, files, server

from tasks.base import base_packages
from tasks.common.datamodel.forms import Bool, Optional, Str
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.facts import UnattendedUpgradesPending
from tasks.common.templating import template_path

# apt.update(cache_time=...) keeps the time of the last refresh here.
APT_STAMP = "/var/lib/apt/periodic/update-success-stamp"

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
        "security_updates_apply_on_rollout",
        Bool(),
        True,
        "Apply waiting security updates during a rollout (as unattended-upgrades would that"
        " night; never reboots).",
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
    if settings.security_updates_apply_on_rollout and _updates_waiting():
        server.shell(
            name="Apply waiting security updates now (same rules, no reboot)",
            commands=["unattended-upgrade"],
        )


def _updates_waiting() -> bool:
    """Whether unattended-upgrades has work now. Where it is not installed yet, or where the
    package lists are about to be refreshed earlier in this run (they are stale), it is asked
    after the refresh: the next run, with fresh lists, then finds nothing to do."""
    pending = host.get_fact(UnattendedUpgradesPending)
    if pending:
        return True
    stamp = host.get_fact(File, path=APT_STAMP)
    max_age = base_packages.DATA.read(host).apt_cache_valid_seconds
    if pending is None or not stamp:
        return True
    # As apt.update does: the stamp's mtime is naive UTC, the host's Date is zone-aware.
    now = datetime.fromtimestamp(host.get_fact(Date).timestamp(), UTC)
    return (now.replace(tzinfo=None) - stamp["mtime"]).total_seconds() > max_age
