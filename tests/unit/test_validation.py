"""Whole-inventory validation in process: every key, the checks across hosts, and secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.common.datamodel.keys import DataError
from tasks.common.datamodel.secrets import Secret, SecretsError, load_secrets, secrets_file
from tasks.common.datamodel.validate import HostView, format_errors, validate_hosts

SECRETS = {
    "proxmox_api_secret": Secret("s3cret-value"),
    "tailscale_auth_key": Secret("test-double-value"),
    "memory_store_actr_engine_password": Secret("test-double-value"),
    "memory_store_vector_indexer_password": Secret("test-double-value"),
    "memory_store_wal_receiver_password": Secret("test-double-value"),
    "memory_store_document_ingest_password": Secret("test-double-value"),
    "pgbackrest_tls_seed": Secret("test-double-value"),
    "pve_exporter_token_secret": Secret("test-double-value"),
    "openclaw_gateway_token": Secret("test-double-value"),
    "actr_engine_api_token": Secret("test-double-value"),
    "pgbackrest_repository_cipher_pass": Secret("test-double-value"),
}


@pytest.fixture(autouse=True)
def _no_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HOMELAB_SECRET"):
            monkeypatch.delenv(name)


def problems(baseline, secrets=SECRETS) -> list[DataError]:
    return validate_hosts(baseline.views(), secrets)


def only(errors: list[DataError], host: str, key: str) -> DataError:
    """The one error about ``host``'s ``key``; fails showing every error otherwise."""
    found = [e for e in errors if e.host == host and e.key == key]
    assert len(found) == 1, "\n".join(map(str, errors))
    return found[0]


def test_baseline_is_valid(baseline) -> None:
    assert problems(baseline) == []


def test_values_are_normalised(baseline) -> None:
    views = baseline.views()
    assert validate_hosts(views, SECRETS) == []
    pve = views[0].values
    assert pve["memory"] == 128 * 1024**3
    assert str(pve["lan_cidr"]) == "192.168.1.0/24"
    assert pve["proxmox_api_port"] == 8006  # default of a hypervisor-only key
    assert "proxmox_api_port" not in views[1].values  # not checked where it does not apply
    assert pve["admin_ssh_public_key_files"][0].startswith("ssh-ed25519 ")


def test_a_form_error_names_host_key_value_and_form(baseline) -> None:
    baseline.host("pve")["gpus"][0]["functions"][1]["id"] = "1002:AB40"
    error = only(problems(baseline), "pve", "gpus[0].functions[1].id")
    assert str(error) == (
        "host 'pve': key 'gpus[0].functions[1].id' is '1002:AB40'; "
        'expected a PCI vendor:device ID, lower-case hex, "1002:7551"'
    )


def test_every_problem_is_reported_at_once(baseline) -> None:
    baseline.host("pve")["memory"] = "lots"
    baseline.host("embedder")["lan_address"] = "192.168.2.30"
    baseline.host("dns")["timezone"] = "Mars/Olympus"
    errors = problems(baseline, secrets={})
    assert {(e.host, e.key) for e in errors} == {
        ("pve", "memory"),
        ("embedder", "lan_address"),
        ("dns", "timezone"),
        ("pve", "secret proxmox_api_secret"),
        ("pve", "secret tailscale_auth_key"),  # the first of the nodes that need it
        ("ageis-node", "secret memory_store_actr_engine_password"),
        ("ageis-node", "secret memory_store_vector_indexer_password"),
        ("pve", "secret memory_store_wal_receiver_password"),
        ("ageis-node", "secret memory_store_document_ingest_password"),
        ("pve", "secret pgbackrest_tls_seed"),
        ("monitoring", "secret pve_exporter_token_secret"),
        ("ageis-node", "secret openclaw_gateway_token"),
        ("ageis-node", "secret actr_engine_api_token"),
        ("pve", "secret pgbackrest_repository_cipher_pass"),
    }
    text = format_errors(errors, "inventory.py")
    assert text.splitlines()[0] == (
        "The inventory data in inventory.py is not valid; nothing was touched:"
    )
    assert len(text.splitlines()) == 15


