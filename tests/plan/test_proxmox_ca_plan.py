"""The Proxmox API's CA: trusted on first contact over SSH, recorded, then pinned.

The real hypervisor deploy over the real inventory, with no ``proxmox_api_ca_file``: the run
reads ``/etc/pve/pve-root-ca.pem`` from the pve machine's facts (here, the API test double's
certificate, standing in for the node's CA) and verifies the API against it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tasks.hypervisor.proxmox_ca import CATrustError, fingerprint
from tests.doubles.certs import self_signed
from tests.doubles.fixtures import RunningDouble
from tests.plan.harness import Plan
from tests.plan.machines import Machine

HOST_CA = "/etc/pve/pve-root-ca.pem"


@pytest.fixture
def records(tmp_path: Path) -> Path:
    return tmp_path / "proxmox-ca"


@pytest.fixture
def plan_hypervisor(plan_of: Any, fleet: dict[str, Machine], records: Path) -> Any:
    def run(host_ca: str | None, **data: Any) -> Plan:
        if host_ca is not None:
            fleet["pve"].files[HOST_CA] = host_ca
        return plan_of(
            "deploys/hypervisor.py",
            limit=["pve"],
            override_data={
                "proxmox_api_ca_file": None,
                "proxmox_api_ca_record_directory": str(records),
                **data,
            },
        )

    return run


def refusal(caught: pytest.ExceptionInfo) -> str:
    """The CA check's own error (pyinfra's CLI wraps a deploy's exception)."""
    error = getattr(caught.value, "exception", caught.value)
    assert isinstance(error, CATrustError), repr(error)
    return str(error)


def api_requests(double: Any) -> int:
    return len(double.requests)


def other_ca(tmp_path: Path) -> str:
    cert, _ = self_signed(tmp_path / "other", "pve", ["127.0.0.1"])
    return cert.read_text()


def test_first_contact_records_the_ca_with_its_fingerprint_and_the_api_is_verified_by_it(
    plan_hypervisor: Any, pve_double: RunningDouble, records: Path, caplog: Any
) -> None:
    host_ca = pve_double.ca_file.read_text()
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        plan = plan_hypervisor(host_ca)
    record = records / "pve.pem"
    assert fingerprint(record.read_text()) == fingerprint(host_ca)
    assert record.stat().st_mode & 0o777 == 0o600
    assert f'proxmox_api_ca_fingerprint = "{fingerprint(host_ca)}"' in caplog.text
    assert any("VM 100 (ageis-node)" in op.name for op in plan.changing("pve")), (
        "the API was reached (verified against the recorded CA) and the guests planned"
    )
    pve_double.assert_all_accepted()


def test_the_second_run_checks_the_record_silently(
    plan_hypervisor: Any, pve_double: RunningDouble, caplog: Any
) -> None:
    host_ca = pve_double.ca_file.read_text()
    plan_hypervisor(host_ca)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        plan_hypervisor(host_ca)
    assert "first contact" not in caplog.text


def test_a_changed_ca_stops_the_run_naming_host_and_both_fingerprints(
    plan_hypervisor: Any, pve_double: RunningDouble, records: Path, tmp_path: Path
) -> None:
    old = pve_double.ca_file.read_text()
    plan_hypervisor(old)
    sent = api_requests(pve_double.double)
    new = other_ca(tmp_path)
    with pytest.raises(Exception) as raised:
        plan_hypervisor(new)
    message = refusal(raised)
    assert "'pve'" in message
    assert fingerprint(old) in message and fingerprint(new) in message
    assert "The API was not called" in message
    assert api_requests(pve_double.double) == sent, "no API request after the CA changed"
    assert fingerprint((records / "pve.pem").read_text()) == fingerprint(old)


def test_a_pin_that_does_not_match_stops_even_the_first_contact(
    plan_hypervisor: Any, pve_double: RunningDouble, records: Path, tmp_path: Path
) -> None:
    pinned = fingerprint(other_ca(tmp_path))
    with pytest.raises(Exception) as raised:
        plan_hypervisor(pve_double.ca_file.read_text(), proxmox_api_ca_fingerprint=pinned)
    assert pinned in refusal(raised)
    assert fingerprint(pve_double.ca_file.read_text()) in refusal(raised)
    assert not (records / "pve.pem").exists(), "a refused CA is not recorded"
    assert api_requests(pve_double.double) == 0


def test_a_matching_pin_records_without_the_first_contact_warning(
    plan_hypervisor: Any, pve_double: RunningDouble, records: Path, caplog: Any
) -> None:
    host_ca = pve_double.ca_file.read_text()
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        plan_hypervisor(host_ca, proxmox_api_ca_fingerprint=fingerprint(host_ca).lower())
    assert (records / "pve.pem").is_file()
    assert "first contact" not in caplog.text


def test_a_pin_in_another_form_is_bad_data_named_with_its_expected_form() -> None:
    from tasks.common.datamodel.keys import DataError
    from tasks.hypervisor.proxmox_api import DATA

    with pytest.raises(DataError, match="SHA-256 fingerprint, 32 hex pairs"):
        DATA.check("pve", {"proxmox_api_ca_fingerprint": "SHA256:" + "A" * 43})


def test_plain_debian_without_proxmox_ve_yet_waits_for_the_ca_and_the_api(
    plan_hypervisor: Any,
    fleet: dict[str, Machine],
    pve_double: RunningDouble,
    records: Path,
) -> None:
    from tests.plan.test_hypervisor_plan import plain_debian_13

    fleet["pve"] = plain_debian_13()
    fleet["pve"].zfs = {"ssd": {"mountpoint": "/ssd", "mounted": True}}
    plan = plan_hypervisor(None)
    assert not (records / "pve.pem").exists(), "no CA to read before the installation"
    assert api_requests(pve_double.double) == 0, "no API call before Proxmox VE is installed"
    assert any("proxmox-default-kernel" in " ".join(op.commands) for op in plan.changing("pve"))
