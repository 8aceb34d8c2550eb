"""The table of data keys in docs/data-keys.md, made from the declarations."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tasks.common.datamodel import docs
from tasks.common.datamodel.registry import all_schemas, secret_specs

REPO = Path(__file__).resolve().parents[2]

README = """# Title

## Data keys

<!-- data-keys:start -->
old table
<!-- data-keys:end -->

## After
"""


def test_every_key_and_secret_has_a_row() -> None:
    text = docs.keys_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    names = [row.split("`")[1] for row in rows]
    keys = [key.name for schema in all_schemas() for key in schema]
    secrets = [spec.name for spec in secret_specs()]
    assert names == keys + secrets
    assert all(row.count(" | ") + 1 == 6 for row in rows[: len(keys)])


def test_rows_show_owner_groups_default_form_and_meaning() -> None:
    text = docs.keys_markdown()
    assert (
        "| `lan_address` | machine (inventory) | all | (required) "
        '| an IPv4 address such as "192.168.1.10" |'
    ) in text
    assert (
        "| `proxmox_api_port` | proxmox_api | hypervisor | `8006` | a whole number from 1 to"
        in text
    )
    assert "| `proxmox_api_secret` | hypervisor | the Proxmox password" in text


def test_cells_are_escaped() -> None:
    assert docs._text("a|b") == "a\\|b"
    assert docs._text("<host>.<domain>") == "&lt;host>.&lt;domain>"
    assert docs._text("x*y `z`") == "x\\*y \\`z\\`"
    assert docs._text("two\nlines") == "two lines"
    assert docs._code("a|b") == "`a\\|b`"
    assert docs._code("a`b") == "`` a`b ``"
    # A pattern with | in a form description stays inside its cell.
    for line in docs.keys_markdown().splitlines():
        if line.startswith("| `"):
            cells = line.replace("\\|", "").strip("|").split(" | ")
            assert len(cells) in (3, 6), line


def test_update_rewrites_only_between_the_markers(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README, encoding="utf-8")
    assert docs.main(["--check", str(readme)]) == 1
    assert docs.main(["--update", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text
    assert text.startswith("# Title\n\n## Data keys\n\n<!-- data-keys:start -->\n\n| Key |")
    assert text.endswith("|\n\n<!-- data-keys:end -->\n\n## After\n")
    assert docs.keys_markdown().strip() in text
    assert docs.main(["--update", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == text  # idempotent
    assert docs.main(["--check", str(readme)]) == 0


@pytest.mark.parametrize(
    "text",
    [
        "no markers\n",
        "<!-- data-keys:start -->\n",
        "<!-- data-keys:end -->\n<!-- data-keys:start -->\n",
        "<!-- data-keys:start -->\n<!-- data-keys:end -->\n<!-- data-keys:end -->\n",
    ],
)
def test_update_refuses_a_file_without_proper_markers(tmp_path, capsys, text: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    assert docs.main(["--update", str(readme)]) == 1
    assert readme.read_text(encoding="utf-8") == text
    assert str(readme) in capsys.readouterr().err


def test_prints_the_tables(capsys) -> None:
    assert docs.main([]) == 0
    assert capsys.readouterr().out == docs.keys_markdown()


DATA_KEYS = Path(__file__).resolve().parents[2] / "docs" / "data-keys.md"


def test_the_repository_key_table_is_current() -> None:
    assert docs.main(["--check", str(DATA_KEYS)]) == 0, (
        "docs/data-keys.md's key table is stale: run make docs"
    )


def test_a_stale_repository_key_table_is_caught(tmp_path) -> None:
    """The check above fails when a row of docs/data-keys.md no longer matches a declaration."""
    stale = tmp_path / "data-keys.md"
    text = DATA_KEYS.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `lan_address` |"))
    stale.write_text(text.replace(row, row.replace("The host's", "A host's")), encoding="utf-8")
    assert docs.main(["--check", str(stale)]) == 1


def test_secrets_example_lists_every_declared_secret() -> None:
    """secrets.example.toml is the operator's form: each declared secret once, nothing else."""
    example = tomllib.loads((REPO / "secrets.example.toml").read_text())
    declared = {spec.name for spec in secret_specs()}
    assert declared, "no secret is declared"
    assert set(example) == declared, (
        f"missing: {sorted(declared - set(example))}; unknown: {sorted(set(example) - declared)}"
    )
