"""Stopping a run on bad data before any connection, and again at the start of every deploy.

``check_inventory_file`` is called at the end of an inventory file: pyinfra loads the inventory
(and ``group_data/``) before it connects to any host, so bad data stops the run there, with
every problem listed. ``require_valid_data`` repeats the check from a deploy file, where the
data pyinfra actually uses (``--data`` overrides included) is known.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tasks.common.datamodel.secrets import SecretsError, load_secrets
from tasks.common.datamodel.validate import HostView, format_errors, validate_hosts

_loading = False
# States already checked (weakly held: a plan test's next State may reuse a freed one's id()).
_checked_states: weakref.WeakSet[Any] = weakref.WeakSet()


class InvalidData(SystemExit):
    """Bad inventory data: exits with status 2 and the list of problems."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise InvalidData(message)


def views_of(hosts: Iterable[Any]) -> list[HostView]:
    """HostViews of pyinfra ``Host`` objects (name, groups, merged data)."""
    return [HostView(h.name, tuple(h.groups), h.data.dict()) for h in hosts]


def file_group(inventory_file: str) -> str:
    """The group pyinfra puts every host of an inventory file in: the file's name."""
    return Path(inventory_file).name.rsplit(".", 1)[0]


def check_views(views: list[HostView], source: str, file_groups: Iterable[str] = ()) -> None:
    try:
        secrets = load_secrets()
    except SecretsError as error:
        _fail(f"{error}; nothing was touched")
    errors = validate_hosts(views, secrets, file_groups)
    if errors:
        _fail(format_errors(errors, source))


def check_inventory_file(inventory_file: str) -> Any:
    """Load ``inventory_file`` the way pyinfra's CLI does and validate every host's data.

    Returns the loaded inventory (group data merged in), or None while pyinfra's loader runs
    the file again from inside this call.
    """
    global _loading
    if _loading:  # pyinfra's loader runs the inventory file again: do not recurse
        return None
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory_from_files

    _loading = True
    try:
        if ctx_state.isset():  # inside pyinfra's CLI
            inventory = make_inventory_from_files(inventory_file, cwd=os.getcwd())
        else:  # called on its own (make check-data): the loader needs a state to exist
            with ctx_state.use(State()):
                inventory = make_inventory_from_files(inventory_file, cwd=os.getcwd())
    finally:
        _loading = False
    check_views(views_of(inventory), inventory_file, (file_group(inventory_file),))
    return inventory


def require_valid_data() -> None:
    """From a deploy file: validate all hosts once per pyinfra run (state)."""
    from pyinfra.context import ctx_state

    # The run's own State: pyinfra's context proxy compares and hashes as whichever State is
    # current, and lives for ever, so a WeakSet holding it would take a later run whose State
    # reuses a freed one's address for a run already checked.
    state = ctx_state.get()
    if state in _checked_states:
        return
    views = views_of(state.inventory)
    # The inventory file's name is not known here: the group every host is in stands for it
    # (the file itself already checked its groups by name when it loaded).
    everywhere = set.intersection(*(set(view.groups) for view in views)) if views else set()
    check_views(views, "the inventory", everywhere)
    _checked_states.add(state)
