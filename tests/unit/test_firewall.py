"""The firewall's data forms, port merging and SSH-session preflight (no hosts)."""

from __future__ import annotations

import ipaddress

import pytest

from deploys.roles import declared_ports
from tasks.base.firewall import DATA, open_ports, openings, ports_of, session_refusal
from tasks.common.datamodel.keys import DataError
from tasks.common.facts import SshSession
from tasks.common.ports import ADMIN, ALL_HOSTS, TAILNET, Port
from tasks.common.ports import LAN as LAN_CONSUMER

LAN = ipaddress.IPv4Network("192.168.1.0/24")


def test_a_loopback_port_is_opened_to_nobody_and_takes_no_consumers() -> None:
    ollama = Port(11434, "tcp", "ollama", probe="http:/api/version", loopback=True)
    assert open_ports([ollama, Port(22, "tcp", "ssh")], []) == (Port(22, "tcp", "ssh"),)
    assert not ollama.monitored, "probed on the host, not from the monitoring guest"
    assert ollama in declared_ports(["ageis_node"])
    with pytest.raises(ValueError, match="loopback only"):
        Port(11434, "tcp", "ollama", consumers=(ADMIN,), loopback=True)


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


SSH = Port(22, "tcp", "ssh", probe="ssh", consumers=(ADMIN,))
# Inventory groups' LAN addresses as the firewall resolves consumers (the real inventory's).
GROUPS = {
    "hypervisor": ["192.168.1.10"],
    "ageis_node": ["192.168.1.20"],
    "embedder": ["192.168.1.30"],
    "monitoring": ["192.168.1.40"],
    "dns": ["192.168.1.50"],
    ALL_HOSTS: ["192.168.1.10", "192.168.1.20", "192.168.1.30", "192.168.1.40", "192.168.1.50"],
}


def _open(*ports: Port, admin: list | None = None, own: str = "192.168.1.20") -> tuple:
    return openings(
        ports,
        lan_cidr=LAN,
        admin_sources=[ipaddress.ip_network(n) for n in admin] if admin else None,
        group_addresses=GROUPS,
        own_address=own,
        data={"postgresql_extra_clients": [{"role": "actr_engine", "address": "192.168.1.99"}]},
    )


def test_admin_ports_open_to_the_lan_by_default_and_the_tailnet() -> None:
    (ssh,) = _open(SSH)
    assert ssh.ipv4 == ("192.168.1.0/24",) and ssh.ipv6 == () and ssh.tailnet
    assert ssh.consumers == (ADMIN, "monitoring")


def test_admin_sources_from_data_replace_the_lan_in_both_families() -> None:
    (ssh,) = _open(SSH, admin=["192.168.1.64/28", "fd00:1::/64"])
    assert ssh.ipv4 == ("192.168.1.40/32", "192.168.1.64/28")  # monitoring probes ssh
    assert ssh.ipv6 == ("fd00:1::/64",) and ssh.tailnet


def test_a_group_consumer_opens_to_its_hosts_only_and_monitoring_to_probed_ports() -> None:
    embed = Port(8300, "tcp", "embedding-server", probe="http:/health", consumers=("ageis_node",))
    (opening,) = _open(embed, own="192.168.1.30")
    assert opening.ipv4 == ("192.168.1.20/32", "192.168.1.40/32") and not opening.tailnet
    assert opening.admits(ipaddress.ip_address("192.168.1.20"))
    assert not opening.admits(ipaddress.ip_address("192.168.1.21"))
    assert not opening.admits(ipaddress.ip_address("100.64.0.1")), "not on the tailnet"


def test_a_port_without_consumers_is_local_only_and_the_host_is_never_its_own_source() -> None:
    (ollama,) = _open(Port(11434, "tcp", "ollama"))
    assert ollama.local_only and ollama.consumers == ()
    (dns,) = _open(Port(53, "udp", "unbound", consumers=(ALL_HOSTS,)), own="192.168.1.50")
    assert "192.168.1.50/32" not in dns.ipv4 and len(dns.ipv4) == 4


def test_tailnet_and_lan_consumers_and_extra_sources_from_data() -> None:
    ui, peer, store = _open(
        Port(9090, "tcp", "prometheus", consumers=(TAILNET,)),
        Port(41641, "udp", "tailscaled", consumers=(LAN_CONSUMER,)),
        Port(
            5432,
            "tcp",
            "postgresql",
            consumers=("embedder",),
            extra_sources=lambda data: [
                f"{c['address']}/32" for c in data["postgresql_extra_clients"]
            ],
        ),
    )
    assert ui.tailnet and ui.ipv4 == () and ui.ipv6 == ()
    assert peer.ipv4 == ("192.168.1.0/24",) and not peer.tailnet
    assert store.ipv4 == ("192.168.1.30/32", "192.168.1.99/32")


def test_an_unknown_consumer_is_refused_where_the_port_is_declared() -> None:
    with pytest.raises(ValueError, match=r"consumers \['embeder'\] of x are not among"):
        Port(1, "tcp", "x", consumers=("embeder",))


def test_extra_ports_take_consumers_and_default_to_admin() -> None:
    ports = ports_of(
        "embedder",
        (),
        {
            "firewall_extra_ports": [
                {"port": 5201, "proto": "tcp", "service": "iperf3"},
                {"port": 5202, "proto": "tcp", "service": "x", "consumers": ["embedder"]},
            ]
        },
    )
    assert [p.consumers for p in ports] == [(ADMIN,), ("embedder",)]
    with pytest.raises(DataError, match="consumers"):
        ports_of(
            "embedder",
            (),
            {
                "firewall_extra_ports": [
                    {"port": 1, "proto": "tcp", "service": "x", "consumers": ["nobody"]}
                ]
            },
        )


@pytest.mark.parametrize(
    "client",
    ["192.168.1.2", "100.64.0.1", "100.127.255.254", "fd7a:115c:a1e0::1", "127.0.0.1", "::1"],
)
def test_sessions_the_rules_let_in(client: str) -> None:
    assert session_refusal({"client": client, "port": 22}, _open(SSH)) is None


@pytest.mark.parametrize(
    "session, reason",
    [
        ({"client": "192.168.2.2", "port": 22}, "comes from 192.168.2.2, which the rules"),
        ({"client": "100.128.0.1", "port": 22}, "and the tailnet (100.64.0.0/10)"),
        ({"client": "fe80::1%eth0", "port": 22}, "comes from fe80::1"),
        ({"client": "192.168.1.2", "port": 2222}, "port 2222/tcp, which no task declares"),
        ({"client": "not-an-address", "port": 22}, "is not an IP address"),
        (None, "$SSH_CONNECTION is empty"),
    ],
)
def test_sessions_the_rules_would_cut_are_refused(session: dict | None, reason: str) -> None:
    refusal = session_refusal(session, _open(SSH))
    assert refusal is not None and reason in refusal


def test_a_session_from_outside_narrowed_admin_sources_is_refused() -> None:
    opened = _open(SSH, admin=["192.168.1.64/28"])
    assert session_refusal({"client": "192.168.1.70", "port": 22}, opened) is None
    refusal = session_refusal({"client": "192.168.1.2", "port": 22}, opened)
    assert refusal is not None and "192.168.1.64/28" in refusal


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
