"""One answer per fact until something runs: the same fact is not asked twice over SSH.

pyinfra 3 keeps no fact cache: every ``host.get_fact`` is one command on the host, and every
operation asks its facts twice, once to plan (``--dry`` shows that plan) and once more when it
runs. A deploy asks the same facts many times over (the package list for every ``apt.packages``,
a directory's state for every file in it), so a no-change rollout of ageis-node sent about
2 x 700 fact commands where some 270 different answers exist.

This cache keeps each answer (per host, fact, arguments and connection arguments such as
``_sudo``) and hands out copies, until something runs that may change it: a shell command, an
rsync or a file copied to or from a host clears that host's answers before and after it runs
(facts read their own host's files, packages and units); a shell command or an rsync also
clears, on every host, the answers of facts that read another host's state (a fact class with
``reads_other_hosts = True``: pgBackRest's repository on pve, the tailnet); and no answer is
cached or reused while a Python callback (``python.call``) runs, since a callback may change
any host in ways no command shows (an API call), and every answer goes when one has run. So
an answer is reused only while nothing that could change it has run since it was read: the
window in which asking again returns the same state, unless something outside the rollout
changes the host meanwhile.

**Asked in one command.** Each run writes down, per host, which facts it asked (a journal on
the controller, ``HOMELAB_FACT_JOURNAL`` or ``~/.cache/homelab-as-code/facts``: fact class,
arguments, connection arguments; no answers). The next run, before its first operation, sends
each host all the facts of its journal as one shell script, every host at once, and caches the
answers it can take as they are: a fact whose command exits 0 and whose output its own
``process`` reads, exactly as pyinfra would. Anything else (a fact that failed, a missing
command, arguments that do not survive the journal unchanged) is left to pyinfra to ask as
usual. A fact the deploy no longer asks costs one command in the script, nothing more. The
script goes to the shell's standard input; the facts of one kind (files' states and checksums,
units' states: most of a host's facts) are asked in one command per kind, each fact reading
its own lines of the output with its own ``process`` (tasks/common/fact_combiners.py;
tests/lab/test_fact_batch.py compares the answers with pyinfra's own on the lab's hosts).

**Asked again in one command after a change.** When something ran on a host and the deploy
then asks a fact of that host's journal that the cache no longer has, every journal fact the
cache lacks is asked in one command again (the rest of the run most likely asks them too), at
most ``REFETCH_LIMIT`` times per host and run (``HOMELAB_FACT_REFETCH`` sets another count, 0
none): a run that changes one file pays one more batch per host, not one command per fact; a
run that changes much falls back to asking one by one.

``HOMELAB_FACT_CACHE=0`` in the environment turns it off (the benchmark's baseline). It wraps
two pyinfra internals, ``pyinfra.api.host.get_fact`` and the ``execute`` of pyinfra's command
classes; :func:`supported` checks they are as expected (a unit test fails on a pyinfra that
changed them) and :func:`enable` leaves pyinfra alone, with a warning, if they are not.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import importlib
import json
import os
import re
import secrets
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pyinfra import logger

from tasks.common import fact_combiners

ENV_SWITCH = "HOMELAB_FACT_CACHE"
ENV_JOURNAL = "HOMELAB_FACT_JOURNAL"
# How many batches after a change per host and run (0: none; the benchmark's baseline).
ENV_REFETCH = "HOMELAB_FACT_REFETCH"
# Connection arguments that hold a password: a fact asked with one is not journaled.
SECRET_CONNECTION_ARGUMENTS = ("_sudo_password", "_su_password")
DEFAULT_JOURNAL = "~/.cache/homelab-as-code/facts"
# A fact not asked again stays in its host's journal this long (seconds).
JOURNAL_KEEP_S = 14 * 86400
# Fact commands run this many at a time within a host's batch.
STREAMS = 4

# Per pyinfra State: key -> answer. Weak, so a finished State (a plan test's) takes its cache.
_caches: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], Any]] = weakref.WeakKeyDictionary()
_callbacks_running = 0
# Counts clears: an answer read while a clear happened may predate what ran, so it is not kept.
# Every answer (a callback ran), one host's answers, the answers of facts reading other hosts.
_generation = 0
_host_generations: dict[str, int] = {}
_remote_generation = 0
# The fact classes (as keys name them) that read another host's state: see reads_other_hosts.
_remote_facts: set[str] = set()
# After something ran on a host, its journal's facts not in the cache are asked again in one
# command when the next one is missed, this many times per host and run at most (a run that
# changes a lot asks one by one after that).
REFETCH_LIMIT = 4
# Per State: each host's journal (key -> spec, as read), and how many refetches it has had.
_journal_specs: weakref.WeakKeyDictionary[Any, dict[str, dict[tuple[str, ...], Any]]] = (
    weakref.WeakKeyDictionary()
)
_refetches: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()
# Per State and host: the keys a batch has answered (a fact whose command fails is not batched
# again: pyinfra asks it and reports why).
_answerable: weakref.WeakKeyDictionary[Any, dict[str, set[tuple[str, ...]]]] = (
    weakref.WeakKeyDictionary()
)
_installed = False
# Per State: where its journal goes, and what each host asked (key -> how to ask it again).
_journals: weakref.WeakKeyDictionary[Any, Path] = weakref.WeakKeyDictionary()
# Per State and host: set once that host's journal has been asked (pyinfra prepares hosts in
# greenlets of their own, so a host's deploy may ask a fact while its batch is under way).
_prefetched: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_asked: weakref.WeakKeyDictionary[Any, dict[str, dict[tuple[str, ...], dict[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)


def supported() -> str | None:
    """Why the pyinfra installed cannot be wrapped (None when it can)."""
    try:
        from pyinfra.api import command, facts
        from pyinfra.api import host as host_module
        from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS  # noqa: F401
    except ImportError as error:
        return f"pyinfra's internals moved: {error}"
    if not callable(getattr(host_module, "get_fact", None)):
        return "pyinfra.api.host.get_fact is gone"
    for name in ("_handle_fact_kwargs", "_make_command"):
        if not callable(getattr(facts, name, None)):
            return f"pyinfra.api.facts.{name} is gone"
    if not isinstance(getattr(facts, "_MISSING_COMMAND_MARKER", None), str):
        return "pyinfra.api.facts._MISSING_COMMAND_MARKER is gone"
    for name in ("StringCommand", "FileUploadCommand", "FileDownloadCommand", "RsyncCommand"):
        if not callable(getattr(getattr(command, name, None), "execute", None)):
            return f"pyinfra.api.command.{name}.execute is gone"
    if not callable(getattr(getattr(command, "FunctionCommand", None), "execute", None)):
        return "pyinfra.api.command.FunctionCommand.execute is gone"
    return None


def clear(host_name: str | None = None, other_hosts_too: bool = True) -> None:
    """Forget every answer of every run (a callback ran: it may change any host), or with
    ``host_name`` the answers of that host (something ran there) and, ``other_hosts_too``,
    every host's answers of facts that read other hosts (a command there may change what they
    read: a file copied to a host changes that host only)."""
    global _generation, _remote_generation
    if host_name is None:
        _generation += 1
        for cache in list(_caches.values()):
            cache.clear()
        return
    _host_generations[host_name] = _host_generations.get(host_name, 0) + 1
    if other_hosts_too:
        _remote_generation += 1
    for cache in list(_caches.values()):
        for key in [
            key
            for key in cache
            if key[0] == host_name or (other_hosts_too and key[1] in _remote_facts)
        ]:
            del cache[key]


def reads_other_hosts(cls: type) -> bool:
    """Whether a fact's answer depends on another host (``reads_other_hosts = True`` on its
    class): a command on any host may change it."""
    return bool(getattr(cls, "reads_other_hosts", False))


def _generation_of(host_name: str, remote: bool = False) -> tuple[int, int, int]:
    """Changes whenever an answer of ``host_name`` read before may be out of date (with
    ``remote``, an answer of a fact that reads other hosts)."""
    return _generation, _host_generations.get(host_name, 0), _remote_generation if remote else 0


def _key(state: Any, host: Any, cls: type, args: Any, kwargs: Any) -> tuple[str, ...]:
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
    from pyinfra.api.facts import _handle_fact_kwargs

    fact_kwargs, global_kwargs = _handle_fact_kwargs(state, host, cls, args, kwargs)
    connection = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
    # getcallargs names the fact instance too ("self"), a new object at every ask.
    arguments = {k: v for k, v in fact_kwargs.items() if k != "self"}
    name = f"{cls.__module__}.{cls.__qualname__}"
    if reads_other_hosts(cls):
        _remote_facts.add(name)
    return (
        host.name,
        name,
        repr(sorted(arguments.items())),
        repr(sorted(connection.items())),
    )


def _spec(state: Any, host: Any, cls: type, args: Any, kwargs: Any) -> dict[str, Any] | None:
    """How to ask this fact again in another run (JSON), or None when it cannot be written."""
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
    from pyinfra.api.facts import _handle_fact_kwargs

    fact_kwargs, global_kwargs = _handle_fact_kwargs(state, host, cls, args, kwargs)
    spec = {
        "fact": f"{cls.__module__}:{cls.__qualname__}",
        "args": {k: v for k, v in fact_kwargs.items() if k != "self"},
        "connection": {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS},
    }
    if any(spec["connection"].get(k) for k in SECRET_CONNECTION_ARGUMENTS):
        return None  # never written to disk; such a run asks as usual
    try:
        json.dumps(spec)
    except (TypeError, ValueError):
        return None
    return spec


def _record(state: Any, host: Any, cls: type, key: tuple[str, ...], args: Any, kwargs: Any) -> None:
    asked = _asked.get(state)
    if asked is None:
        return
    mine = asked.setdefault(host.name, {})
    if key not in mine:
        spec = _spec(state, host, cls, args, kwargs)
        if spec is not None:
            mine[key] = spec


def _fact_class(name: str) -> type | None:
    module_name, _, qualname = name.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def _journal_file(directory: Path, host: Any) -> Path:
    """One file per host and address: the lab's pve is not the real pve."""
    where = f"{host.name}@{host.data.get('ssh_hostname') or host.name}"
    return directory / f"{re.sub(r'[^A-Za-z0-9._@-]', '_', where)}.json"


