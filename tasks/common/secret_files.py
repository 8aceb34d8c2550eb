"""A file that holds a secret: put on the host like ``files.put``, never shown.

``files.put`` and ``files.template`` print the old and the new content under ``pyinfra
--diff`` (and read the host's current file to do so). For a file holding a password, a token or
a private key that would put the secret in the terminal and in CI logs. ``secret_file``
compares SHA-256 digests instead, uploads the content only when they differ, and says only
that the file changed; the content reaches the operation as a :class:`Secret`, whose ``repr``
is ``Secret(***)``, so no argument list or error message shows it either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from io import BytesIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations.util import files as file_utils
from pyinfra.operations.util.files import ensure_mode_int

from tasks.common.datamodel.secrets import Secret


@operation()
def secret_file(
    content: Secret,
    dest: str,
    user: str = "root",
    group: str = "root",
    mode: str = "600",
) -> Generator[Any, None, None]:
    """Put ``content`` (a :class:`Secret`) at ``dest`` with owner and mode; no diff, no echo.

    + content: the file's whole text, wrapped in ``Secret``
    + dest: absolute path on the host
    + user, group, mode: owner and permission bits (the defaults: root only)
    """
    if not isinstance(content, Secret):
        raise TypeError(f"secret_file({dest}): content must be a Secret, not {type(content)}")
    data = content.reveal().encode()
    digest = hashlib.sha256(data).hexdigest()
    remote = host.get_fact(File, path=dest)
    if not remote or host.get_fact(Sha256File, path=dest) != digest:
        # The temporary file goes where files.put puts its own: the _temp_dir argument (a
        # directory the login can write when the upload goes through sudo), else pyinfra's.
        arguments = host.current_op_global_arguments or {}
        temp = host.get_temp_filename(dest, temp_directory=arguments.get("_temp_dir"))
        yield FileUploadCommand(BytesIO(data), dest, remote_temp_filename=temp)
        yield file_utils.chown(dest, user, group)
        yield file_utils.chmod(dest, mode)
        return
    if remote["user"] != user or remote["group"] != group:
        yield file_utils.chown(dest, user, group)
    if remote["mode"] != ensure_mode_int(mode):
        yield file_utils.chmod(dest, mode)