def test_address_outside_lan_cidr(baseline) -> None:
    baseline.host("embedder")["lan_address"] = "192.168.2.30"
    error = only(problems(baseline), "embedder", "lan_address")
    assert error.expected == "an address in 192.168.1.0/24"
    assert "is '192.168.2.30'" in str(error)


def test_duplicate_address(baseline) -> None:
    baseline.host("dns")["lan_address"] = "192.168.1.40"
    error = only(problems(baseline), "dns", "lan_address")
    assert error.expected == "an address not used by monitoring"


def test_lan_cidr_with_host_bits(baseline) -> None:
    baseline.host("pve")["lan_cidr"] = "192.168.1.1/24"
    error = only(problems(baseline), "pve", "lan_cidr")
    assert "no host bits set" in error.expected


def test_disk_pool_not_declared(baseline) -> None:
    baseline.host("pve")["disks"][4]["pool"] = "archive"
    error = only(problems(baseline), "pve", "disks[4].pool")
    assert error.given == "archive"
    assert error.expected == "one of this host's pools (ssd, hdd)"


def test_pool_create_without_disks(baseline) -> None:
    baseline.host("embedder")["pools"]["ssd"]["create"] = True
    error = only(problems(baseline), "embedder", "pools['ssd'].create")
    assert "disks listed with this pool" in error.expected


def test_zfs_pool_without_zfs_name(baseline) -> None:
    del baseline.host("pve")["pools"]["ssd"]["zfs_name"]
    error = only(problems(baseline), "pve", "pools['ssd'].zfs_name")
    assert error.expected == "a ZFS pool name"


def test_guest_storage_not_a_hypervisor_pool(baseline) -> None:
    # ageis-node has an "ssd" pool of its own; what counts is pve's pools.
    baseline.host("monitoring")["guest"]["storage"] = "nvme"
    error = only(problems(baseline), "monitoring", "guest.storage")
    assert error.expected == "a pool of pve (ssd, hdd)"


def test_passthrough_gpu_not_a_hypervisor_gpu(baseline) -> None:
    baseline.host("ageis-node")["guest"]["passthrough_gpu"] = "rx7900"
    errors = problems(baseline)
    error = only(errors, "ageis-node", "guest.passthrough_gpu")
    assert error.expected == "a GPU of pve (r9700)"
    # pve's side of the pair says the same from its end.
    other_end = only(errors, "pve", "gpus[0].passthrough_to")
    assert other_end.expected == "a guest whose guest.passthrough_gpu is 'r9700'"


def test_passthrough_gpu_on_a_container(baseline) -> None:
    baseline.host("pve")["gpus"][0]["passthrough_to"] = "monitoring"
    baseline.host("monitoring")["guest"]["passthrough_gpu"] = "r9700"
    baseline.host("ageis-node")["guest"]["passthrough_gpu"] = None
    error = only(problems(baseline), "monitoring", "guest.kind")
    assert error.expected == "qemu for GPU passthrough"


def test_passthrough_to_a_host_not_in_the_inventory(baseline) -> None:
    baseline.host("pve")["gpus"][0]["passthrough_to"] = "gaming-vm"
    error = only(problems(baseline), "pve", "gpus[0].passthrough_to")
    assert error.expected == "an inventory host"


def test_passed_through_gpu_needs_every_function_address(baseline) -> None:
    baseline.host("pve")["gpus"][0]["functions"][1]["address"] = None
    error = only(problems(baseline), "pve", "gpus[0].functions[1].address")
    assert "PCI address of every function" in error.expected


def test_gpu_function_ids_differ_between_vm_and_hypervisor(baseline) -> None:
    baseline.host("ageis-node")["gpus"][0]["functions"][1]["id"] = "1002:ab41"
    error = only(problems(baseline), "ageis-node", "gpus[0].functions")
    assert error.given == ["1002:7551", "1002:ab41"]
    assert error.expected == "the same PCI IDs as pve's r9700: ['1002:7551', '1002:ab40']"