def read_journal(path: Path) -> list[dict[str, Any]]:
    """A journal's entries, ``{"spec": ..., "asked": unix time}``; [] when unreadable."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("spec"), dict)]


def write_journals(now: float | None = None) -> None:
    """Write each run's journal: per host, how to ask each fact it asked (no answers). Facts
    this run did not ask (a deploy of another role) stay for ``JOURNAL_KEEP_S`` after they were
    last asked, so one role's run does not empty another's batch; but not those asked through a
    way of connecting this run did not use on the host (the first install logs in as root,
    every later run as the admin user with sudo: the root login's facts are never asked again)."""
    now = time.time() if now is None else now
    for state, directory in list(_journals.items()):
        del _journals[state]  # each run's journal is written once
        for host_name, asked in (_asked.get(state) or {}).items():
            if not asked:
                continue
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = _journal_file(directory, state.inventory.get_host(host_name))
            entries = {
                json.dumps(spec, sort_keys=True): {"spec": spec, "asked": now}
                for spec in asked.values()
            }
            connections = {
                json.dumps(spec["connection"], sort_keys=True) for spec in asked.values()
            }
            for old in read_journal(path):
                key = json.dumps(old["spec"], sort_keys=True)
                if (
                    key not in entries
                    and now - float(old.get("asked", 0)) < JOURNAL_KEEP_S
                    and json.dumps(old["spec"].get("connection"), sort_keys=True) in connections
                ):
                    entries[key] = old
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(list(entries.values())))
            os.chmod(temporary, 0o600)
            temporary.replace(path)


