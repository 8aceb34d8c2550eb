"""The bridge from a pyinfra inventory to testinfra hosts.

    pytest tests/verify --inventory inventory.py            # the real machines
    pytest tests/verify --inventory tests/lab/inventory.py  # the lab

Each host is reached the way pyinfra reaches it (``ssh_hostname``, ``ssh_user``, ``ssh_key``,
``ssh_port``, known hosts), through OpenSSH, and checked against its own inventory data. Tests
take the ``host_in`` fixture for one group of hosts: ``@pytest.mark.parametrize`` over the group
is done here (``pytest_generate_tests``) from the test module's ``ROLE``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

REPO = Path(__file__).resolve().parents[2]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--inventory",
        default=os.environ.get("HOMELAB_INVENTORY", "inventory.py"),
        help="pyinfra inventory whose hosts to verify (default: inventory.py)",
    )


@dataclass
class InventoryHost:
    """One inventory host: its name, groups, merged data and a testinfra connection."""

    name: str
    groups: tuple[str, ...]
    data: dict[str, Any]
    testinfra: Any

    def __repr__(self) -> str:
        return self.name


def _ssh_config(data: dict[str, Any]) -> str:
    lines = ["Host *", "  BatchMode yes", "  ConnectTimeout 10"]
    if data.get("ssh_known_hosts_file"):
        lines.append(f"  UserKnownHostsFile {data['ssh_known_hosts_file']}")
    if data.get("ssh_strict_host_key_checking"):
        lines.append(f"  StrictHostKeyChecking {data['ssh_strict_host_key_checking']}")
    return "\n".join(lines) + "\n"


_cache: dict[str, list[InventoryHost]] = {}


def load_inventory(path: str) -> list[InventoryHost]:
    """Inventory hosts of ``path`` (validated by the inventory file itself as it loads)."""
    if path in _cache:
        return _cache[path]
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        with ctx_state.use(State()):
            inventory = make_inventory_from_files(path, cwd=str(REPO))
    finally:
        os.chdir(cwd)
    hosts = []
    config_dir = Path(tempfile.mkdtemp(prefix="homelab-verify-"))
    for pyinfra_host in inventory:
        data = pyinfra_host.data.dict()
        config = config_dir / f"{pyinfra_host.name}.ssh_config"
        config.write_text(_ssh_config(data))
        address = data.get("ssh_hostname") or pyinfra_host.name
        user = data.get("ssh_user") or "root"
        port = data.get("ssh_port") or 22
        key = data.get("ssh_key")
        kwargs: dict[str, Any] = {"ssh_config": str(config)}
        if key:
            kwargs["ssh_identity_file"] = str(Path(key).expanduser())
        sudo = user != "root"
        connection = testinfra.get_host(f"ssh://{user}@{address}:{port}", sudo=sudo, **kwargs)
        hosts.append(InventoryHost(pyinfra_host.name, tuple(pyinfra_host.groups), data, connection))
    _cache[path] = hosts
    return hosts


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host_in" not in metafunc.fixturenames:
        return
    role = getattr(metafunc.module, "ROLE", "all")  # a group, "all", or a tuple of groups
    roles = (role,) if isinstance(role, str) else tuple(role)
    hosts = load_inventory(metafunc.config.getoption("--inventory"))
    chosen = [h for h in hosts if "all" in roles or set(roles) & set(h.groups)]
    if not chosen:
        pytest.fail(f"the inventory has no host in group {role!r}", pytrace=False)
    metafunc.parametrize("host_in", chosen, ids=[h.name for h in chosen])


@pytest.fixture(scope="session")
def inventory_hosts(request: pytest.FixtureRequest) -> list[InventoryHost]:
    return load_inventory(request.config.getoption("--inventory"))
