"""Value forms: what each accepts, how it normalises, and where an error points."""

from __future__ import annotations

import ipaddress

import pytest

from tasks.common.datamodel.forms import (
    ABSOLUTE_PATH,
    HOST_OR_ADDRESS,
    HOSTNAME,
    PCI_ADDRESS,
    PCI_ID,
    Bool,
    Field,
    FormError,
    Int,
    IPv4Address,
    IPv4Network,
    ListOf,
    MapOf,
    Optional,
    Predicate,
    Size,
    Str,
    Struct,
    path_in_package,
    plain,
)
from tasks.common.datamodel.machine import DISK, GPU, GUEST, LAN_CIDR, POOL_NAME, DiskDevice

GiB = 1024**3


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("16G", 16 * GiB),
        ("500M", 500 * 1024**2),
        ("22T", 22 * 1024**4),
        ("1.5G", int(1.5 * GiB)),
        ("64K", 64 * 1024),
        ("1P", 1024**5),
        ("512", 512),
        ("512B", 512),
        ("16GiB", 16 * GiB),
        ("16GB", 16 * GiB),
        ("16g", 16 * GiB),
        (" 16 G ", 16 * GiB),
    ],
)
def test_size_accepts_binary_units(given: str, expected: int) -> None:
    assert Size().check(given) == expected


@pytest.mark.parametrize(
    "given",
    ["16 gigs", "-1G", 16, 16.0, None, True, "", "G", "16X", "1e3G", "16iB", "16 G B", "0"],
)
def test_size_rejects(given: object) -> None:
    with pytest.raises(FormError) as caught:
        Size().check(given)
    assert caught.value.given == given
    assert caught.value.path == ""


def test_size_minimum_is_part_of_the_message() -> None:
    with pytest.raises(FormError, match="at least 67108864 bytes"):
        Size(minimum=64 * 1024**2).check("32M")
    assert Size(minimum=64 * 1024**2).check("64M") == 64 * 1024**2


@pytest.mark.parametrize("given", ["1002:7551", "10de:2187", "8086:a0ed", "0000:0000"])
def test_pci_id_accepts_lower_case_hex(given: str) -> None:
    assert PCI_ID.check(given) == given


@pytest.mark.parametrize(
    "given",
    ["1002:AB40", "10DE:2187", "1002-7551", "1002:755", "1002:75511", "10027551", "", None, 1002],
)
def test_pci_id_rejects(given: object) -> None:
    with pytest.raises(FormError, match="PCI vendor:device ID, lower-case hex"):
        PCI_ID.check(given)


@pytest.mark.parametrize("given", ["0000:03:00.0", "0000:03:00.1", "0000:0a:1f.7", "0001:ff:10.3"])
def test_pci_address_accepts_full_addresses(given: str) -> None:
    assert PCI_ADDRESS.check(given) == given


@pytest.mark.parametrize(
    "given",
    [
        "03:00.0",  # no domain
        "0000:03:00",  # no function
        "0000:03:00.8",  # function is 0-7
        "0000:03:20.0",  # device is 00-1f
        "0000:0A:00.0",  # upper case
        "0000:03:00:0",
        "",
        None,
    ],
)
def test_pci_address_rejects(given: object) -> None:
    with pytest.raises(FormError, match=r"PCI address domain:bus:device\.function"):
        PCI_ADDRESS.check(given)


def test_ipv4_network_is_strict() -> None:
    assert IPv4Network().check("192.168.1.0/24") == ipaddress.IPv4Network("192.168.1.0/24")
    assert IPv4Network().check("10.0.0.0/8").prefixlen == 8
    with pytest.raises(FormError, match="no host bits set") as caught:
        IPv4Network().check("192.168.1.1/24")
    assert caught.value.given == "192.168.1.1/24"


@pytest.mark.parametrize("given", ["192.168.1.0", "192.168.1.0/33", "fd00::/64", "", None, 24])
def test_ipv4_network_rejects(given: object) -> None:
    with pytest.raises(FormError):
        IPv4Network().check(given)


def test_ipv4_address() -> None:
    assert IPv4Address().check("192.168.1.10") == ipaddress.IPv4Address("192.168.1.10")
    for given in ["192.168.1.256", "192.168.001.1", "192.168.1.0/24", "::1", "", None]:
        with pytest.raises(FormError):
            IPv4Address().check(given)