def batch_script(commands: Iterable[str], token: str, streams: int = STREAMS) -> str:
    """One shell script running every fact command, ``streams`` at a time (facts only read),
    then printing each one's output in order, followed by a line ``@@<token> <index> <exit
    status>@@`` (after a newline, so a last line without one stays a line of its own)."""
    listed = list(commands)
    parts = ["d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT"]
    for stream in range(streams):
        mine = [
            f'( {command} ) </dev/null >"$d/{index}" 2>/dev/null; '
            f"printf '\\n@@{token} {index} %d@@\\n' $? >>\"$d/{index}\""
            for index, command in enumerate(listed)
            if index % streams == stream
        ]
        if mine:
            parts.append("(\n" + "\n".join(mine) + "\n) &")
    parts.append("wait")
    parts.append('cd "$d" && cat ' + " ".join(str(i) for i in range(len(listed))))
    return "\n".join(parts) + "\n"


def split_batch(lines: list[str], token: str) -> dict[int, tuple[int, list[str]]]:
    """The batch's output: command index -> (exit status, output lines as pyinfra reads them
    from the command alone: the newline before each marker is the script's, not the fact's)."""
    marker = re.compile(rf"^@@{re.escape(token)} (\d+) (\d+)@@$")
    found: dict[int, tuple[int, list[str]]] = {}
    body: list[str] = []
    for line in lines:
        match = marker.match(line)
        if not match:
            body.append(line)
            continue
        if body and body[-1] == "":
            body.pop()
        found[int(match.group(1))] = (int(match.group(2)), body)
        body = []
    return found


