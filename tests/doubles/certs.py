"""A self-signed TLS certificate for the Proxmox API test double (openssl, like pveproxy's).

Test double support: Proxmox VE serves its API with a certificate signed by the node's own CA
(``/etc/pve/pve-root-ca.pem``); the double serves a self-signed one, and clients trust it the
way they trust a real node's: by its PEM file (``proxmox_api_ca_file``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(folder: Path, name: str, addresses: list[str]) -> tuple[Path, Path]:
    """Write ``folder/NAME.pem`` (certificate) and ``NAME.key`` for ``name`` and ``addresses``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    if cert.exists() and key.exists():
        return cert, key
    alt = ",".join([f"DNS:{name}", "DNS:localhost", *(f"IP:{a}" for a in addresses)])
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "3650", "-subj", f"/CN={name}/O=Proxmox API test double",
            "-addext", f"subjectAltName={alt}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key