def test_duplicate_vmid(baseline) -> None:
    baseline.host("dns")["guest"]["vmid"] = 110
    error = only(problems(baseline), "dns", "guest.vmid")
    assert error.expected == "an ID not used by monitoring"


def test_guest_hypervisor_not_in_the_hypervisor_group(baseline) -> None:
    baseline.host("dns")["guest"]["hypervisor"] = "embedder"
    error = only(problems(baseline), "dns", "guest.hypervisor")
    assert error.expected == "a host of the hypervisor group (pve)"


def test_guest_hypervisor_unknown(baseline) -> None:
    baseline.host("dns")["guest"]["hypervisor"] = "pve2"
    only(problems(baseline), "dns", "guest.hypervisor")


def test_guest_cores_more_than_hypervisor_threads(baseline) -> None:
    baseline.host("ageis-node")["guest"]["cores"] = 29
    error = only(problems(baseline), "ageis-node", "guest.cores")
    assert error.expected == "at most the 28 threads of pve"
    baseline.host("ageis-node")["guest"]["cores"] = 28
    assert problems(baseline) == []


def test_hypervisor_without_cpu(baseline) -> None:
    del baseline.host("pve")["cpu"]
    error = only(problems(baseline), "pve", "cpu")
    assert "vendor picks IOMMU flags" in error.expected


def test_unknown_key_suggests_the_declared_one(baseline) -> None:
    baseline.host("pve")["timezon"] = "Europe/Berlin"
    error = only(problems(baseline), "pve", "timezon")
    assert error.given == "Europe/Berlin"
    assert error.expected == "a declared key; this one is unknown (did you mean 'timezone'?)"


def test_unknown_key_without_a_close_match(baseline) -> None:
    baseline.host("pve")["flux_capacitor"] = True
    error = only(problems(baseline), "pve", "flux_capacitor")
    assert error.expected == "a declared key; this one is unknown"


def test_pyinfra_keys_are_not_ours_to_declare(baseline) -> None:
    baseline.host("pve").update({"ssh_port": 2222, "_sudo": True, "ssh_hostname": "10.0.0.1"})
    assert problems(baseline) == []


def test_group_limited_key_is_only_checked_where_it_applies(baseline) -> None:
    baseline.host("embedder")["proxmox_api_port"] = "eighty"
    assert problems(baseline) == []
    baseline.host("pve")["proxmox_api_port"] = "eighty"
    only(problems(baseline), "pve", "proxmox_api_port")


def test_apt_mirror_without_apt_security_mirror(baseline) -> None:
    baseline.host("dns")["apt_mirror"] = "http://deb.debian.org/debian"
    error = only(problems(baseline), "dns", "apt_security_mirror")
    assert error.expected == "a URL when apt_mirror is set"
    baseline.host("dns")["apt_security_mirror"] = "http://security.debian.org/debian-security"
    assert problems(baseline) == []


def test_timezone_must_be_known(baseline) -> None:
    baseline.host("dns")["timezone"] = "Mars/Olympus"
    error = only(problems(baseline), "dns", "timezone")
    assert "IANA time zone" in error.expected


def test_admin_key_file_must_be_a_public_key(baseline, key_pair) -> None:
    baseline.group_data["all"]["admin_ssh_public_key_files"] = [str(key_pair.private)]
    errors = problems(baseline)
    assert len(errors) == 5  # every host
    assert errors[0].key == "admin_ssh_public_key_files[0]"
    assert errors[0].expected.endswith("(not a public key)")


def test_admin_key_file_missing(baseline, tmp_path) -> None:
    baseline.host("dns")["admin_ssh_public_key_files"] = [str(tmp_path / "nope.pub")]
    error = only(problems(baseline), "dns", "admin_ssh_public_key_files[0]")
    assert error.expected.endswith("(cannot read it)")


def test_missing_secret_names_the_hosts_that_need_it(baseline) -> None:
    error = only(problems(baseline, secrets={}), "pve", "secret proxmox_api_secret")
    assert error.given is None
    assert "HOMELAB_SECRET_PROXMOX_API_SECRET" in error.expected
    assert "(needed by pve)" in error.expected
    assert "is (missing)" in str(error)


