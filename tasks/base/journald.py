"""Persistent journal with a size cap, so logs survive a reboot and never fill the disk.

Reads ``journald_max_use`` and ``journald_max_file_size``.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from tasks.common.datamodel.forms import Size
from tasks.common.datamodel.keys import Key, Schema
from tasks.common.templating import template_path

DATA = Schema(
    "journald",
    Key("journald_max_use", Size(minimum=16 * 1024**2), "1G", "Most disk the journal may use."),
    Key(
        "journald_max_file_size",
        Size(minimum=1024**2),
        "64M",
        "Size at which a journal file is rotated.",
    ),
)


def _mebibytes(size: int) -> str:
    return f"{max(1, size // 1024**2)}M"


@deploy("Persistent journal", data_defaults=DATA.defaults())
def journald() -> None:
    settings = DATA.read(host)
    journal_dir = files.directory(
        name="Journal directory (makes the journal persistent)",
        path="/var/log/journal",
        user="root",
        group="systemd-journal",
        mode="2755",
    )
    config = files.template(
        name="Journal size cap",
        src=template_path("journald-homelab.conf.j2"),
        dest="/etc/systemd/journald.conf.d/10-homelab.conf",
        mode="644",
        max_use=_mebibytes(settings.journald_max_use),
        max_file_size=_mebibytes(settings.journald_max_file_size),
    )
    server.shell(
        name="Restart journald and move the journal to disk",
        commands=["systemctl restart systemd-journald", "journalctl --flush"],
        _if=lambda: journal_dir.did_change() or config.did_change(),
    )
