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

import math
import os
import stat
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# Kinds of secret. The first three are ours to choose (any long random string), so they must be
# strong; an "issued" one (a Tailscale auth key, a Proxmox token secret) comes from a third party
# in whatever form it uses, so only its shape is checked.
GENERATED_KINDS = ("password", "seed", "token", "passphrase")
ISSUED = "issued"
MIN_SECRET_LENGTH = 16
MIN_SECRET_BITS = 64
# Few distinct characters mean a pattern ("aaaa…", "abab…"), whatever the length.
MIN_DISTINCT_CHARACTERS = 8
_CHARACTER_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits)
_OTHER_CHARACTERS = 33  # printable ASCII punctuation and space


@dataclass(frozen=True)
class SecretSpec:
    """A secret a role needs: its name, which inventory groups need it, what it is, and its kind
    (one of GENERATED_KINDS, checked for strength, or ISSUED)."""

    name: str
    groups: tuple[str, ...]
    doc: str
    kind: str = "password"
    # Whether a host's data needs it at all (None: every host of ``groups`` does).
    needed: Callable[[Mapping[str, Any]], bool] | None = field(default=None, compare=False)


def estimated_bits(value: str) -> float:
    """Length times log2 of the alphabet the characters are drawn from (each class used counts
    whole): a generous estimate, so what fails it is weak for sure."""
    alphabet = sum(len(c) for c in _CHARACTER_CLASSES if any(ch in c for ch in value))
    if any(not any(ch in c for c in _CHARACTER_CLASSES) for ch in value):
        alphabet += _OTHER_CHARACTERS
    return len(value) * math.log2(alphabet) if alphabet > 1 else 0.0


def secret_problem(spec: SecretSpec, secret: Secret) -> str | None:
    """What is wrong with ``secret`` as ``spec``'s value, or None. Never shows the value."""
    value = secret.reveal()
    if spec.kind == ISSUED:
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            return "a single-line value without white space, as issued"
        return None
    if not value.isprintable():  # a newline or tab too: the value goes into config files
        return "a single-line value without control characters"
    if (
        len(value) < MIN_SECRET_LENGTH
        or estimated_bits(value) < MIN_SECRET_BITS
        or len(set(value)) < MIN_DISTINCT_CHARACTERS
    ):
        return (
            f"a random {spec.kind} of at least {MIN_SECRET_LENGTH} characters, about"
            f" {MIN_SECRET_BITS} bits or more, such as the output of openssl rand -base64 32"
        )
    return None


@dataclass(frozen=True)
class HiddenValue:
    """How a refused secret shows in a message: its length and strength, never its text."""

    length: int
    bits: float

    def __repr__(self) -> str:
        return f"*** ({self.length} characters, about {self.bits:.0f} bits)"


def hidden(secret: Secret) -> HiddenValue:
    value = secret.reveal()
    return HiddenValue(len(value), estimated_bits(value))


def secrets_file() -> Path:
    return Path(os.environ.get(SECRETS_FILE_ENV, DEFAULT_SECRETS_FILE))


def load_secrets(path: Path | None = None) -> dict[str, Secret]:
    """All secrets the file and the environment provide. A missing file is fine (none there)."""
    path = path or secrets_file()
    found: dict[str, Secret] = {}
    if path.exists():
        status = path.stat()
        mode = status.st_mode
        # Another user's file could have been written (or swapped in) by that user.
        if status.st_uid not in (os.getuid(), 0):
            raise SecretsError(
                f"secrets file {path} is owned by user id {status.st_uid}, not by the user"
                f" running the deploy ({os.getuid()}) or root: copy it to a file of your own"
            )
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
