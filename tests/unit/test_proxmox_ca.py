"""The Proxmox API CA's fingerprint and record (tasks/hypervisor/proxmox_ca.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.hypervisor.proxmox_ca import CATrustError, fingerprint, record_file, trust
from tests.doubles.certs import self_signed


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert, _ = self_signed(tmp_path_factory.mktemp("ca"), "pve", ["192.0.2.10"])
    return cert


def test_the_fingerprint_is_the_one_openssl_prints_at_the_console(certificate: Path) -> None:
    printed = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(certificate)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert printed.split("=", 1)[1] == fingerprint(certificate.read_text())


def test_text_that_is_not_a_certificate_is_refused_and_not_recorded(tmp_path: Path) -> None:
    with pytest.raises(CATrustError, match="not a PEM certificate"):
        trust("pve", "<html>login</html>\n", tmp_path, None)
    assert not record_file(tmp_path, "pve").exists()


def test_the_record_holds_only_the_certificate_and_is_private(
    certificate: Path, tmp_path: Path
) -> None:
    pem = certificate.read_text()
    record = trust("pve", "garbage before\n" + pem + "trailing text\n", tmp_path / "ca", None)
    assert record.read_text() == pem
    assert record.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700


def test_a_pin_overrides_a_stale_record(certificate: Path, tmp_path: Path) -> None:
    other, _ = self_signed(tmp_path / "other", "pve", ["192.0.2.10"])
    trust("pve", other.read_text(), tmp_path, None)
    pem = certificate.read_text()
    with pytest.raises(CATrustError, match="changed"):
        trust("pve", pem, tmp_path, None)
    trust("pve", pem, tmp_path, fingerprint(pem))
    assert fingerprint(record_file(tmp_path, "pve").read_text()) == fingerprint(pem)


def test_a_corrupt_record_is_a_clear_refusal_not_a_traceback(
    certificate: Path, tmp_path: Path
) -> None:
    record_file(tmp_path, "pve").write_text(
        "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(CATrustError, match=r"the recorded CA .* is not a PEM certificate"):
        trust("pve", certificate.read_text(), tmp_path, None)