def test_the_repository_passphrase_is_needed_only_while_it_is_encrypted(baseline) -> None:
    without = {k: v for k, v in SECRETS.items() if k != "pgbackrest_repository_cipher_pass"}
    error = only(
        problems(baseline, secrets=without), "pve", "secret pgbackrest_repository_cipher_pass"
    )
    assert "(needed by pve)" in error.expected
    baseline.host("pve")["pgbackrest_repository_cipher"] = "none"
    assert problems(baseline, secrets=without) == []


def test_no_secrets_given_skips_the_secret_check(baseline) -> None:
    assert problems(baseline, secrets=None) == []


def test_no_hypervisor_means_no_secret_needed(baseline) -> None:
    baseline.groups = {"embedder": baseline.groups["embedder"]}
    # The embedder needs its Tailscale key, the vector indexer's, the WAL receiver's and the
    # document ingester's passwords and the TLS seed (the memory store's CA it verifies
    # against), and only those.
    only_these = {
        "tailscale_auth_key": Secret("test-double-value"),
        "memory_store_vector_indexer_password": Secret("test-double-value"),
        "memory_store_wal_receiver_password": Secret("test-double-value"),
        "memory_store_document_ingest_password": Secret("test-double-value"),
        "pgbackrest_tls_seed": Secret("test-double-value"),
    }
    assert problems(baseline, secrets=only_these) == []


# --- network sanity ---


def test_lan_cidr_must_be_private(baseline) -> None:
    baseline.host("pve")["lan_cidr"] = "0.0.0.0/0"
    error = only(problems(baseline), "pve", "lan_cidr")
    assert error.given == "0.0.0.0/0"
    assert "private IPv4 network (RFC 1918" in error.expected
    assert "is '0.0.0.0/0'; expected a private IPv4 network" in str(error)


def test_lan_cidr_must_not_be_tailscales_range(baseline) -> None:
    baseline.host("pve")["lan_cidr"] = "100.64.0.0/24"
    errors = problems(baseline)
    error = only(errors, "pve", "lan_cidr")
    assert "Tailscale's 100.64.0.0/10" in error.expected


@pytest.mark.parametrize("address", ["192.168.1.0", "192.168.1.255"])
def test_lan_address_is_not_the_network_or_broadcast_address(baseline, address) -> None:
    baseline.host("dns")["lan_address"] = address
    error = only(problems(baseline), "dns", "lan_address")
    assert str(error) == (
        f"host 'dns': key 'lan_address' is '{address}'; expected a host address in"
        " 192.168.1.0/24, not its network (192.168.1.0) or broadcast (192.168.1.255) address"
    )


def test_guest_gateway_outside_the_lan(baseline) -> None:
    baseline.host("pve")["proxmox_guest_gateway"] = "10.0.0.1"
    error = only(problems(baseline), "pve", "proxmox_guest_gateway")
    assert "is '10.0.0.1'; expected an address in 192.168.1.0/24" in str(error)


def test_guest_nameserver_is_a_usable_address(baseline) -> None:
    baseline.host("pve")["proxmox_guest_nameserver"] = "192.168.1.255"
    error = only(problems(baseline), "pve", "proxmox_guest_nameserver")
    assert "is '192.168.1.255'; expected a host address in 192.168.1.0/24" in str(error)
    baseline.host("pve")["proxmox_guest_nameserver"] = "192.168.1.53"
    assert problems(baseline) == []
    # A resolver beyond the gateway (an upstream or public one) is fine; loopback is not.
    baseline.host("pve")["proxmox_guest_nameserver"] = "9.9.9.9"
    assert problems(baseline) == []
    baseline.host("pve")["proxmox_guest_nameserver"] = "127.0.0.53"
    error = only(problems(baseline), "pve", "proxmox_guest_nameserver")
    assert "is '127.0.0.53'; expected a resolver's unicast address" in str(error)


