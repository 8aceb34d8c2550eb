"""The nodes' Tailscale: package from the configured signed repository, tailscaled, login.

The tailnet itself (peers online, ``tailscale ping``) needs the real machines: those checks are
marked ``hardware``, and on the lab, where the installed tailscale is the lab's test double
(``/usr/share/tailscale-standin/TEST-DOUBLE``), they skip saying so. Everything else runs
against the lab and the real hosts alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasks.base.tailscale import AUTH_KEY_DIR, AUTH_KEY_FILE, DATA, KEYRING, NODE_GROUPS, SOURCES
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = NODE_GROUPS

STANDIN_MARKER = "/usr/share/tailscale-standin/TEST-DOUBLE"
STANDIN_SKIP = "stand-in: tailnet not checked (the installed tailscale is the lab's test double)"


def settings(node: InventoryHost) -> dict[str, Any]:
    return DATA.check(node.name, node.data)


def tailnet_name(node: InventoryHost) -> str:
    return settings(node)["tailscale_hostname"] or node.name


def release(node: InventoryHost) -> tuple[str, str]:
    out = node.testinfra.check_output('. /etc/os-release && echo "$ID $VERSION_CODENAME"')
    distro, codename = out.split()
    return distro, codename


def filled(node: InventoryHost, key: str) -> str:
    distro, codename = release(node)
    values = settings(node)
    return values[key].format(track=values["tailscale_track"], distro=distro, codename=codename)


def deb822(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip()] = value.strip()
    return fields


def status(node: InventoryHost) -> dict[str, Any]:
    return json.loads(node.testinfra.check_output("tailscale status --json"))


def test_keyring_holds_exactly_the_expected_key(host_in: InventoryHost) -> None:
    keyring = host_in.testinfra.file(KEYRING)
    assert keyring.is_file and keyring.user == "root" and keyring.mode == 0o644
    listing = host_in.testinfra.check_output(
        'd=$(mktemp -d) && GNUPGHOME="$d" gpg --batch --show-keys --with-colons %s'
        ' | awk -F: \'$1 == "pub" {p = 1; next} $1 == "fpr" && p {print $10; p = 0}\';'
        ' rm -rf "$d"',
        KEYRING,
    )
    assert listing.split() == [settings(host_in)["tailscale_key_fingerprint"]]


def test_source_names_the_repository_and_the_keyring(host_in: InventoryHost) -> None:
    _, codename = release(host_in)
    source = host_in.testinfra.file(SOURCES)
    assert source.is_file and source.mode == 0o644
    fields = deb822(source.content_string)
    assert fields == {
        "Types": "deb",
        "URIs": filled(host_in, "tailscale_repo_url"),
        "Suites": codename,
        "Components": "main",
        "Signed-By": KEYRING,
    }
    # No second (unsigned, or differently signed) entry for the same repository.
    url = filled(host_in, "tailscale_repo_url")
    found = host_in.testinfra.run(
        "grep -rlF %s /etc/apt/sources.list /etc/apt/sources.list.d/", url
    ).stdout.split()
    assert found == [SOURCES]


def test_package_comes_from_the_configured_repository(host_in: InventoryHost) -> None:
    _, codename = release(host_in)
    package = host_in.testinfra.package("tailscale")
    assert package.is_installed
    wanted = settings(host_in)["tailscale_version"]
    if wanted:
        assert package.version == wanted
    policy = host_in.testinfra.check_output("LC_ALL=C apt-cache policy tailscale")
    # The version table: " *** <installed> <prio>" followed by the sources that offer it.
    origins: list[str] = []
    lines = policy.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("***"):
            for following in lines[index + 1 :]:
                if not following.startswith("        "):
                    break
                origins.append(following.strip())
    expected = f"{filled(host_in, 'tailscale_repo_url')} {codename}/main"
    assert any(expected in origin for origin in origins), policy


def test_tailscaled_is_enabled_and_running(host_in: InventoryHost) -> None:
    service = host_in.testinfra.service("tailscaled")
    assert service.is_enabled
    assert service.is_running


def test_node_is_logged_in(host_in: InventoryHost) -> None:
    state = status(host_in)
    assert state["BackendState"] == "Running", state.get("Health")
    assert state["TailscaleIPs"], "logged in but no tailnet address"


def test_node_settings_match_the_data(host_in: InventoryHost) -> None:
    values = settings(host_in)
    prefs = json.loads(host_in.testinfra.check_output("tailscale debug prefs"))
    assert prefs["Hostname"] == tailnet_name(host_in)
    assert prefs["RunSSH"] is values["tailscale_ssh"]
    assert prefs["CorpDNS"] is values["tailscale_accept_dns"]
    assert prefs["RouteAll"] is values["tailscale_accept_routes"]
    assert sorted(prefs.get("AdvertiseTags") or []) == sorted(values["tailscale_tags"])


def test_no_auth_key_remains_after_login(host_in: InventoryHost) -> None:
    directory = host_in.testinfra.file(AUTH_KEY_DIR)
    assert directory.is_directory and directory.user == "root" and directory.mode == 0o700
    # The reusable key is on the host only while tailscale up runs.
    assert not host_in.testinfra.file(AUTH_KEY_FILE).exists


def _skip_on_the_standin(node: InventoryHost) -> None:
    if node.testinfra.file(STANDIN_MARKER).exists:
        pytest.skip(STANDIN_SKIP)


def _other_nodes(node: InventoryHost, everyone: list[InventoryHost]) -> list[InventoryHost]:
    return [
        other
        for other in everyone
        if other.name != node.name and set(NODE_GROUPS) & set(other.groups)
    ]


@pytest.mark.hardware
def test_other_nodes_are_online_peers(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    _skip_on_the_standin(host_in)
    peers = (status(host_in).get("Peer") or {}).values()
    online = {
        name
        for peer in peers
        if peer.get("Online")
        for name in (peer.get("HostName", ""), peer.get("DNSName", "").split(".")[0])
        if name
    }
    missing = [
        tailnet_name(other)
        for other in _other_nodes(host_in, inventory_hosts)
        if tailnet_name(other) not in online
    ]
    assert not missing, f"{host_in.name}: not online in the tailnet: {missing}"


@pytest.mark.hardware
def test_other_nodes_answer_tailscale_ping(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    _skip_on_the_standin(host_in)
    for other in _other_nodes(host_in, inventory_hosts):
        result = host_in.testinfra.run(
            "tailscale ping --c=3 --timeout=10s --until-direct=false %s", tailnet_name(other)
        )
        assert result.rc == 0 and "pong" in result.stdout, (
            f"{host_in.name} -> {tailnet_name(other)}: {result.stdout} {result.stderr}"
        )
