"""The table of data keys and secrets (docs/data-keys.md), made from the declarations themselves.

``python -m tasks.common.datamodel.docs`` prints the tables;
``--update docs/data-keys.md`` (what ``make docs`` runs) rewrites the text
between ``<!-- data-keys:start -->`` and ``<!-- data-keys:end -->`` in that file, and
``--check docs/data-keys.md`` fails when that text is not what the declarations give.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tasks.common.datamodel.registry import all_schemas, secret_specs

START = "<!-- data-keys:start -->"
END = "<!-- data-keys:end -->"


class MarkersError(ValueError):
    """The file lacks the markers, or has them out of order or more than once."""


def _cell(text: Any) -> str:
    """Text for one table cell: one line, with ``|`` escaped (GFM needs it in code spans too)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _text(text: Any) -> str:
    """Plain text for a cell: also escape what Markdown would read as markup."""
    for char in "\\`*":
        text = str(text).replace(char, "\\" + char)
    return _cell(str(text).replace("&", "&amp;").replace("<", "&lt;"))


def _code(text: Any) -> str:
    """A code span for a cell (a backtick inside needs the double-backtick form)."""
    text = _cell(text)
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return [_row(header), _row("---" for _ in header), *(_row(row) for row in rows)]


def keys_markdown() -> str:
    """Markdown: a table of every declared key, then a table of the secrets."""
    key_rows = []
    for schema in all_schemas():
        for key in schema:
            default = "(required)" if key.required else _code(repr(key.default))
            key_rows.append(
                (
                    _code(key.name),
                    _text(schema.owner),
                    _text(", ".join(key.groups) or "all"),
                    default,
                    _text(key.form.description),
                    _text(key.doc),
                )
            )
    secret_rows = [
        (_code(spec.name), _text(", ".join(spec.groups) or "all"), _text(spec.doc))
        for spec in secret_specs()
    ]
    lines = [
        *_table(("Key", "Task", "Applies to", "Default", "Form", "Meaning"), key_rows),
        "",
        "Secrets, in the secrets file (`secrets.toml`, or the file `HOMELAB_SECRETS_FILE` names)"
        " or as `HOMELAB_SECRET_<NAME>` in the environment:",
        "",
        *_table(("Secret", "Needed by", "Meaning"), secret_rows),
    ]
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, body: str) -> str:
    """``text`` with everything between the markers replaced by ``body``."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise MarkersError(f"expected exactly one {START} and one {END}")
    head, rest = text.split(START)
    if END not in rest:
        raise MarkersError(f"{END} comes before {START}")
    _, tail = rest.split(END)
    return f"{head}{START}\n\n{body.strip()}\n\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.common.datamodel.docs", description=__doc__
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--update", metavar="FILE", type=Path, help="rewrite FILE's table")
    action.add_argument("--check", metavar="FILE", type=Path, help="fail if FILE's is stale")
    args = parser.parse_args(argv)

    body = keys_markdown()
    path = args.update or args.check
    if path is None:
        sys.stdout.write(body)
        return 0
    try:
        text = path.read_text(encoding="utf-8")
        new = replace_between_markers(text, body)
    except (OSError, MarkersError) as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"{path}: the table of data keys is stale; run make docs", file=sys.stderr)
            return 1
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: table of data keys updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
