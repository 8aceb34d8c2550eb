"""Where templates, static files and host-side scripts live, for the task modules."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = REPO_ROOT / "templates"
FILES = REPO_ROOT / "files"


def template_path(name: str) -> str:
    """Absolute path of ``templates/<name>`` (pyinfra resolves relative paths from the cwd)."""
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"template {name!r} is missing from {TEMPLATES}")
    return str(path)


def file_path(name: str) -> str:
    """Absolute path of ``files/<name>``."""
    path = FILES / name
    if not path.is_file():
        raise FileNotFoundError(f"file {name!r} is missing from {FILES}")
    return str(path)
