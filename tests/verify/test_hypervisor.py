"""The hypervisor: its storage pools are where the data says (real pools, or the lab's)."""

from __future__ import annotations

import pytest

from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "hypervisor"


def test_pool_paths_exist(host_in: InventoryHost) -> None:
    for name, pool in host_in.data["pools"].items():
        assert host_in.testinfra.file(pool["path"]).is_directory, f"pool {name}: {pool['path']}"


def test_pools_are_mounted(host_in: InventoryHost) -> None:
    # A pool that is only a directory on the root disk would let backups fill the SSD.
    for name, pool in host_in.data["pools"].items():
        result = host_in.testinfra.run(f"mountpoint -q {pool['path']}")
        assert result.rc == 0, f"pool {name}: nothing is mounted at {pool['path']}"
