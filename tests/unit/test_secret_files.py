"""secret_file, run for real by pyinfra on this machine (@local): the secret never shows.

Under ``--diff -vvv`` pyinfra prints every changed file's old and new lines; a secret written by
``secret_file`` must appear in none of the output, whether the file is created, changed or left
alone, and the file on disk must hold exactly the secret, with its mode and owner.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
OLD = "old-secret-Zq8vR2mK7pW4xN9c"
NEW = "new-secret-Hc3tY6bL1sD5fJ0g"


def _roll_out(tmp_path: Path, value: str, mode: str = "600") -> subprocess.CompletedProcess[str]:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    deploy = tmp_path / "deploy.py"
    deploy.write_text(
        textwrap.dedent(
            f"""
            import json
            from pathlib import Path
            from tasks.common.datamodel.secrets import Secret
            from tasks.common.secret_files import secret_file

            value = json.loads(Path({str(tmp_path / "value.json")!r}).read_text())
            secret_file(name="The secret", content=Secret(value), dest={str(tmp_path / "s")!r},
                        user={user!r}, group={group!r}, mode={mode!r})
            """
        )
    )
    (tmp_path / "value.json").write_text(json.dumps(value))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [str(PYINFRA), "-y", "--diff", "-vvv", "@local", str(deploy)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("step", ["create", "change"])
def test_the_secret_is_written_and_never_printed(tmp_path: Path, step: str) -> None:
    if step == "change":
        assert _roll_out(tmp_path, OLD).returncode == 0
    result = _roll_out(tmp_path, NEW)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert OLD not in output and NEW not in output
    assert "The secret" in output  # the operation did run and report
    written = tmp_path / "s"
    assert written.read_text() == NEW
    assert oct(written.stat().st_mode & 0o777) == "0o600"


def test_the_file_is_compared_not_rewritten_and_a_mode_drift_is_put_back(tmp_path: Path) -> None:
    assert _roll_out(tmp_path, OLD).returncode == 0
    written = tmp_path / "s"
    before = written.stat().st_ino, written.stat().st_mtime_ns
    again = _roll_out(tmp_path, OLD)
    assert again.returncode == 0
    assert (written.stat().st_ino, written.stat().st_mtime_ns) == before, "rewritten unchanged"
    written.chmod(0o644)
    fixed = _roll_out(tmp_path, OLD)
    assert fixed.returncode == 0 and OLD not in fixed.stdout + fixed.stderr
    assert oct(written.stat().st_mode & 0o777) == "0o600"
    assert (written.stat().st_ino, written.stat().st_mtime_ns) == before, "content re-uploaded"


def test_content_that_is_not_a_secret_is_refused() -> None:
    from tasks.common.secret_files import secret_file

    with pytest.raises(TypeError, match="must be a Secret"):
        next(secret_file._inner("plain text", "/tmp/x"))  # type: ignore[attr-defined]