def _fact_command(state: Any, host: Any, fact: Any, spec: dict[str, Any]) -> str | None:
    """The command pyinfra would run for ``fact`` (an instance: some facts keep their
    arguments for ``process``), as a string; None when this cache does not batch it (a shell
    of its own, preconditions)."""
    from pyinfra.api import StringCommand
    from pyinfra.api.facts import _MISSING_COMMAND_MARKER, _make_command

    if fact.shell_executable or fact.check_preconditions(state, host):
        return None

    def text(command: Any) -> str | None:
        if isinstance(command, StringCommand):
            return command.get_raw_value()
        return command if isinstance(command, str) else None

    command = text(_make_command(fact.command, dict(spec["args"])))
    required = _make_command(fact.requires_command, dict(spec["args"]))
    if command is None or not required:
        return command
    # As pyinfra guards it: the marker when the command the fact needs is missing.
    return (
        f"if command -v {text(required)} >/dev/null 2>&1; then ( {command} ); "
        f"else echo '{_MISSING_COMMAND_MARKER}'; fi"
    )


def _journal_entries(
    state: Any, host: Any, directory: Path
) -> dict[tuple[str, ...], tuple[Any, dict[str, Any], str]]:
    """The host's journal as the batch asks it: key -> (fact, spec, command), in its order."""
    path = _journal_file(directory, host)
    try:
        specs = [entry["spec"] for entry in read_journal(path)]
    except (KeyError, TypeError):
        return {}
    entries: dict[tuple[str, ...], tuple[Any, dict[str, Any], str]] = {}
    for spec in specs:
        try:
            cls = _fact_class(spec["fact"])
            if cls is None:
                continue
            key = _key(state, host, cls, [], {**spec["args"], **spec["connection"]})
            fact = cls()
            command = _fact_command(state, host, fact, spec)
        except Exception:  # a stale journal entry is skipped, never fatal
            continue
        # Only what comes back unchanged from the journal is asked on its behalf.
        if (
            command is None
            or _spec(state, host, cls, [], {**spec["args"], **spec["connection"]}) != spec
        ):
            continue
        entries[key] = (fact, spec, command)
    return entries


