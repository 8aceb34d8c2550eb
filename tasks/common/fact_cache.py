"""One answer per fact until something runs: the same fact is not asked twice over SSH.

pyinfra 3 keeps no fact cache: every ``host.get_fact`` is one command on the host, and every
operation asks its facts twice, once to plan (``--dry`` shows that plan) and once more when it
runs. A deploy asks the same facts many times over (the package list for every ``apt.packages``,
a directory's state for every file in it), so a no-change rollout of ageis-node sent about
2 x 700 fact commands where some 270 different answers exist.

This cache keeps each answer (per host, fact, arguments and connection arguments such as
``_sudo``) and hands out copies, until anything runs: every command an operation executes on
any host (a shell command, an upload, a download, an rsync) clears the cache before and after
it runs, and no answer is cached or reused while a Python callback (``python.call``) runs, since
a callback may change a host in ways no command shows (an API call). So an answer is reused only
while nothing has run anywhere since it was read: exactly the window in which asking again
returns the same state, unless something outside the rollout changes the host meanwhile.

``HOMELAB_FACT_CACHE=0`` in the environment turns it off (the benchmark's baseline). It wraps
two pyinfra internals, ``pyinfra.api.host.get_fact`` and the ``execute`` of pyinfra's command
classes; :func:`supported` checks they are as expected (a unit test fails on a pyinfra that
changed them) and :func:`enable` leaves pyinfra alone, with a warning, if they are not.
"""

from __future__ import annotations

import copy
import functools
import os
import weakref
from collections.abc import Callable
from typing import Any

from pyinfra import logger

ENV_SWITCH = "HOMELAB_FACT_CACHE"

# Per pyinfra State: key -> answer. Weak, so a finished State (a plan test's) takes its cache.
_caches: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], Any]] = weakref.WeakKeyDictionary()
_callbacks_running = 0
# Counts clears: an answer read while a clear happened may predate what ran, so it is not kept.
_generation = 0
_installed = False


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
    if not callable(getattr(facts, "_handle_fact_kwargs", None)):
        return "pyinfra.api.facts._handle_fact_kwargs is gone"
    for name in ("StringCommand", "FileUploadCommand", "FileDownloadCommand", "RsyncCommand"):
        if not callable(getattr(getattr(command, name, None), "execute", None)):
            return f"pyinfra.api.command.{name}.execute is gone"
    if not callable(getattr(getattr(command, "FunctionCommand", None), "execute", None)):
        return "pyinfra.api.command.FunctionCommand.execute is gone"
    return None


def clear() -> None:
    """Forget every answer of every run (something ran on a host)."""
    global _generation
    _generation += 1
    for cache in list(_caches.values()):
        cache.clear()


def _key(state: Any, host: Any, cls: type, args: Any, kwargs: Any) -> tuple[str, ...]:
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
    from pyinfra.api.facts import _handle_fact_kwargs

    fact_kwargs, global_kwargs = _handle_fact_kwargs(state, host, cls, args, kwargs)
    connection = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
    # getcallargs names the fact instance too ("self"), a new object at every ask.
    arguments = {k: v for k, v in fact_kwargs.items() if k != "self"}
    return (
        host.name,
        f"{cls.__module__}.{cls.__qualname__}",
        repr(sorted(arguments.items())),
        repr(sorted(connection.items())),
    )


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
        key = _key(state, host, cls, args, kwargs)
        if key not in cache:
            generation = _generation
            answer = ask()
            # A command that ran while this fact was being read (another host's greenlet)
            # cleared the cache; the answer may predate it, so it is not kept.
            if _callbacks_running == 0 and _generation == generation:
                cache[key] = copy.deepcopy(answer)
            return answer
        return copy.deepcopy(cache[key])

    return get_fact


def _wrap_execute(original: Callable[..., Any], callback: bool) -> Callable[..., Any]:
    @functools.wraps(original)
    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        global _callbacks_running
        clear()
        if callback:
            _callbacks_running += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            if callback:
                _callbacks_running -= 1
            clear()

    return execute


def _install() -> None:
    global _installed
    from pyinfra.api import command
    from pyinfra.api import host as host_module

    host_module.get_fact = _wrap_get_fact(host_module.get_fact)  # type: ignore[attr-defined]
    for name in ("StringCommand", "FileUploadCommand", "FileDownloadCommand", "RsyncCommand"):
        cls = getattr(command, name)
        cls.execute = _wrap_execute(cls.execute, callback=False)
    command.FunctionCommand.execute = _wrap_execute(  # type: ignore[method-assign]
        command.FunctionCommand.execute, callback=True
    )
    _installed = True


def enable(state: Any) -> bool:
    """Cache facts for the run ``state``; False (and pyinfra untouched) when switched off by
    ``HOMELAB_FACT_CACHE=0`` or when pyinfra's internals are not the expected ones."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    if not _installed:
        problem = supported()
        if problem:
            logger.warning(f"fact cache off: {problem}; every fact is asked each time")
            return False
        _install()
    if state not in _caches:
        _caches[state] = {}
    return True
