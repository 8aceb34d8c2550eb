"""Secrets: read from a git-ignored TOML file or the environment, never from the repository.

Where a secret comes from, first match wins:

1. the environment variable ``HOMELAB_SECRET_<NAME>`` (name upper-cased), for CI and one-offs;
2. the file named by ``HOMELAB_SECRETS_FILE``, or else ``secrets.toml`` in the working
   directory (git-ignored; ``secrets.example.toml`` shows every secret).

Values are wrapped in :class:`Secret` so that printing one (in pyinfra output, a traceback, a
log line) shows ``***`` instead of the value. Tasks hand them to hosts as file contents, never
as command-line arguments.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

SECRETS_FILE_ENV = "HOMELAB_SECRETS_FILE"
DEFAULT_SECRETS_FILE = "secrets.toml"
ENV_PREFIX = "HOMELAB_SECRET_"


class SecretsError(ValueError):
    """The secrets file cannot be read, or it is readable by other users."""


@dataclass(frozen=True)
class Secret:
    """A secret value that does not show itself when printed."""

    value: str = ""

    def reveal(self) -> str:
        return self.value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret(***)"


@dataclass(frozen=True)
class SecretSpec:
    """A secret a role needs: its name, which inventory groups need it, and what it is."""

    name: str
    groups: tuple[str, ...]
    doc: str


def secrets_file() -> Path:
    return Path(os.environ.get(SECRETS_FILE_ENV, DEFAULT_SECRETS_FILE))


def load_secrets(path: Path | None = None) -> dict[str, Secret]:
    """All secrets the file and the environment provide. A missing file is fine (none there)."""
    path = path or secrets_file()
    found: dict[str, Secret] = {}
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretsError(
                f"secrets file {path} is readable by other users (mode {oct(mode & 0o777)}); "
                f"expected mode 0600: run chmod 600 {path}"
            )
        try:
            parsed = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise SecretsError(f"secrets file {path} is not valid TOML: {error}") from None
        for name, value in parsed.items():
            if value == "":
                continue  # an empty entry (as in the example file) is a missing secret
            if not isinstance(value, str):
                raise SecretsError(
                    f"secrets file {path}: {name!r} must be a string, got {type(value).__name__}"
                )
            found[name] = Secret(value)
    for variable, value in os.environ.items():
        if variable.startswith(ENV_PREFIX) and value:
            found[variable.removeprefix(ENV_PREFIX).lower()] = Secret(value)
    return found
