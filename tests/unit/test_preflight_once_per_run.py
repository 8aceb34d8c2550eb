"""The data and host-key checks run once per pyinfra run, keyed by the run's own State.

pyinfra's ``context.state`` is a proxy that compares and hashes as whichever State is current
and never goes away: kept in a WeakSet it stays there for ever, and a later run whose State
happens to reuse a freed State's address would count as checked (a plan test met exactly that:
bad data that the check should have stopped reached a task).
"""

from __future__ import annotations

import gc

from pyinfra.api import Config, Inventory, State
from pyinfra.context import ContextObject, ctx_state

from tasks.common import host_keys
from tasks.common.datamodel import preflight


def test_each_check_remembers_the_run_itself_not_pyinfras_proxy(monkeypatch) -> None:
    monkeypatch.setattr(preflight, "check_views", lambda *args, **kwargs: None)
    monkeypatch.setattr(host_keys, "trust_problems", lambda *args, **kwargs: [])
    state = State(Inventory((["@local"], {})), Config())
    with ctx_state.use(state):
        preflight.require_valid_data()
        host_keys.require_trusted_host_keys()
    for checked in (preflight._checked_states, host_keys._checked_states):
        assert any(item is state for item in checked)
        assert not any(isinstance(item, ContextObject) for item in checked)
    del state
    gc.collect()
    for checked in (preflight._checked_states, host_keys._checked_states):
        assert not any(isinstance(item, State) for item in checked), "gone with its run"
