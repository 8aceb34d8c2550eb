"""Vendor APT repositories' signing keys: downloaded on the host, trusted only by fingerprint.

``verified_keyring`` installs a repository's key as a keyring file that a deb822 source names
in ``Signed-By:`` (so the key signs that repository and nothing else). The key is downloaded
on the host and its primary key fingerprint compared with the one the data gives; a key that
does not match is never installed (``files/install-apt-key``). A keyring that already holds
exactly the expected key is left alone, so a converged host sees no change.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server

from tasks.common.datamodel.forms import Form, FormError
from tasks.common.templating import file_path

INSTALLER = "/usr/local/sbin/install-apt-key"

# Primary keys' fingerprints of `gpg --show-keys --with-colons`: the fpr record after each pub.
_PRIMARY_FINGERPRINTS = (
    """awk -F: '$1 == "pub" {p = 1; next} $1 == "fpr" && p {print $10; p = 0}'"""
)


class Fingerprint(Form):
    """An OpenPGP v4 fingerprint: 40 hex digits (spaces allowed); normalises to upper case."""

    description = 'an OpenPGP key fingerprint, 40 hex digits, such as "2596 A99E ... 957F 5868"'

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise FormError(self.description, value)
        compact = value.replace(" ", "").upper()
        if len(compact) != 40 or any(c not in "0123456789ABCDEF" for c in compact):
            raise FormError(self.description, value)
        return compact


class KeyringFingerprints(FactBase[list[str] | None]):
    """Fingerprints of the primary keys in a keyring file; None when it is absent or unreadable.

    Unreadable includes a host without gpg yet (a fresh minimal install): the key is then
    (re)installed, which checks it.
    """

    reads_other_hosts = False

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (
            f"test -e {quoted} || exit 0; "
            "command -v gpg >/dev/null 2>&1 || { echo '#unreadable'; exit 0; }; "
            'd=$(mktemp -d) && GNUPGHOME="$d" gpg --batch --show-keys --with-colons '
            f"{quoted} 2>/dev/null | {_PRIMARY_FINGERPRINTS}; "
            'rm -rf "$d"; echo "#read"'
        )

    def process(self, output: list[str]) -> list[str] | None:
        lines = [line.strip() for line in output if line.strip()]
        if "#read" not in lines:
            return None
        return [line for line in lines if line != "#read"]


def verified_keyring(
    *, name: str, url: str, url_key: str, fingerprint: str, fingerprint_key: str, dest: str
) -> OperationMeta:
    """Install the key at ``url`` as ``dest`` once its fingerprint is ``fingerprint``.

    ``url_key`` and ``fingerprint_key`` name the data keys the two come from, for the messages
    a failed download or a wrong key give. Returns the operation, so callers can refresh
    package lists after it.
    """
    files.put(
        name="Install the verified APT key installer",
        src=file_path("install-apt-key"),
        dest=INSTALLER,
        mode="755",
    )
    have = host.get_fact(KeyringFingerprints, path=dest)
    args = (INSTALLER, host.name, url_key, url, fingerprint_key, fingerprint, dest)
    return server.shell(
        name=name,
        commands=[" ".join(shlex.quote(arg) for arg in args)] if have != [fingerprint] else [],
    )
