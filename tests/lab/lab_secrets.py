"""The lab's secrets file: a random value for every secret a role declares, mode 600.

Test double for the user's secrets.toml. Made (or completed, when a task declares a new
secret) whenever the lab inventory loads, in the lab's state directory, never in the repo.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path

from tasks.common.datamodel.registry import secret_specs


def ensure_lab_secrets(path: Path) -> None:
    have = tomllib.loads(path.read_text()) if path.exists() else {}
    missing = [spec.name for spec in secret_specs() if spec.name not in have]
    if not missing:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        for name in missing:
            handle.write(f'{name} = "{secrets.token_urlsafe(24)}"\n')
    path.chmod(0o600)
