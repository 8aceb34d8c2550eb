"""pytest fixtures around the Proxmox API test double (in-process, HTTPS on 127.0.0.1).

Test double support. ``pve_double`` starts a fresh double per test and yields a
:class:`RunningDouble`: the double (its state, the requests it accepted and refused), its port
and CA file, and ``data``: the data keys that point the hypervisor ``pve`` of an inventory at
it (``proxmox_api_host``, ``proxmox_api_port``, ``proxmox_api_ca_file``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.certs import self_signed
from tests.doubles.pve_api import PveApiDouble

# The value every declared secret has in plan and unit tests (not a credential of anything).
TEST_SECRET = "plan-test-double"
TOKEN = "root@pam!homelab"


@dataclass
class RunningDouble:
    double: PveApiDouble
    port: int
    ca_file: Path

    @property
    def data(self) -> dict[str, Any]:
        return {
            "proxmox_api_host": "127.0.0.1",
            "proxmox_api_port": self.port,
            "proxmox_api_ca_file": str(self.ca_file),
        }

    def assert_all_accepted(self) -> None:
        assert self.double.rejected == [], f"the double refused: {self.double.rejected}"


@pytest.fixture(scope="session")
def pve_double_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("pve-double-tls"), "pve", ["127.0.0.1"])


def start_double(cert: tuple[Path, Path], **kwargs: Any) -> RunningDouble:
    from tasks.hypervisor.proxmox_api import forget_clients

    forget_clients()
    kwargs.setdefault("password", TEST_SECRET)
    kwargs.setdefault("tokens", {TOKEN: TEST_SECRET})
    kwargs.setdefault("running_polls", 0)
    double = PveApiDouble(**kwargs)
    port = double.start("127.0.0.1", 0, cert[0], cert[1])
    return RunningDouble(double, port, cert[0])


@pytest.fixture
def pve_double(pve_double_cert: tuple[Path, Path]) -> Iterator[RunningDouble]:
    running = start_double(pve_double_cert)
    yield running
    running.double.stop()