@pytest.mark.parametrize("given", [3232235786, b"\xc0\xa8\x01\x0a"])
def test_ipv4_address_is_only_a_string(given: object) -> None:
    # ipaddress would read these as 192.168.1.10; in the data they are mistakes.
    with pytest.raises(FormError):
        IPv4Address().check(given)


def test_str_choices_and_pattern() -> None:
    assert Str().check("x") == "x"
    assert Str(choices=("a", "b")).check("b") == "b"
    with pytest.raises(FormError, match="one of 'a', 'b'"):
        Str(choices=("a", "b")).check("c")
    with pytest.raises(FormError, match="a non-empty string"):
        Str().check("")
    with pytest.raises(FormError):
        Str(r"[a-z]+").check("abc1")  # full match, not a prefix


def test_hostname_and_pool_name() -> None:
    assert HOSTNAME.check("ageis-node") == "ageis-node"
    assert HOSTNAME.check("pve.home.arpa") == "pve.home.arpa"
    for bad in ["PVE", "-pve", "pve-", "pve_1", "a" * 64, ""]:
        with pytest.raises(FormError):
            HOSTNAME.check(bad)
    assert POOL_NAME.check("ssd") == "ssd"
    with pytest.raises(FormError):
        POOL_NAME.check("1ssd")


def test_bool_and_int_are_strict() -> None:
    assert Bool().check(False) is False
    with pytest.raises(FormError):
        Bool().check("yes")
    with pytest.raises(FormError):
        Bool().check(1)
    assert Int(1, 10).check(10) == 10
    for bad in [0, 11, True, "5", 5.0]:
        with pytest.raises(FormError):
            Int(1, 10).check(bad)
    with pytest.raises(FormError, match="from 1 to 10"):
        Int(1, 10).check(11)


def test_optional_and_predicate() -> None:
    assert Optional(Int()).check(None) is None
    assert Optional(Int()).check(3) == 3
    assert Optional(Int()).description == "a whole number, or None"
    even = Predicate(Int(), lambda n: n % 2 == 0, "an even number")
    assert even.check(4) == 4
    with pytest.raises(FormError, match="an even number") as caught:
        even.check(3)
    assert caught.value.given == 3


def test_list_of_points_at_the_item() -> None:
    form = ListOf(Size())
    assert form.check(["1G", "2G"]) == [GiB, 2 * GiB]
    with pytest.raises(FormError) as caught:
        form.check(["1G", "2 gigs"])
    assert caught.value.path == "[1]"
    assert caught.value.given == "2 gigs"
    with pytest.raises(FormError):
        form.check("1G")  # a string is not a list


def test_list_of_min_items_and_unique() -> None:
    with pytest.raises(FormError, match=r"at least 1"):
        ListOf(Str(), min_items=1).check([])
    with pytest.raises(FormError, match="without repeats"):
        ListOf(Str(), unique=True).check(["curl", "curl"])
    assert ListOf(Str(), unique=True).check(("a", "b")) == ["a", "b"]


def _gpu(**changes: object) -> dict:
    gpu = {
        "name": "r9700",
        "vendor": "amd",
        "model": "AMD Radeon AI PRO R9700",
        "vram": "32G",
        "functions": [
            {"id": "1002:7551", "address": "0000:03:00.0", "kind": "display"},
            {"id": "1002:ab40", "address": "0000:03:00.1", "kind": "audio"},
        ],
    }
    gpu.update(changes)
    return gpu


def test_struct_normalises_and_fills_defaults() -> None:
    checked = GPU.check(_gpu())
    assert checked["vram"] == 32 * GiB
    assert checked["passthrough_to"] is None
    assert checked["functions"][1] == {
        "id": "1002:ab40",
        "address": "0000:03:00.1",
        "kind": "audio",
    }


def test_nested_error_path_names_the_field() -> None:
    gpu = _gpu()
    gpu["functions"][1]["id"] = "1002:AB40"
    with pytest.raises(FormError) as caught:
        ListOf(GPU).check([gpu])
    assert caught.value.path == "[0].functions[1].id"
    assert caught.value.given == "1002:AB40"
    assert "PCI vendor:device ID" in caught.value.expected


def test_struct_refuses_an_unknown_field() -> None:
    gpu = _gpu()
    gpu["functions"][0]["adress"] = "0000:03:00.0"
    with pytest.raises(FormError) as caught:
        GPU.check(gpu)
    assert caught.value.path == ".functions[0].adress"
    assert caught.value.given == "adress"
    assert caught.value.expected == "only the fields id, address, kind"


