"""Plan harness: run the real deploy files against simulated hosts, with no network at all.

Test double: ``FactTable`` answers pyinfra's fact requests from hand-written facts modelled on
the real machines (a Proxmox VE 9 host with the R9700, the Ubuntu 24.04 VM, the Debian 13
embedder; ``machines.py``), in place of the shell commands pyinfra would run over SSH.
Everything else is the real code: the real inventory file and group_data/, the real deploy
files, pyinfra's real operations.
The result is the plan: per host, the operations and the exact commands they would run.

A fact the table does not know is an error (``MissingFact``), never a silent default, so a
task that starts reading a new fact makes its plan test say so.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from pyinfra.api import Config, State
from pyinfra.api.command import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state
from pyinfra_cli.inventory import make_inventory_from_files
from pyinfra_cli.util import load_deploy_file

from tasks.common import logins

REPO = Path(__file__).resolve().parents[2]

FactAnswer = Any | Callable[[Mapping[str, Any]], Any]


class MissingFact(LookupError):
    """The deploy asked a fact the simulated host has no answer for."""


@dataclass
class FactTable:
    """Facts of one simulated machine: fact class name -> answer (or callable of kwargs)."""

    facts: dict[str, FactAnswer]
    asked: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def answer(self, fact_cls: type, kwargs: Mapping[str, Any]) -> Any:
        name = fact_cls.__name__
        self.asked.append((name, dict(kwargs)))
        if name not in self.facts:
            raise MissingFact(f"no fact {name}({dict(kwargs)})")
        answer = self.facts[name]
        return answer(kwargs) if callable(answer) else answer


@dataclass
class PlannedOp:
    """One operation on one host: its name and the commands it would run."""

    name: str
    commands: list[str]
    conditional: bool

    @property
    def changes(self) -> bool:
        return bool(self.commands)


@dataclass
class Plan:
    ops: dict[str, list[PlannedOp]]
    # Per host, the facts its table answered: each is one remote command in a real run
    # without the fact cache (tasks/common/fact_cache.py) ...
    facts_asked: dict[str, int] = field(default_factory=dict)
    # ... and the different ones (fact and arguments): with it, each is one line of the
    # host's one batched command, and no command of its own.
    distinct_facts_asked: dict[str, int] = field(default_factory=dict)

    def for_host(self, name: str) -> list[PlannedOp]:
        return self.ops[name]

    def changing(self, name: str) -> list[PlannedOp]:
        return [op for op in self.ops[name] if op.changes]

    def commands(self, name: str) -> list[str]:
        return [command for op in self.ops[name] for command in op.commands]

    def op(self, name: str, op_name: str) -> PlannedOp:
        for op in self.ops[name]:
            if op_name in op.name:
                return op
        raise KeyError(f"{name} has no operation named like {op_name!r}")

    def upload(self, name: str, dest: str) -> str:
        """The content the plan uploads to ``dest`` on host ``name`` (fails when there is none)."""
        uploaded = self.upload_or_none(name, dest)
        if uploaded is None:
            raise AssertionError(f"{name}: nothing is uploaded to {dest}")
        return uploaded

    def upload_or_none(self, name: str, dest: str) -> str | None:
        for command in self.commands(name):
            if command.startswith(f"upload {dest}\n"):
                return command.split("\n", 1)[1]
        return None


# Controller-side functions that log in to the host or write this controller's login records:
# planned, never run by a plan test.
CONNECTING_FUNCTIONS = (logins.prove_admin_login, logins.write_record)

# The inventory file's last line: copies of the inventory put their changes before it.
INVENTORY_FINAL = "log_in_as_recorded(globals(), check_inventory_file(__file__))"


def inventory_copy(directory: Path, change: str) -> str:
    """A copy of the real inventory in ``directory`` with the code ``change`` run just before
    it validates its data; the copy's path."""
    text = (REPO / "inventory.py").read_text()
    assert text.rstrip().endswith(INVENTORY_FINAL)
    path = directory / "inventory.py"
    path.write_text(text.rstrip()[: -len(INVENTORY_FINAL)] + change + INVENTORY_FINAL + "\n")
    return str(path)