def test_guest_nameserver_is_not_a_guest_that_does_not_exist_yet(baseline) -> None:
    baseline.host("pve")["proxmox_guest_nameserver"] = "192.168.1.50"  # the dns guest
    error = only(problems(baseline), "pve", "proxmox_guest_nameserver")
    assert "is '192.168.1.50'; expected a resolver that answers before any guest exists" in str(
        error
    )
    assert "not guest dns's address" in str(error)


# --- duplicates ---


def test_duplicate_disk_names_both_places(baseline) -> None:
    baseline.host("pve")["disks"][1]["device"] = "/dev/disk/by-id/ata-TEAM_EXAMPLE1"
    error = only(problems(baseline), "pve", "disks[1].device")
    assert str(error) == (
        "host 'pve': key 'disks[1].device' is '/dev/disk/by-id/ata-TEAM_EXAMPLE1'; expected a"
        " disk listed once; pve disks[0] is the same device"
    )


def test_same_disk_list_on_two_hosts_is_not_judged(baseline) -> None:
    # pyinfra's --data disks=... gives every host the same list.
    baseline.host("embedder")["disks"] = [{**baseline.host("pve")["disks"][4], "pool": "ssd"}]
    assert problems(baseline) == []


def test_duplicate_gpu_function_address_within_a_host(baseline) -> None:
    baseline.host("pve")["gpus"][0]["functions"][1]["address"] = "0000:03:00.0"
    error = only(problems(baseline), "pve", "gpus[0].functions[1].address")
    assert str(error) == (
        "host 'pve': key 'gpus[0].functions[1].address' is '0000:03:00.0'; expected a PCI"
        " address not used by gpus[0].functions[0] of pve"
    )


def test_same_gpu_address_on_another_machine_is_fine(baseline) -> None:
    # Each machine has PCI buses of its own: 0000:01:00.0 on two machines is two devices.
    baseline.host("embedder")["gpus"][0]["functions"][0]["address"] = "0000:03:00.0"
    assert problems(baseline) == []


def test_duplicate_zfs_name_case_folded(baseline) -> None:
    baseline.host("pve")["pools"]["fast"] = {"type": "zfs", "zfs_name": "SSD", "path": "/fast"}
    error = only(problems(baseline), "pve", "pools['fast'].zfs_name")
    assert error.given == "SSD"
    assert error.expected == "a ZFS pool name not used by pools['ssd']"


def test_pool_names_are_lower_case_so_cannot_repeat_case_folded(baseline) -> None:
    baseline.host("pve")["pools"]["SSD"] = {"type": "dir", "path": "/other"}
    error = only(problems(baseline), "pve", "pools['SSD']")
    assert "pool name" in error.expected


# --- capacity ---


def test_guests_memory_over_the_hypervisors(baseline) -> None:
    baseline.host("ageis-node")["guest"]["memory"] = "126G"
    error = only(problems(baseline), "pve", "memory")
    assert str(error) == (
        "host 'pve': key 'memory' is '128G'; expected at least the 128.5 GiB of guest memory it"
        " runs (ageis-node 126 GiB, monitoring 2 GiB, dns 0.5 GiB); it has 128 GiB"
    )
    baseline.host("ageis-node")["guest"]["memory"] = "125.5G"
    assert problems(baseline) == []  # exactly full fits


def test_guest_disk_over_its_pool(baseline) -> None:
    baseline.host("ageis-node")["guest"]["disk_size"] = "4T"
    error = only(problems(baseline), "ageis-node", "guest.disk_size")
    assert str(error) == (
        "host 'ageis-node': key 'guest.disk_size' is '4T'; expected at most the 3572 GiB of"
        " pve's pool 'ssd' (single of 4 disk(s))"
    )


def test_guest_disk_against_a_mirror(baseline) -> None:
    baseline.host("pve")["pools"]["ssd"]["layout"] = "mirror"
    baseline.host("ageis-node")["guest"]["disk_size"] = "600G"
    error = only(problems(baseline), "ageis-node", "guest.disk_size")
    assert error.expected == "at most the 500 GiB of pve's pool 'ssd' (mirror of 4 disk(s))"