Entry = tuple[tuple[str, ...], Any, dict[str, Any], str]


def _ask_entries(
    state: Any,
    host: Any,
    cache: dict[tuple[str, ...], Any],
    entries: dict[tuple[str, ...], tuple[Any, dict[str, Any], str]],
) -> int:
    """Ask ``entries`` on ``host`` in one command per connection (the connections side by
    side); cache the answers pyinfra would have taken. Returns how many were cached. The
    script goes to the shell's standard input, not onto its command line: one command however
    many facts (a command-line argument stops at 128 KiB), and ``-vvv`` shows ``sh -s``."""
    import gevent

    groups: dict[str, list[Entry]] = {}
    for key, (fact, spec, command) in entries.items():
        groups.setdefault(json.dumps(spec["connection"], sort_keys=True), []).append(
            (key, fact, spec, command)
        )
    if len(groups) <= 1:
        return sum(_ask_group(state, host, cache, c, chunk) for c, chunk in groups.items())
    from pyinfra.context import ctx_host, ctx_state

    def ask_group(connection: str, chunk: list[Entry]) -> int:
        with ctx_state.use(state), ctx_host.use(host):  # a new greenlet has no context
            return _ask_group(state, host, cache, connection, chunk)

    asks = [gevent.spawn(ask_group, connection, chunk) for connection, chunk in groups.items()]
    gevent.joinall(asks, raise_error=True)
    return sum(ask.value or 0 for ask in asks)


def _ask_group(
    state: Any,
    host: Any,
    cache: dict[tuple[str, ...], Any],
    connection: str,
    chunk: list[Entry],
) -> int:
    """One command on ``host`` answering ``chunk``, facts asked with the same ``connection``
    arguments; the answers are cached. Returns how many."""
    from pyinfra.api.facts import _MISSING_COMMAND_MARKER

    answerable = _answerable.setdefault(state, {}).setdefault(host.name, set())
    plain: list[Entry] = []
    # Per combiner: its facts with the items each asks about, and all those items, once each.
    grouped: dict[str, list[tuple[Entry, list[str]]]] = {}
    for entry in chunk:
        found = fact_combiners.combined(entry[1], entry[2])
        if found is None:
            plain.append(entry)
        else:
            grouped.setdefault(found[0], []).append((entry, found[1]))
    items = {
        name: list(dict.fromkeys(item for _, asked in members for item in asked))
        for name, members in grouped.items()
    }
    commands = [command for _, _, _, command in plain]
    commands += [fact_combiners.COMBINERS[name].command(items[name]) for name in grouped]
    generation = _generation_of(host.name, remote=True)
    token = secrets.token_hex(8)  # no fact prints it: it marks where each output ends
    arguments = {**json.loads(connection), "_stdin": batch_script(commands, token)}
    started = time.monotonic()
    status, output = host.run_shell_command(
        "sh -s", print_input=state.print_fact_input, **arguments
    )
    # As pyinfra reports each fact it loads (with -v; tests/bench/rollout.py reads it).
    message = (
        f"{host.print_prefix}Loaded {len(chunk)} facts in one command"
        f" ({time.monotonic() - started:.2f}s)"
    )
    (logger.info if state.print_fact_info else logger.debug)(message)
    now = _generation_of(host.name, remote=True)
    if not status or generation[:2] != now[:2]:
        return 0
    answered: list[tuple[Entry, list[str]]] = []
    for index, (exit_status, lines) in split_batch(output.stdout_lines, token).items():
        if exit_status != 0 or lines == [_MISSING_COMMAND_MARKER]:
            continue
        if index < len(plain):
            answered.append((plain[index], lines))
            continue
        name = list(grouped)[index - len(plain)]
        combiner = fact_combiners.COMBINERS[name]
        parts = combiner.split(lines, items[name])
        for entry, asked in grouped[name] if parts is not None else []:
            answered.append((entry, combiner.join([parts[item] for item in asked])))
    cached = 0
    for (key, fact, _, _), lines in answered:
        if generation != now and reads_other_hosts(type(fact)):
            continue  # something ran elsewhere while it was read
        try:
            answer = fact.process(lines) if lines else fact.default()
            cache[key] = copy.deepcopy(answer)
        except Exception:  # pyinfra asks it again and reports it
            continue
        answerable.add(key)
        cached += 1
    return cached


