"""The firewall's data forms, port merging and SSH-session preflight (no hosts)."""

from __future__ import annotations

import ipaddress

import pytest

from deploys.roles import declared_ports
from tasks.base.firewall import DATA, open_ports, ports_of, session_refusal
from tasks.common.datamodel.keys import DataError
from tasks.common.facts import SshSession
from tasks.common.ports import Port

LAN = ipaddress.IPv4Network("192.168.1.0/24")


def test_ports_are_merged_once_each_and_sorted() -> None:
    declared = [Port(53, "udp", "unbound"), Port(22, "tcp", "ssh"), Port(53, "tcp", "unbound")]
    extra = [
        {"port": 22, "proto": "tcp", "service": "second sshd"},
        {"port": 9100, "proto": "tcp", "service": "node-exporter"},
    ]
    assert open_ports(declared, extra) == (
        Port(22, "tcp", "ssh"),
        Port(53, "tcp", "unbound"),
        Port(53, "udp", "unbound"),
        Port(9100, "tcp", "node-exporter"),
    )


def test_every_host_declares_ssh_and_the_dns_guest_its_resolver() -> None:
    assert Port(22, "tcp", "ssh") in declared_ports(["embedder"])
    dns = declared_ports(["service_guests", "dns"])
    assert {Port(53, "udp", "unbound"), Port(53, "tcp", "unbound")} <= set(dns)
    assert Port(53, "udp", "unbound") not in declared_ports(["service_guests", "monitoring"])


@pytest.mark.parametrize(
    "value, key, expected",
    [
        ([{"port": 70000, "proto": "tcp", "service": "x"}], "[0].port", "from 1 to 65535"),
        ([{"port": 80, "proto": "sctp", "service": "x"}], "[0].proto", "'tcp', 'udp'"),
        ([{"port": 80, "proto": "tcp", "service": 'a"b'}], "[0].service", "service name"),
        ([{"port": 80, "proto": "tcp"}], "[0].service", "a field 'service'"),
    ],
)
def test_bad_extra_ports_name_key_and_form(value: object, key: str, expected: str) -> None:
    with pytest.raises(DataError) as caught:
        ports_of("embedder", (), {"firewall_extra_ports": value})
    assert caught.value.key == f"firewall_extra_ports{key}" and caught.value.host == "embedder"
    assert expected in caught.value.expected


@pytest.mark.parametrize(
    "rule",
    [
        "ip saddr 192.168.1.5 tcp dport 9100 accept",
        "tcp dport { 80, 443 } accept",
        'iifname "wg0" udp dport 51820 accept comment "wireguard"',
        "tcp dport 22 acept",  # nft's own check catches this one, not the form
    ],
)
def test_one_line_rules_pass_the_form(rule: str) -> None:
    assert DATA.check("pve", {"firewall_extra_rules": [rule]})["firewall_extra_rules"] == [rule]


@pytest.mark.parametrize(
    "rule",
    [
        "tcp dport 22 accept\nflush ruleset",
        "tcp dport 22 accept; flush ruleset",
        "tcp dport 22 accept # }",
        "tcp dport 22 accept }",
        "} chain x { tcp dport 22 accept",
        'iifname "wg0 accept',
        "",
    ],
)
def test_rules_that_could_leave_their_chain_are_refused(rule: str) -> None:
    with pytest.raises(DataError) as caught:
        DATA.check("pve", {"firewall_extra_rules": [rule]})
    assert caught.value.key == "firewall_extra_rules[0]"


@pytest.mark.parametrize("rate", ["0/second", "10/fortnight", "10", 10])
def test_icmp_rate_form(rate: object) -> None:
    with pytest.raises(DataError, match="firewall_icmp_rate"):
        DATA.check("pve", {"firewall_icmp_rate": rate})


@pytest.mark.parametrize(
    "client",
    ["192.168.1.2", "100.64.0.1", "100.127.255.254", "fd7a:115c:a1e0::1", "127.0.0.1", "::1"],
)
def test_sessions_the_rules_let_in(client: str) -> None:
    assert session_refusal({"client": client, "port": 22}, LAN, [22, 8006]) is None


@pytest.mark.parametrize(
    "session, reason",
    [
        ({"client": "192.168.2.2", "port": 22}, "neither in lan_cidr (192.168.1.0/24)"),
        ({"client": "100.128.0.1", "port": 22}, "nor on the tailnet"),
        ({"client": "fe80::1%eth0", "port": 22}, "comes from fe80::1"),
        ({"client": "192.168.1.2", "port": 2222}, "port 2222/tcp, which no task declares"),
        ({"client": "not-an-address", "port": 22}, "is not an IP address"),
        (None, "$SSH_CONNECTION is empty"),
    ],
)
def test_sessions_the_rules_would_cut_are_refused(session: dict | None, reason: str) -> None:
    refusal = session_refusal(session, LAN, [22])
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    "output, expected",
    [
        (["192.168.1.2 50514 192.168.1.30 22"], {"client": "192.168.1.2", "port": 22}),
        (
            ["fd7a:115c:a1e0::5 40000 fd7a:115c:a1e0::9 2222"],
            {"client": "fd7a:115c:a1e0::5", "port": 2222},
        ),
        ([""], None),
        ([], None),
    ],
)
def test_ssh_session_fact_reads_ssh_connection(output: list[str], expected: object) -> None:
    assert SshSession().process(output) == expected


def test_port_probe_must_be_a_known_kind() -> None:
    assert Port(8300, "tcp", "embedding-server", probe="http:/health").probe == "http:/health"
    with pytest.raises(ValueError, match="probe 'http' of web is not"):
        Port(80, "tcp", "web", probe="http")


def test_port_probe_and_metrics_path_do_not_change_identity() -> None:
    assert Port(22, "tcp", "ssh", probe="ssh") == Port(22, "tcp", "ssh")