def test_guest_disk_on_a_pool_without_disks_is_not_judged(baseline) -> None:
    for disk in baseline.host("pve")["disks"]:
        disk["pool"] = None
    baseline.host("ageis-node")["guest"]["disk_size"] = "100T"
    assert problems(baseline) == []


# --- names ---


@pytest.mark.parametrize("name", ["pve;reboot", "$(reboot)", "-pve", "PVE", "pve\nx"])
def test_inventory_name_is_a_host_name(baseline, name) -> None:
    baseline.groups["embedder"] = [(name, baseline.host("embedder"))]
    error = only(problems(baseline), name, "inventory name")
    assert error.given == name
    assert "a DNS host name, lower case" in error.expected


@pytest.mark.parametrize("value", ["dns;reboot", "$(reboot)", "`id`", "dns\n", "-dns"])
def test_ssh_hostname_is_a_name_or_address(baseline, value) -> None:
    baseline.host("dns")["ssh_hostname"] = value
    error = only(problems(baseline), "dns", "ssh_hostname")
    assert error.given == value
    assert "a DNS host name or IPv4 address" in error.expected


def test_model_text_on_one_line(baseline) -> None:
    baseline.host("pve")["cpu"]["model"] = "Xeon\nrm -rf /"
    error = only(problems(baseline), "pve", "cpu.model")
    assert str(error) == (
        "host 'pve': key 'cpu.model' is 'Xeon\\nrm -rf /'; expected a non-empty string, on one"
        " line, without control characters"
    )


def test_pool_path_in_normal_form(baseline) -> None:
    baseline.host("pve")["pools"]["hdd"]["path"] = "/mnt/../etc"
    error = only(problems(baseline), "pve", "pools['hdd'].path")
    assert error.given == "/mnt/../etc"
    assert error.expected.startswith("an absolute path in normal form")


def test_disk_by_kernel_name(baseline) -> None:
    baseline.host("pve")["disks"][0]["device"] = "/dev/sdb"
    error = only(problems(baseline), "pve", "disks[0].device")
    assert "is '/dev/sdb'; expected a stable device path under /dev/disk/by-id/" in str(error)


# --- groups ---


def test_unknown_group_suggests_the_role(baseline) -> None:
    baseline.groups["dnss"] = ["dns"]
    error = only(problems(baseline), "dns", "groups")
    assert error.given == "dnss"
    assert error.expected.startswith("a role group (hypervisor, ageis_node")
    assert error.expected.endswith("(did you mean 'dns'?)")


def test_pyinfra_groups_are_known(baseline) -> None:
    views = baseline.views()
    views = [HostView(v.name, (*v.groups, "all", "inventory"), v.data) for v in views]
    assert validate_hosts(views, SECRETS, file_groups=("inventory",)) == []
    errors = validate_hosts(views, SECRETS)  # without the file group: unknown
    assert {e.given for e in errors} == {"inventory"}


def test_role_groups_are_the_roles_deploys_know() -> None:
    from deploys.roles import ROLES
    from tasks.common.datamodel.machine import ROLE_GROUPS

    assert set(ROLES) == set(ROLE_GROUPS)


# --- accounts and keys ---


@pytest.mark.parametrize("name", ["root", "postgres", "ollama", "nobody"])
def test_admin_user_is_not_a_system_account(baseline, name) -> None:
    baseline.host("dns")["admin_user"] = name
    error = only(problems(baseline), "dns", "admin_user")
    assert error.given == name
    assert "not a system or service account the deploy relies on (root, daemon" in error.expected


def _public_key_file(tmp_path: Path, key) -> str:
    from cryptography.hazmat.primitives import serialization

    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path = tmp_path / "key.pub"
    path.write_bytes(line + b" someone@laptop\n")
    return str(path)