def _prefetch_host(
    state: Any, host: Any, cache: dict[tuple[str, ...], Any], directory: Path
) -> int:
    """Ask one host the facts of its journal in one command per connection; cache the answers
    pyinfra would have taken. Returns how many were cached."""
    entries = _journal_entries(state, host, directory)
    _journal_specs.setdefault(state, {})[host.name] = entries
    return _ask_entries(state, host, cache, entries)


def _refetch(state: Any, host: Any, cache: dict[tuple[str, ...], Any], key: Any) -> bool:
    """``key`` is missed after something ran on the host: when the journal has it, ask every
    journal fact the cache lacks in one command (the rest of the run will most likely ask
    them too). True when ``key`` is now cached."""
    answerable = (_answerable.get(state) or {}).get(host.name) or set()
    if key not in answerable:  # never answered by a batch (not in the journal, or it fails)
        return False
    entries = (_journal_specs.get(state) or {}).get(host.name) or {}
    counts = _refetches.setdefault(state, {})
    limit = int(os.environ.get(ENV_REFETCH) or REFETCH_LIMIT)
    if counts.get(host.name, 0) >= limit:
        return False
    counts[host.name] = counts.get(host.name, 0) + 1
    missing = {k: v for k, v in entries.items() if k in answerable and k not in cache}
    try:
        _ask_entries(state, host, cache, missing)
    except Exception as error:  # the run goes on asking as usual
        logger.warning(f"{host.name}: facts not asked again in one command: {error}")
        return False
    return key in cache


def prefetch(state: Any, hosts: Iterable[Any], directory: Path) -> dict[str, int]:
    """Every host's journal at once (one greenlet per host): answers cached per host."""
    import gevent
    import gevent.event
    from pyinfra.context import ctx_host

    cache = _caches.get(state)
    if cache is None:
        return {}

    def one(host: Any) -> int:
        _prefetching.add(gevent.getcurrent())
        with ctx_host.use(host):
            try:
                return _prefetch_host(state, host, cache, directory)
            except Exception as error:  # the run goes on asking as usual
                logger.warning(f"{host.name}: facts not asked in one command: {error}")
                return 0
            finally:
                events[host.name].set()

    chosen = [h for h in hosts if h.connected]
    events = {host.name: gevent.event.Event() for host in chosen}
    _prefetched[state] = events
    # Not from pyinfra's pool: its slots are taken by the hosts' own deploys, which wait for these.
    greenlets = {host.name: gevent.spawn(one, host) for host in chosen}
    gevent.joinall(list(greenlets.values()))
    return {name: greenlet.value or 0 for name, greenlet in greenlets.items()}


_prefetching: weakref.WeakSet[Any] = weakref.WeakSet()


def _in_prefetch() -> bool:
    """Whether this greenlet is one asking a journal (it must never wait for itself)."""
    import gevent

    return gevent.getcurrent() in _prefetching