def _render(command: Any) -> str:
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        src = command.src
        content = src.getvalue() if hasattr(src, "getvalue") else Path(src).read_text()
        if isinstance(content, bytes):
            content = content.decode()
        return f"upload {command.dest}\n{content}"
    return repr(command)


@contextmanager
def _environment(home: Path, secrets: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ["HOME"] = str(home)
    os.environ.pop("HOMELAB_SECRETS_FILE", None)
    for name, value in secrets.items():
        os.environ[f"HOMELAB_SECRET_{name.upper()}"] = value
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def plan(
    deploy_file: str,
    facts: Mapping[str, FactTable],
    *,
    home: Path,
    inventory_file: str = "inventory.py",
    secrets: Mapping[str, str] | None = None,
    limit: list[str] | None = None,
    override_data: Mapping[str, Any] | None = None,
    run_python: bool = False,
) -> Plan:
    """Plan ``deploy_file`` over ``inventory_file`` with each host's facts from ``facts``.

    ``home`` is the controller's home directory as the deploy sees it (where
    ``~/.ssh/id_ed25519.pub`` is read from). ``override_data`` sets data keys on every host,
    as pyinfra's ``--data`` does. ``run_python`` also runs, in order, the functions of the
    planned ``python.call`` operations (controller-side work such as Proxmox API calls, against
    the API test double); shell commands are never run. A function that raises fires the
    host's ``operation_host_error`` callbacks, as a failed Python step does in a run.
    """
    with _environment(home, secrets or {}):
        with ctx_state.use(State()):
            inventory = make_inventory_from_files(
                inventory_file, override_data=dict(override_data or {}), cwd=str(REPO)
            )
        hosts = [h.name for h in inventory if limit is None or h.name in limit]
        missing = [name for name in hosts if name not in facts]
        if missing:
            raise MissingFact(f"no fact table for hosts {missing}")
        # One pyinfra state per host: pyinfra merges the names of operations that sit at the
        # same place in different hosts' deploys, so a shared state would mislabel them.
        result = Plan(
            {
                name: _plan_host(
                    deploy_file,
                    inventory_file,
                    name,
                    facts[name],
                    override_data,
                    run_python,
                    peers={other: facts[other] for other in hosts if other != name},
                )
                for name in hosts
            }
        )
        result.facts_asked = {name: len(facts[name].asked) for name in hosts}
        result.distinct_facts_asked = {
            name: len({(fact, repr(sorted(kw.items()))) for fact, kw in facts[name].asked})
            for name in hosts
        }
        return result


def host_data(
    name: str, *, home: Path, secrets: Mapping[str, str], inventory_file: str = "inventory.py"
) -> dict[str, Any]:
    """Host ``name``'s data as pyinfra merges it when the inventory loads (connection keys and
    the login chosen for it included), with ``home`` as the controller's home directory."""
    with _environment(home, secrets), ctx_state.use(State()):
        inventory = make_inventory_from_files(inventory_file, cwd=str(REPO))
        return dict(inventory.get_host(name).data.dict())


def _plan_host(
    deploy_file: str,
    inventory_file: str,
    name: str,
    facts: FactTable,
    override_data: Mapping[str, Any] | None,
    run_python: bool = False,
    peers: Mapping[str, FactTable] | None = None,
) -> list[PlannedOp]:
    """Plan ``name``; ``peers`` are the other hosts of the run: connected (pyinfra's
    activated hosts), so a deploy may read their facts, but not planned here."""
    peers = peers or {}
    state = State()
    config = Config()
    with ctx_state.use(state):
        inventory = make_inventory_from_files(
            inventory_file, override_data=dict(override_data or {}), cwd=str(REPO)
        )
    host = inventory.get_host(name)
    state.init(inventory, config, initial_limit=[host])
    state.activate_host(host)  # what connecting would do, without connecting
    state.activated_hosts.update(h for h in inventory if h.name in peers)
    state.set_stage(StateStage.Prepare)

    def table_of(fact_host: Host) -> FactTable:
        return facts if fact_host.name == name else peers[fact_host.name]

    with _simulated(state, inventory, config, table_of):
        load_deploy_file(state, str(REPO / deploy_file))
        planned = []
        for op_hash in state.get_op_order():
            if op_hash not in state.ops[host]:
                continue
            data = state.ops[host][op_hash]
            with ctx_host.use(host):
                generated = list(data.command_generator())
                commands = [_render(c) for c in generated]
                for command in generated if run_python else ():
                    # Our python.call functions run (against the API double); pyinfra's own
                    # connection-level functions (taking state and host, as server.reboot's
                    # do) and the admin login's proof (an SSH login to the host) would need
                    # a real connection and are only planned, as is its record.
                    if (
                        isinstance(command, FunctionCommand)
                        and not _takes_state_and_host(command.function)
                        and command.function not in CONNECTING_FUNCTIONS
                    ):
                        # As in a run: operations called inside the function execute at once.
                        state.is_executing = True
                        try:
                            command.function(*command.args, **command.kwargs)
                        except Exception:
                            # As pyinfra does when a Python step fails: the host's error
                            # callbacks fire (the snapshot guard's rollback), the run stops.
                            state.trigger_callbacks("operation_host_error", host, op_hash, 0, 0)
                            raise
                        finally:
                            state.is_executing = False
            op_name = " / ".join(sorted(state.op_meta[op_hash].names))
            conditional = bool(data.global_arguments.get("_if"))
            planned.append(PlannedOp(op_name, commands, conditional))
    return planned


def fleet_order(
    deploy_file: str,
    facts: Mapping[str, FactTable],
    *,
    home: Path,
    secrets: Mapping[str, str],
    inventory_file: str = "inventory.py",
    override_data: Mapping[str, Any] | None = None,
) -> list[tuple[str, ...]]:
    """Plan ``deploy_file`` over every host in one pyinfra state, as the CLI does, and return
    the operations' names in the order pyinfra would run them (``state.get_op_order``, which
    fails when the hosts' operation orders form a cycle). Operations are identified the CLI's
    way, by the line numbers of their call stacks."""
    import pyinfra

    with _environment(home, secrets), mock.patch.object(pyinfra, "is_cli", True):
        state, config = State(), Config()
        with ctx_state.use(state):
            inventory = make_inventory_from_files(
                inventory_file, override_data=dict(override_data or {}), cwd=str(REPO)
            )
        missing = [h.name for h in inventory if h.name not in facts]
        if missing:
            raise MissingFact(f"no fact table for hosts {missing}")
        state.init(inventory, config)
        for each in inventory:
            state.activate_host(each)
        state.set_stage(StateStage.Prepare)

        with _simulated(state, inventory, config, lambda fact_host: facts[fact_host.name]):
            load_deploy_file(state, str(REPO / deploy_file))
            return [tuple(sorted(state.op_meta[h].names)) for h in state.get_op_order()]


@contextmanager
def _simulated(
    state: State, inventory: Any, config: Config, table_of: Callable[[Host], FactTable]
) -> Iterator[None]:
    """pyinfra's contexts for ``state``; each host's facts from its table, no connection."""

    def get_fact(fact_host: Host, fact_cls: type, *args: Any, **kwargs: Any) -> Any:
        return table_of(fact_host).answer(fact_cls, kwargs)

    with (
        ctx_state.use(state),
        ctx_inventory.use(inventory),
        ctx_config.use(config),
        mock.patch.object(Host, "get_fact", get_fact),
        mock.patch.object(Host, "connect", _refuse_connection),
    ):
        yield


def _takes_state_and_host(function: Any) -> bool:
    args = inspect.getfullargspec(function).args
    return "state" in args and "host" in args


def _refuse_connection(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a plan test tried to connect to a host")