def test_struct_with_non_string_field_names_fails_cleanly() -> None:
    with pytest.raises(FormError):
        Struct({"a": Field(Int())}).check({"a": 1, 2: 3, "b": 4})


def test_struct_missing_required_field() -> None:
    gpu = _gpu()
    del gpu["vram"]
    with pytest.raises(FormError) as caught:
        GPU.check(gpu)
    assert caught.value.path == ".vram"
    assert caught.value.given is None
    assert caught.value.expected.startswith("a field 'vram': a size")


def test_struct_rejects_a_non_mapping() -> None:
    with pytest.raises(FormError, match="a GPU description with name"):
        GPU.check(["r9700"])


def test_guest_struct_checks_its_sizes() -> None:
    guest = {
        "hypervisor": "pve",
        "kind": "qemu",
        "vmid": 100,
        "cores": 4,
        "memory": "16 gigs",
        "disk_size": "256G",
        "storage": "ssd",
        "os": "ubuntu-24.04",
    }
    with pytest.raises(FormError) as caught:
        GUEST.check(guest)
    assert caught.value.path == ".memory"
    guest["memory"] = "16G"
    assert GUEST.check(guest)["bridge"] == "vmbr0"


def test_map_of_paths_and_bad_keys() -> None:
    form = MapOf(POOL_NAME, Struct({"path": Field(Str())}))
    assert form.check({"ssd": {"path": "/ssd"}}) == {"ssd": {"path": "/ssd"}}
    with pytest.raises(FormError) as caught:
        form.check({"ssd": {"path": ""}})
    assert caught.value.path == "['ssd'].path"
    with pytest.raises(FormError) as caught:
        form.check({"SSD": {"path": "/ssd"}})
    assert caught.value.path == "['SSD']"
    assert caught.value.given == "SSD"
    assert caught.value.expected.startswith("a key that is a pool name")
    with pytest.raises(FormError):
        form.check([("ssd", {"path": "/ssd"})])


def test_inside_prefixes_the_path() -> None:
    error = FormError("x", 1, ".id").inside("[2]").inside(".functions")
    assert error.path == ".functions[2].id"
    assert str(error) == "x"


def test_plain_renders_normalised_values() -> None:
    value = {
        "a": ipaddress.IPv4Address("10.0.0.1"),
        "n": [ipaddress.IPv4Network("10.0.0.0/8")],
        "s": "text",
    }
    assert plain(value) == {"a": "10.0.0.1", "n": ["10.0.0.0/8"], "s": "text"}


@pytest.mark.parametrize("given", ["voice/data", "/srv/voices", "a/b.c/d"])
def test_path_in_package_accepts(given: str) -> None:
    assert path_in_package("voice/data", "/srv/voices", "tts_voice_package").check(given) == given


@pytest.mark.parametrize("given", ["../etc", "voice/../../etc"])
def test_path_in_package_refuses_dot_dot_and_names_the_package_key(given: str) -> None:
    form = path_in_package("voice/data", "/srv/voices", "tts_voice_package")
    with pytest.raises(FormError) as error:
        form.check(given)
    assert "tts_voice_package is None" in str(error.value)


@pytest.mark.parametrize("given", ["with space", "", 3])
def test_path_in_package_refuses_what_is_not_a_path(given: object) -> None:
    with pytest.raises(FormError, match="a path"):
        path_in_package("voice/data", "/srv/voices", "tts_voice_package").check(given)


# --- single-line values ---


@pytest.mark.parametrize(
    "given", ["a\nb", "a\rb", "a\tb", "a\x1b[2Jb", "a\x00b", "a\x7fb", "a\x85b"]
)
def test_str_refuses_control_characters(given: str) -> None:
    with pytest.raises(FormError) as caught:
        Str().check(given)
    assert caught.value.expected == "a non-empty string, on one line, without control characters"
    assert caught.value.given == given


def test_control_characters_are_refused_whatever_the_pattern_allows() -> None:
    with pytest.raises(FormError, match="on one line"):
        Str(r"[^\0]+", what="a file").check("ok\nrm -rf /")


def test_multiline_text_keeps_line_breaks_and_tabs_only() -> None:
    banner = Str(multiline=True, what="text")
    assert banner.check("Line one\n\tline two") == "Line one\n\tline two"
    with pytest.raises(FormError, match="other than line breaks and tabs"):
        banner.check("Clear\x1b[2J screen")
    with pytest.raises(FormError):
        banner.check("carriage\rreturn")


