"""Two of pyinfra's per-operation costs on the controller, computed the same way, cheaper.

A no-change rollout of the whole lab plans some 400 operations per run on every host, and
profiling it (``python -m cProfile .venv/bin/pyinfra ...``) showed two pure functions of
pyinfra taking a large share of the controller's CPU:

- ``pyinfra.api.arguments.all_global_arguments`` evaluates ``typing.get_type_hints`` of one
  fixed class on every call (several thousand calls per run): its answer never changes, so it
  is computed once and handed out as a new list each time.
- ``pyinfra.api.util.get_operation_order_from_stack`` (an operation's identity: the line
  numbers of its call stack) builds ``inspect.stack()``, which reads every frame's source line
  from disk, and then asks ``getframeinfo`` again for each frame; it uses only each frame's file
  name and line number. This version asks ``getframeinfo(frame, context=0)`` (the same file
  name and line number, no source read) once per frame, with the same rules for which frames
  count. The operation order, and so every operation's identity, is unchanged (a unit test
  compares the two on the same stacks).

``HOMELAB_PYINFRA_SPEEDUPS=0`` leaves pyinfra as it is (the benchmark's baseline). Both are
installed only when pyinfra's functions are where this expects them (:func:`supported`).
"""

from __future__ import annotations

import importlib
import os
import sys
from inspect import getframeinfo
from typing import Any

from pyinfra import logger

ENV_SWITCH = "HOMELAB_PYINFRA_SPEEDUPS"
_installed = False
# pyinfra's own functions, kept when replaced (the tests compare against them).
ORIGINALS: dict[str, Any] = {}


def original(name: str) -> Any:
    """pyinfra's own ``name`` (``all_global_arguments``, ``get_operation_order_from_stack``)."""
    from pyinfra.api import arguments, util

    return ORIGINALS.get(name) or getattr(
        arguments if name == "all_global_arguments" else util, name
    )


def _modules() -> tuple[Any, ...]:
    """pyinfra's modules (``pyinfra.api.operation`` by name: the package exports a function of
    the same name)."""
    return tuple(
        importlib.import_module(f"pyinfra.api.{name}")
        for name in ("arguments", "facts", "operation", "util")
    )


def supported() -> str | None:
    """Why pyinfra's functions cannot be replaced (None when they can)."""
    try:
        arguments, facts, operation, util = _modules()
    except ImportError as error:
        return f"pyinfra's internals moved: {error}"
    for module, name in (
        (arguments, "all_global_arguments"),
        (facts, "all_global_arguments"),
        (util, "get_operation_order_from_stack"),
        (operation, "get_operation_order_from_stack"),
    ):
        if not callable(getattr(module, name, None)):
            return f"{module.__name__}.{name} is gone"
    if not isinstance(getattr(util, "PYINFRA_INSTALL_DIR", None), str):
        return "pyinfra.api.util.PYINFRA_INSTALL_DIR is gone"
    return None


def operation_order_from_stack(state: Any, frame: Any = None) -> list[int]:
    """``get_operation_order_from_stack``'s line numbers, from ``frame`` (default: the
    caller's) outwards."""
    import pyinfra
    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    frame = frame if frame is not None else sys._getframe(1)
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()  # outermost first, as pyinfra reverses inspect.stack()
    infos = [getframeinfo(each, context=0) for each in frames]
    start = 0
    # From the *first* frame of the deploy file being run; without one, pyinfra's loop ends on
    # its own frame (in pyinfra, so skipped): no frame counts.
    if state.current_deploy_filename:
        found = (
            n for n, info in enumerate(infos) if info.filename == state.current_deploy_filename
        )
        start = next(found, len(infos))
    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    for info in infos[start:]:
        if not info.filename.startswith(PYINFRA_INSTALL_DIR):
            line_numbers.append(info.lineno)
    return line_numbers


def install() -> bool:
    """Replace the two functions (once per process); False when switched off or unsupported."""
    global _installed
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    if _installed:
        return True
    problem = supported()
    if problem:
        logger.warning(f"pyinfra speedups off: {problem}")
        return False
    arguments, facts, operation, util = _modules()
    ORIGINALS["all_global_arguments"] = arguments.all_global_arguments
    ORIGINALS["get_operation_order_from_stack"] = util.get_operation_order_from_stack
    hints = arguments.all_global_arguments()

    def all_global_arguments() -> list[tuple[str, type]]:
        return list(hints)

    arguments.all_global_arguments = all_global_arguments
    facts.all_global_arguments = all_global_arguments  # type: ignore[attr-defined]
    util.get_operation_order_from_stack = operation_order_from_stack
    operation.get_operation_order_from_stack = operation_order_from_stack  # type: ignore[attr-defined]
    _installed = True
    return True
