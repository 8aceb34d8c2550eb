"""The Proxmox API's CA: read from the host over SSH on first contact, recorded, then pinned.

Proxmox VE signs its API certificate with the node's own CA, ``/etc/pve/pve-root-ca.pem``,
which no system trusts. Rather than have the user copy it by hand, the hypervisor's run reads
it over the SSH connection, whose host key is itself pinned (:mod:`tasks.common.host_keys`), and
records it on this controller (``proxmox_api_ca_record_directory``, one PEM file per host).
Every later run compares the host's CA with the record and stops, before any change, when they
differ, naming the host and both SHA-256 fingerprints. ``proxmox_api_ca_fingerprint`` pins the
CA to the fingerprint read at the host's console (``openssl x509 -noout -fingerprint -sha256
-in /etc/pve/pve-root-ca.pem``), so even the first contact is checked.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

logger = logging.getLogger("pyinfra")  # pyinfra's own logger; labctl imports this without pyinfra

HOST_CA = "/etc/pve/pve-root-ca.pem"
_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


class CATrustError(RuntimeError):
    """The host's CA is not the recorded or pinned one, or is not a certificate: stop the run."""


def first_certificate(pem: str) -> str:
    """The first PEM certificate block of ``pem``; ValueError when there is none."""
    start = pem.find(_BEGIN)
    end = pem.find(_END, start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate in it")
    return pem[start : end + len(_END)] + "\n"


def fingerprint(pem: str) -> str:
    """SHA-256 fingerprint of the first certificate in ``pem``, as ``openssl x509
    -fingerprint -sha256`` prints it (upper-case hex pairs joined by colons)."""
    block = first_certificate(pem)
    body = "".join(block.strip().splitlines()[1:-1])
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError:
        raise ValueError("its certificate block is not base64") from None
    if len(der) < 64 or der[0] != 0x30:  # a certificate is a DER SEQUENCE
        raise ValueError("its certificate block is not a DER certificate")
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def record_file(directory: str | Path, host_name: str) -> Path:
    """Where the CA of hypervisor ``host_name`` is recorded on this controller."""
    return Path(directory).expanduser() / f"{host_name}.pem"


def trust(host_name: str, presented: str, directory: str | Path, pinned: str | None) -> Path:
    """Check the CA the host presents against the pin and the record; on first contact,
    record it. Returns the record's path; raises CATrustError, writing nothing, otherwise."""
    try:
        presented_fingerprint = fingerprint(presented)
    except ValueError as error:
        raise CATrustError(
            f"host {host_name!r}: {HOST_CA} is not a PEM certificate ({error}); the Proxmox"
            " API cannot be verified"
        ) from None
    if pinned is not None and presented_fingerprint != pinned.upper():
        raise CATrustError(
            f"host {host_name!r}: the Proxmox API's CA ({HOST_CA}) has SHA-256 fingerprint"
            f" {presented_fingerprint}; key 'proxmox_api_ca_fingerprint' pins {pinned.upper()}."
            " The API was not called."
        )
    record = record_file(directory, host_name)
    if record.is_file():
        try:
            recorded_fingerprint = fingerprint(record.read_text())
        except ValueError as error:  # binascii.Error is one
            raise CATrustError(
                f"host {host_name!r}: the recorded CA {record} is not a PEM certificate"
                f" ({error}); check it, delete it and run again to record the host's CA anew"
            ) from None
        if recorded_fingerprint == presented_fingerprint:
            return record
        if pinned is None:
            raise CATrustError(
                f"host {host_name!r}: the Proxmox API's CA changed: recorded {recorded_fingerprint}"
                f" ({record}), the host now has {presented_fingerprint}. The API was not called."
                f" If the CA was renewed on purpose, delete {record} and run again."
            )
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = record.with_suffix(".pem.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(first_certificate(presented))
    partial.replace(record)
    if pinned is None:
        logger.warning(
            f"{host_name}: the Proxmox API's CA is trusted on first contact (read over SSH):"
            f" SHA-256 {presented_fingerprint}; pin it with proxmox_api_ca_fingerprint ="
            f' "{presented_fingerprint}", checked against the host\'s console'
        )
    return record