def test_ecdsa_admin_key_is_refused(baseline, tmp_path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    path = _public_key_file(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    baseline.host("dns")["admin_ssh_public_key_files"] = [path]
    error = only(problems(baseline), "dns", "admin_ssh_public_key_files[0]")
    assert error.given == path
    assert "(a ecdsa-sha2-nistp256 key, which sshd here refuses; accepted: ssh-ed25519" in (
        error.expected
    )


@pytest.mark.parametrize(("bits", "refused"), [(2048, True), (3072, False)])
def test_rsa_admin_key_needs_3072_bits(baseline, tmp_path, bits, refused) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    baseline.host("dns")["admin_ssh_public_key_files"] = [_public_key_file(tmp_path, key)]
    errors = problems(baseline)
    if not refused:
        assert errors == []
        return
    error = only(errors, "dns", "admin_ssh_public_key_files[0]")
    assert error.expected.endswith("(an RSA key of 2048 bits; sshd here requires at least 3072)")


def test_key_type_that_does_not_match_its_blob(baseline, tmp_path) -> None:
    text = Path(baseline.group_data["all"]["admin_ssh_public_key_files"][0]).read_text()
    path = tmp_path / "forged.pub"
    path.write_text(text.replace("ssh-ed25519", "ssh-rsa", 1))
    baseline.host("dns")["admin_ssh_public_key_files"] = [str(path)]
    error = only(problems(baseline), "dns", "admin_ssh_public_key_files[0]")
    assert error.expected.endswith("(not a public key)")


def test_accepted_key_types_are_what_the_generated_sshd_accepts() -> None:
    from tasks.base import admin_user, ssh_server

    template = (Path(__file__).parents[2] / "templates" / "sshd-homelab.conf.j2").read_text()
    assert f"RequiredRSASize {admin_user.MIN_RSA_BITS}" in template
    for key_type in admin_user.ACCEPTED_KEY_TYPES:
        signed_with = ("rsa-sha2-512", "rsa-sha2-256") if key_type == "ssh-rsa" else (key_type,)
        assert set(signed_with) <= set(ssh_server.USER_KEY_ALGORITHMS), key_type
    assert not any("ecdsa" in name for name in ssh_server.USER_KEY_ALGORITHMS)


# --- secret strength ---


@pytest.mark.parametrize(
    "value",
    ["Q", "short-but-ok", "aaaaaaaaaaaaaaaaaaaaaaaa", "1234567890123456", "abababababababababab"],
)
def test_weak_generated_secret_is_refused_without_showing_it(baseline, value) -> None:
    errors = problems(baseline, secrets={**SECRETS, "pgbackrest_tls_seed": Secret(value)})
    error = only(errors, "pve", "secret pgbackrest_tls_seed")
    assert value not in str(error)
    assert f"is *** ({len(value)} characters, about" in str(error)
    assert error.expected.startswith("a random seed of at least 16 characters, about 64 bits")


def test_secret_with_a_newline_is_refused(baseline) -> None:
    secrets = {**SECRETS, "openclaw_gateway_token": Secret("a-long-random-token\nX=1")}
    error = only(problems(baseline, secrets=secrets), "ageis-node", "secret openclaw_gateway_token")
    assert error.expected.startswith("a single-line value without control characters")


@pytest.mark.parametrize("value", ["plan-test-double", "test-double-value", "Zm9vYmFyYmF6cXV4"])
def test_strong_enough_secrets_pass(baseline, value) -> None:
    assert problems(baseline, secrets={**SECRETS, "pgbackrest_tls_seed": Secret(value)}) == []


def test_issued_secrets_are_only_checked_for_shape(baseline) -> None:
    assert problems(baseline, secrets={**SECRETS, "tailscale_auth_key": Secret("k")}) == []
    for bad in ("tskey auth", "tskey\n"):
        secrets = {**SECRETS, "tailscale_auth_key": Secret(bad)}
        error = only(problems(baseline, secrets=secrets), "pve", "secret tailscale_auth_key")
        assert error.expected.startswith("a single-line value without white space, as issued")


def test_lab_secrets_are_strong_enough() -> None:
    import secrets as random

    from tasks.common.datamodel.registry import secret_specs
    from tasks.common.datamodel.secrets import secret_problem

    for spec in secret_specs():
        for _ in range(20):  # the lab's generator: tests/lab/lab_secrets.py
            assert secret_problem(spec, Secret(random.token_urlsafe(24))) is None


# --- secrets ---


def write_secrets(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_secrets_file_readable_by_others_is_refused(tmp_path) -> None:
    path = write_secrets(tmp_path / "secrets.toml", 'proxmox_api_secret = "do-not-show"\n', 0o644)
    with pytest.raises(SecretsError) as caught:
        load_secrets(path)
    assert f"chmod 600 {path}" in str(caught.value)
    assert "0o644" in str(caught.value)
    assert "do-not-show" not in str(caught.value)


def test_secrets_file_group_writable_is_refused(tmp_path) -> None:
    path = write_secrets(tmp_path / "secrets.toml", 'proxmox_api_secret = "x"\n', 0o620)
    with pytest.raises(SecretsError, match="chmod 600"):
        load_secrets(path)


def test_secrets_file_mode_600_is_read(tmp_path) -> None:
    path = write_secrets(tmp_path / "secrets.toml", 'proxmox_api_secret = "from-file"\n')
    assert load_secrets(path)["proxmox_api_secret"].reveal() == "from-file"


def test_environment_overrides_the_file(tmp_path, monkeypatch) -> None:
    path = write_secrets(tmp_path / "secrets.toml", 'proxmox_api_secret = "from-file"\n')
    monkeypatch.setenv("HOMELAB_SECRET_PROXMOX_API_SECRET", "from-env")
    assert load_secrets(path)["proxmox_api_secret"].reveal() == "from-env"


def test_environment_alone_is_enough(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOMELAB_SECRET_PROXMOX_API_SECRET", "from-env")
    secrets = load_secrets(tmp_path / "absent.toml")
    assert secrets["proxmox_api_secret"].reveal() == "from-env"


def test_empty_values_count_as_missing(tmp_path, monkeypatch, baseline) -> None:
    path = write_secrets(tmp_path / "secrets.toml", 'proxmox_api_secret = ""\n')
    monkeypatch.setenv("HOMELAB_SECRET_OTHER", "")
    secrets = load_secrets(path)
    assert secrets == {}
    only(problems(baseline, secrets=secrets), "pve", "secret proxmox_api_secret")


def test_missing_secrets_file_is_no_secrets(tmp_path) -> None:
    assert load_secrets(tmp_path / "absent.toml") == {}


def test_secrets_file_must_be_toml_of_strings(tmp_path) -> None:
    path = write_secrets(tmp_path / "secrets.toml", "proxmox_api_secret = \n")
    with pytest.raises(SecretsError, match="not valid TOML"):
        load_secrets(path)
    write_secrets(path, "proxmox_api_secret = 1234\n")
    with pytest.raises(SecretsError, match="'proxmox_api_secret' must be a string, got int"):
        load_secrets(path)


def test_secrets_file_location(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("HOMELAB_SECRETS_FILE", raising=False)
    assert secrets_file() == Path("secrets.toml")
    monkeypatch.setenv("HOMELAB_SECRETS_FILE", str(tmp_path / "s.toml"))
    assert secrets_file() == tmp_path / "s.toml"


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert str(secret) == "***"
    assert repr(secret) == "Secret(***)"
    assert "hunter2" not in f"{secret} {secret!r} {[secret]} {dict(k=secret)}"
    assert "hunter2" not in "%s %r" % (secret, secret)  # noqa: UP031
    assert secret.reveal() == "hunter2"


def test_secrets_file_of_another_user_is_refused(tmp_path, monkeypatch) -> None:
    path = write_secrets(tmp_path / "secrets.toml", 'proxmox_api_secret = "do-not-show"\n')
    if os.getuid() == 0:
        os.chown(path, 65534, -1)  # root can hand it to nobody
    else:
        owner = path.stat().st_uid
        monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(SecretsError) as caught:
        load_secrets(path)
    assert f"secrets file {path} is owned by user id" in str(caught.value)
    assert "do-not-show" not in str(caught.value)