def _wrap_get_fact(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_fact(
        state: Any,
        host: Any,
        cls: type,
        args: Any = None,
        kwargs: Any = None,
        ensure_hosts: Any = None,
        apply_failed_hosts: bool = True,
    ) -> Any:
        cache = _caches.get(state)

        def ask() -> Any:
            return original(
                state,
                host,
                cls,
                args=args,
                kwargs=kwargs,
                ensure_hosts=ensure_hosts,
                apply_failed_hosts=apply_failed_hosts,
            )

        if cache is None or _callbacks_running or ensure_hosts is not None:
            return ask()
        done = _prefetched.get(state, {}).get(host.name)
        if done is not None and not done.is_set() and not _in_prefetch():
            done.wait()  # its batch answers this fact, most likely
        key = _key(state, host, cls, args, kwargs)
        _record(state, host, cls, key, args, kwargs)
        if key not in cache and not _in_prefetch() and _refetch(state, host, cache, key):
            return copy.deepcopy(cache[key])
        if key not in cache:
            remote = reads_other_hosts(cls)
            generation = _generation_of(host.name, remote)
            answer = ask()
            # A command that ran while this fact was being read (another host's greenlet)
            # cleared the cache; the answer may predate it, so it is not kept.
            if _callbacks_running == 0 and _generation_of(host.name, remote) == generation:
                # An answer that cannot be copied is asked each time.
                with contextlib.suppress(Exception):
                    cache[key] = copy.deepcopy(answer)
            return answer
        return copy.deepcopy(cache[key])

    return get_fact


def _wrap_execute(
    original: Callable[..., Any], callback: bool, reaches_other_hosts: bool = True
) -> Callable[..., Any]:
    """A command clears its own host's answers before and after it runs, and when it
    ``reaches_other_hosts`` (a shell command or rsync: a service other hosts use, the
    pgBackRest repository) every host's answers of facts that read other hosts; a file copied
    to or from a host changes that host only. A callback clears every answer (an API call can
    change any host)."""

    @functools.wraps(original)
    def execute(self: Any, state: Any, host: Any, *args: Any, **kwargs: Any) -> Any:
        global _callbacks_running

        def forget() -> None:
            if callback:
                clear()
            else:
                clear(host.name, other_hosts_too=reaches_other_hosts)

        forget()
        if callback:
            _callbacks_running += 1
        try:
            return original(self, state, host, *args, **kwargs)
        finally:
            if callback:
                _callbacks_running -= 1
            forget()

    return execute


def _install() -> None:
    global _installed
    from pyinfra.api import command
    from pyinfra.api import host as host_module

    host_module.get_fact = _wrap_get_fact(host_module.get_fact)  # type: ignore[attr-defined]
    for name in ("StringCommand", "FileUploadCommand", "FileDownloadCommand", "RsyncCommand"):
        cls = getattr(command, name)
        one_host = name in ("FileUploadCommand", "FileDownloadCommand")
        cls.execute = _wrap_execute(cls.execute, callback=False, reaches_other_hosts=not one_host)
    command.FunctionCommand.execute = _wrap_execute(  # type: ignore[method-assign]
        command.FunctionCommand.execute, callback=True
    )
    _installed = True


def enable(
    state: Any, journal: str | Path | None = None, hosts: Iterable[Any] | None = None
) -> bool:
    """Cache facts for the run ``state``; False (and pyinfra untouched) when switched off by
    ``HOMELAB_FACT_CACHE=0`` or when pyinfra's internals are not the expected ones. With a
    ``journal`` directory, the facts each host asks are written there at exit, and the facts
    written there by the previous run are asked first, one command per host (of ``hosts``,
    default every host of the inventory: the ones the deploy will work on)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    if not _installed:
        problem = supported()
        if problem:
            logger.warning(f"fact cache off: {problem}; every fact is asked each time")
            return False
        _install()
        atexit.register(write_journals)
    if state in _caches:
        return True
    _caches[state] = {}
    if journal is not None:
        directory = Path(journal).expanduser()
        _journals[state] = directory
        _asked[state] = {}
        prefetch(state, list(state.inventory if hosts is None else hosts), directory)
    return True


def journal_directory() -> Path:
    """Where the journal of asked facts is kept on this controller."""
    return Path(os.environ.get(ENV_JOURNAL) or DEFAULT_JOURNAL).expanduser()
