"""The API test double's schema check: what the real Proxmox API refuses, the double refuses."""

from __future__ import annotations

import pytest

from tests.doubles.pve_schema import ApiSchema, SchemaError

VM_CONFIG = "/nodes/pve/qemu/100/config"


@pytest.fixture(scope="module", params=[9, 8])
def schema(request: pytest.FixtureRequest) -> ApiSchema:
    return ApiSchema(request.param)


def refused(schema: ApiSchema, method: str, path: str, **params: str) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        schema.check(method, path, params)
    return caught.value


@pytest.mark.parametrize(
    "params",
    [
        {"hostpci0": "0000:03:00,pcie=1"},
        {"hostpci0": "mapping=r9700,pcie=1"},
        {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"},
        {"net0": "virtio,bridge=vmbr0,firewall=1"},
        {"efidisk0": "ssd:1,efitype=4m,pre-enrolled-keys=0"},
        {"scsi0": "ssd:0,import-from=hdd:import/x.qcow2,discard=on,iothread=1"},
        {"cores": "4", "memory": "16384", "balloon": "0", "onboot": "1", "startup": "order=2"},
        {"agent": "enabled=1", "cpu": "host", "machine": "q35", "bios": "ovmf"},
        {"ipconfig0": "ip=192.168.1.20/24,gw=192.168.1.1", "sshkeys": "ssh-ed25519%20AAAA"},
        {"delete": "hostpci1,net1"},
    ],
)
def test_real_config_is_accepted(schema: ApiSchema, params: dict[str, str]) -> None:
    assert schema.check("POST", VM_CONFIG, params)[0] == "/nodes/{node}/qemu/{vmid}/config"


@pytest.mark.parametrize(
    ("param", "value", "why"),
    [
        ("hostpci0", "0000:03:00,pcie=yes", "pcie: type check ('boolean') failed - got 'yes'"),
        ("hostpci0", "pcie=1", "either 'host' or 'mapping'"),
        ("hostpci0", "0000:03:00,pcie=1,bogus=1", "property 'bogus' is not defined"),
        ("hostpci0", "03-00,pcie=1", "host"),
        ("cores", "four", "type check ('integer') failed"),
        ("balloon", "-1", "minimum"),
        ("onboot", "true", "type check ('boolean') failed"),
        ("machine", "q99", "does not match"),
        ("efidisk0", "ssd:1,efitype=8m", "efitype"),
        ("agent", "enabled=yes", "boolean"),
        ("startup", "order=first", "startup-order"),
        ("fancy", "1", "not defined in schema"),
    ],
)
def test_wrong_config_is_refused_naming_the_parameter(
    schema: ApiSchema, param: str, value: str, why: str
) -> None:
    error = refused(schema, "POST", VM_CONFIG, **{param: value})
    assert error.status == 400
    assert param in error.errors
    assert why in error.errors[param], error.errors[param]


def test_unknown_paths_and_methods_are_refused(schema: ApiSchema) -> None:
    assert refused(schema, "GET", "/nodes/pve/qemu/100/bogus").status == 501
    assert refused(schema, "DELETE", "/version").status == 501


def test_missing_required_parameters_are_refused(schema: ApiSchema) -> None:
    error = refused(schema, "POST", "/nodes/pve/qemu/100/snapshot")
    assert "snapname" in error.errors


def test_backup_job_retention_keys_are_checked(schema: ApiSchema) -> None:
    good = {
        "schedule": "02:30",
        "storage": "hdd",
        "mode": "snapshot",
        "compress": "zstd",
        "prune-backups": "keep-daily=7,keep-weekly=4,keep-monthly=6",
        "all": "1",
    }
    schema.check("POST", "/cluster/backup", good)
    error = refused(schema, "POST", "/cluster/backup", **{**good, "prune-backups": "keep-dayly=7"})
    assert "keep-dayly" in error.errors["prune-backups"]
    error = refused(schema, "POST", "/cluster/backup", **{**good, "mode": "snap"})
    assert "mode" in error.errors


def test_pci_mapping_entries_are_checked(schema: ApiSchema) -> None:
    ok = {"id": "r9700", "map": ["node=pve,path=0000:03:00,id=1002:7551"]}
    schema.check("POST", "/cluster/mapping/pci", ok)
    error = refused(
        schema, "POST", "/cluster/mapping/pci", id="r9700", map="node=pve,path=0000:03:00,id=xx"
    )
    assert "map" in error.errors