@pytest.mark.parametrize("given", ["$(reboot)", "pve;reboot", "`id`", "pve reboot", "-pve", "PVE"])
def test_host_names_are_from_a_safe_alphabet(given: str) -> None:
    for form in (HOSTNAME, HOST_OR_ADDRESS):
        with pytest.raises(FormError) as caught:
            form.check(given)
        assert "lower case" in caught.value.expected
    assert HOST_OR_ADDRESS.check("192.168.1.10") == "192.168.1.10"


# --- paths ---


@pytest.mark.parametrize("given", ["/srv/ssd", "/", "/var/lib/x.d"])
def test_absolute_path_in_normal_form(given: str) -> None:
    assert ABSOLUTE_PATH.check(given) == given


@pytest.mark.parametrize(
    "given",
    ["/mnt/../etc", "/srv/./ssd", "//srv", "/srv//ssd", "/srv/ssd/", "/srv/ssd ", "srv", "/a\nb"],
)
def test_absolute_path_refuses_what_is_not_normal(given: str) -> None:
    with pytest.raises(FormError) as caught:
        ABSOLUTE_PATH.check(given)
    assert caught.value.expected.startswith("an absolute path in normal form")
    assert caught.value.given == given


def test_disk_device_by_id() -> None:
    device = "/dev/disk/by-id/nvme-Samsung_SSD_960_EVO_500GB_S3X4NB0K123456"
    assert DiskDevice().check(device) == device
    assert DiskDevice().check("/dev/disk/by-id/wwn-0x5002538e40a1b2c3") is not None


def test_disk_device_kernel_name_gets_a_hint() -> None:
    with pytest.raises(FormError) as caught:
        DISK.check({"device": "/dev/sdb", "model": "x", "size": "1T", "kind": "hdd"})
    assert caught.value.path == ".device"
    assert caught.value.given == "/dev/sdb"
    assert "under /dev/disk/by-id/" in caught.value.expected
    assert "not a kernel name such as /dev/sdb" in caught.value.expected


@pytest.mark.parametrize(
    "given",
    [
        "/dev/disk/by-id/../../sda",
        "/dev/disk/by-id/..",
        "/dev/disk/by-id/.",
        "/dev/disk/by-id//ata-x",
        "/dev/disk/by-id/ata-x/../../../etc/passwd",
        "/dev/disk/by-uuid/1234",
        "/dev/disk/by-id/",
        "/dev/disk/by-id/ata-x\n",
        "/dev/disk/by-id/$(reboot)",
    ],
)
def test_disk_device_refuses_escapes_and_other_trees(given: str) -> None:
    with pytest.raises(FormError) as caught:
        DiskDevice().check(given)
    assert "under /dev/disk/by-id/" in caught.value.expected


# --- the LAN ---


@pytest.mark.parametrize(
    "given", ["192.168.1.0/24", "10.213.0.0/24", "172.16.0.0/12", "10.0.0.0/8"]
)
def test_lan_cidr_private(given: str) -> None:
    assert str(LAN_CIDR.check(given)) == given


@pytest.mark.parametrize(
    "given",
    [
        "0.0.0.0/0",  # everything
        "8.8.8.0/24",  # public
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "100.64.0.0/10",  # Tailscale's CGNAT range
        "100.100.0.0/16",
        "172.32.0.0/16",  # just outside 172.16.0.0/12
        "192.168.0.0/15",  # wider than 192.168.0.0/16
        "192.168.1.0/31",  # no host address left
    ],
)
def test_lan_cidr_refuses_what_is_not_a_private_lan(given: str) -> None:
    with pytest.raises(FormError) as caught:
        LAN_CIDR.check(given)
    assert "private IPv4 network (RFC 1918" in caught.value.expected
    assert "100.64.0.0/10" in caught.value.expected


def test_guest_passthrough_gpu_is_a_name() -> None:
    guest = {
        "hypervisor": "pve",
        "kind": "qemu",
        "vmid": 100,
        "cores": 1,
        "memory": "1G",
        "disk_size": "8G",
        "storage": "ssd",
        "os": "debian-13",
        "passthrough_gpu": "r9700; reboot",
    }
    with pytest.raises(FormError) as caught:
        GUEST.check(guest)
    assert caught.value.path == ".passthrough_gpu"
