"""Test-suite options shared by every layer.

``--shard K/N`` keeps every N-th collected test starting at the K-th (0-based), so N pytest
processes, one per shard, run a suite side by side on N cores without a plugin: ``make
test-fast`` runs the unit and plan tests this way.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard",
        default=None,
        metavar="K/N",
        help="run only the tests whose position modulo N is K (0 <= K < N)",
    )


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard {text!r}: expected K/N, such as 0/2") from None
    if not 0 <= index < count:
        raise pytest.UsageError(f"--shard {text!r}: expected 0 <= K < N")
    return index, count


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    text = config.getoption("--shard")
    if text is None:
        return
    index, count = _shard(text)
    kept = [item for position, item in enumerate(items) if position % count == index]
    dropped = [item for position, item in enumerate(items) if position % count != index]
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
