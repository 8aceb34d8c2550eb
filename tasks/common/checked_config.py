"""Config files that must pass a check before they go live (sshd, sudoers, nftables, ...).

The file is staged under ``/etc/homelab/staged/``; when the staged copy changed (or the live file
no longer matches it), the host-side
script ``files/install-checked-config`` runs the check on it and only then installs it. A
failing check leaves the live file untouched, puts a copy of the live file in the staged copy's
place (removes it when there is no live file), and fails the run with the check's output: the
next run with the same bad input uploads and checks it again, and a run whose input matches
the live file again (the mistake undone) changes nothing.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Sha1File
from pyinfra.operations import files, server

from tasks.common.templating import file_path, template_path

STAGING_DIR = "/etc/homelab/staged"
INSTALLER = "/usr/local/sbin/install-checked-config"


def checked_template(
    *, name: str, template: str, dest: str, mode: str, check: str, **variables: Any
) -> OperationMeta:
    """Render ``template`` to ``dest`` once ``check`` (with ``{}`` for the file) accepts it.

    Returns the operation that installs the file, so callers can gate a reload on it.
    """
    files.directory(name="Staging directory for checked configs", path=STAGING_DIR, mode="700")
    files.put(
        name="Install the checked-config installer",
        src=file_path("install-checked-config"),
        dest=INSTALLER,
        mode="755",
    )
    staged_path = f"{STAGING_DIR}/{dest.strip('/').replace('/', '_')}"
    staged = files.template(
        name=f"{name} (staged)",
        src=template_path(template),
        dest=staged_path,
        mode="600",
        **variables,
    )
    # A live file edited by hand (it differs from the last staged copy) is put back too.
    drifted = host.get_fact(Sha1File, path=dest) != host.get_fact(Sha1File, path=staged_path)
    return server.shell(
        name=f"{name} (checked, installed)",
        commands=[f"{INSTALLER} {staged_path} {dest} {mode} {check}"],
        _if=None if drifted else staged.did_change,
    )
