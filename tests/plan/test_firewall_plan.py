"""Plans of the firewall on the real machines' facts: ports, ruleset, safety (no network)."""

from __future__ import annotations

import re

import pytest

from tasks.base.firewall import FirewallRefused
from tasks.common.datamodel.preflight import InvalidData
from tests.plan.harness import Plan, PlannedOp

HOSTS = ("pve", "ageis-node", "embedder", "monitoring", "dns")
LAN = "192.168.1.0/24"
PVE, NODE, EMBEDDER, MONITOR = (
    "192.168.1.10/32",
    "192.168.1.20/32",
    "192.168.1.30/32",
    "192.168.1.40/32",
)
# Exactly what each real host opens and to whom, written out by hand from the consumers the
# tasks declare: (port, proto, service) -> (IPv4 sources, open on the tailnet interface).
# The admin's devices are the LAN by default; monitoring (.40) reaches what it probes or
# scrapes; a port a host only serves to itself (Ollama, on loopback) gets no rule at all.
ADMIN_PORT = ({LAN}, True)
EXPECTED = {
    "pve": {
        (22, "tcp", "ssh"): ADMIN_PORT,
        (3128, "tcp", "spiceproxy"): ADMIN_PORT,
        (8006, "tcp", "proxmox-web"): ADMIN_PORT,
        (3493, "tcp", "nut"): ({EMBEDDER}, False),
        (8432, "tcp", "pgbackrest-server"): ({NODE, MONITOR}, False),
        # The received WAL, for the memory store's restore only.
        (8433, "tcp", "wal-spool"): ({NODE, MONITOR}, False),
        (9100, "tcp", "node-exporter"): ({MONITOR}, False),
        (41641, "udp", "tailscaled"): ({LAN}, False),
    },
    "ageis-node": {
        (22, "tcp", "ssh"): ADMIN_PORT,
        # The vector indexer (embedder) and the WAL receivers (pve, embedder).
        (5432, "tcp", "postgresql"): ({EMBEDDER, PVE, MONITOR}, False),
        (8100, "tcp", "actr-engine"): ({MONITOR}, False),
        (8432, "tcp", "pgbackrest-server"): ({PVE, MONITOR}, False),
        (9100, "tcp", "node-exporter"): ({MONITOR}, False),
        (18789, "tcp", "openclaw-gateway"): ({MONITOR}, True),
        (41641, "udp", "tailscaled"): ({LAN}, False),
    },
    "embedder": {
        (22, "tcp", "ssh"): ADMIN_PORT,
        (5500, "tcp", "tts (piper)"): ({NODE, MONITOR}, False),
        (8300, "tcp", "embedding-server"): ({NODE, MONITOR}, False),
        (8433, "tcp", "wal-spool"): ({NODE, MONITOR}, False),
        (9100, "tcp", "node-exporter"): ({MONITOR}, False),
        (9310, "tcp", "vector-indexer"): ({MONITOR}, False),
        (9311, "tcp", "document-ingest"): ({MONITOR}, False),
        (41641, "udp", "tailscaled"): ({LAN}, False),
    },
    "monitoring": {
        (22, "tcp", "ssh"): ADMIN_PORT,
        (9090, "tcp", "prometheus"): ADMIN_PORT,
        (9093, "tcp", "alertmanager"): (set(), True),
    },
    "dns": {
        (22, "tcp", "ssh"): ADMIN_PORT,
        (53, "tcp", "unbound"): ({PVE, NODE, EMBEDDER, MONITOR}, True),
        (53, "udp", "unbound"): ({PVE, NODE, EMBEDDER, MONITOR}, True),
        (9100, "tcp", "node-exporter"): ({MONITOR}, False),
    },
}
BROKEN_RULE = "tcp dport 22 acept"


STAGE = "upload /etc/homelab/staged/etc_nftables.conf\n"
INSTALL = (
    "/usr/local/sbin/install-checked-config /etc/homelab/staged/etc_nftables.conf "
    "/etc/nftables.conf 755 nft -c -f {}"
)
LOAD = "nft -f /etc/nftables.conf && nft -s list table inet homelab > /etc/homelab/nftables.loaded"
DROP_IN = "upload /etc/systemd/system/nftables.service.d/homelab.conf\n"


def op_running(plan: Plan, name: str, start: str) -> tuple[int, PlannedOp]:
    """The position and operation on host ``name`` with a command starting with ``start``.

    Found by command: the harness joins the names of operations that different hosts run at
    the same step, so a name does not pin down one host's operation.
    """
    found = [
        (index, op)
        for index, op in enumerate(plan.for_host(name))
        if any(c.startswith(start) for c in op.commands)
    ]
    assert len(found) == 1, f"{name}: {len(found)} operations run {start!r}"
    return found[0]


def ruleset(plan: Plan, name: str) -> str:
    """The /etc/nftables.conf the plan stages on ``name`` (before its nft -c check)."""
    _, op = op_running(plan, name, STAGE)
    return next(c for c in op.commands if c.startswith(STAGE)).split("\n", 1)[1]


def chain(text: str, name: str) -> list[str]:
    """The statements of one chain of the ruleset, comments and blank lines left out."""
    body = re.search(rf"\n\tchain {name} {{\n(.*?)\n\t}}\n", text, re.S)
    assert body, f"no chain {name}"
    lines = [line.strip() for line in body.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def opened(text: str) -> dict[tuple[int, str, str], tuple[set[str], bool]]:
    """(port, proto, service) -> (IPv4 sources, accepted on the tailnet interface)."""
    rules = chain(text, "input")
    from_sources = re.compile(
        r'ip saddr \{ ([0-9./, ]+) \} (tcp|udp) dport (\d+) accept comment "([^"]+)"'
    )
    tailnet = re.compile(
        r'iifname "tailscale0" (tcp|udp) dport (\d+) accept comment "(.+) \(tailnet\)"'
    )
    result: dict[tuple[int, str, str], tuple[set[str], bool]] = {}
    port_rules = [r for r in rules if " dport " in r]
    for rule in port_rules:
        if m := from_sources.fullmatch(rule):
            key = (int(m[3]), m[2], m[4])
            assert key not in result or not result[key][0], f"two source rules for {key}"
            result[key] = (set(m[1].split(", ")), result.get(key, (set(), False))[1])
        elif m := tailnet.fullmatch(rule):
            key = (int(m[2]), m[1], m[3])
            result[key] = (result.get(key, (set(), False))[0], True)
        else:
            raise AssertionError(f"a port rule of unknown form: {rule}")
    return result


@pytest.mark.parametrize("name", HOSTS)
def test_each_real_host_opens_each_port_to_exactly_its_consumers(full: Plan, name: str) -> None:
    assert opened(ruleset(full, name)) == EXPECTED[name]
    assert "ip6 saddr" not in "\n".join(chain(ruleset(full, name), "input")).replace(
        "ip6 saddr fe80::/10 accept", ""
    ), "no IPv6 sources are declared in the real inventory"


def test_ruleset_replaces_only_our_table_in_one_transaction(full: Plan) -> None:
    text = ruleset(full, "embedder")
    assert text.startswith("#!/usr/sbin/nft -f\n# Managed by homelab-as-code (templates/nftables")
    statements = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert statements[:3] == [
        "table inet homelab",
        "delete table inet homelab",
        "table inet homelab {",
    ]
    assert not [line for line in statements if "flush" in line]
    assert len(re.findall(r"^table ", text, re.M)) == 2  # no other table is declared


def test_input_drops_all_but_loopback_replies_icmp_and_the_declared_ports(full: Plan) -> None:
    rules = chain(ruleset(full, "monitoring"), "input")
    assert rules[:3] == [
        "type filter hook input priority filter; policy drop;",
        'iif "lo" accept',
        "ct state vmap { invalid : drop, established : accept, related : accept }",
    ]
    neighbour = next(r for r in rules if "nd-neighbor-solicit" in r)
    assert "nd-neighbor-advert" in neighbour and "nd-router-advert" in neighbour
    assert "limit rate" not in neighbour and neighbour.endswith("ip6 hoplimit 255 accept")
    ping = [r for r in rules if "echo-request" in r]
    assert [r.split()[0] for r in ping] == ["icmp", "icmpv6"]
    assert all("limit rate 10/second burst 20 packets accept" in r for r in ping)
    ssh = rules.index(f'ip saddr {{ {LAN} }} tcp dport 22 accept comment "ssh"')
    assert rules[ssh + 1] == 'iifname "tailscale0" tcp dport 22 accept comment "ssh (tailnet)"'
    # After the fixed rules, only the declared ports' accepts follow.
    assert all(" dport " in rule and rule.endswith('"') for rule in rules[ssh:])
    assert chain(ruleset(full, "monitoring"), "output") == [
        "type filter hook output priority filter; policy accept;"
    ]


def test_only_the_hypervisor_forwards_and_only_for_its_guest_bridges(full: Plan) -> None:
    assert chain(ruleset(full, "pve"), "forward") == [
        "type filter hook forward priority filter; policy drop;",
        "ct state invalid drop",
        "ct state { established, related } accept",
        'iifname "vmbr*" accept',
        'oifname "vmbr*" accept',
        'iifname "fwbr*" accept',
        'oifname "fwbr*" accept',
    ]
    for name in ("ageis-node", "embedder", "monitoring", "dns"):
        assert chain(ruleset(full, name), "forward") == [
            "type filter hook forward priority filter; policy drop;"
        ], name


def test_icmp_rate_and_tailnet_interface_come_from_the_data(plan_of) -> None:
    result = plan_of(
        "deploys/full.py",
        override_data={
            "firewall_icmp_rate": "5/minute",
            "firewall_icmp_burst": 3,
            "tailnet_interface": "ts0",
            "firewall_extra_ports": [{"port": 5201, "proto": "tcp", "service": "iperf3"}],
            "firewall_admin_sources": ["192.168.1.0/28", "fd00:1::/64"],
        },
    )
    text = ruleset(result, "embedder")
    assert text.count("limit rate 5/minute burst 3 packets accept") == 2
    assert 'iifname "ts0" tcp dport 22 accept' in text
    rules = chain(text, "input")
    assert 'ip saddr { 192.168.1.0/28 } tcp dport 5201 accept comment "iperf3"' in rules
    assert 'ip6 saddr { fd00:1::/64 } tcp dport 5201 accept comment "iperf3"' in rules
    # Monitoring still probes SSH from outside the narrowed admin sources.
    assert f'ip saddr {{ 192.168.1.0/28, {MONITOR} }} tcp dport 22 accept comment "ssh"' in rules
    assert "tailscale0" not in "\n".join(rules)


def test_a_broken_extra_rule_reaches_the_live_file_only_through_nft_check(plan_of) -> None:
    result = plan_of("deploys/full.py", override_data={"firewall_extra_rules": [BROKEN_RULE]})
    for name in HOSTS:
        assert BROKEN_RULE in chain(ruleset(result, name), "input")
        stage, _ = op_running(result, name, STAGE)
        install, install_op = op_running(result, name, INSTALL)
        load, load_op = op_running(result, name, LOAD)
        assert stage < install < load
        assert install_op.commands == [INSTALL] and load_op.commands == [LOAD]
        # Nothing else writes the live file or loads rules.
        others = [
            c
            for index, op in enumerate(result.for_host(name))
            if index not in (install, load)
            for c in op.commands
        ]
        assert not [c for c in others if "/etc/nftables.conf" in c or c.startswith("nft ")]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("tcp dport 22 accept; flush ruleset", "no ';' or '#'"),
        ("tcp dport 22 accept } table ip x {", "balanced braces"),
    ],
)
def test_an_extra_rule_that_could_leave_the_chain_is_refused_as_data(
    plan_of, rule: str, expected: str
) -> None:
    with pytest.raises(InvalidData) as caught:
        plan_of("deploys/full.py", override_data={"firewall_extra_rules": [rule]})
    assert "key 'firewall_extra_rules[0]'" in caught.value.message
    assert expected in caught.value.message and repr(rule) in caught.value.message


def test_load_runs_when_the_file_changes_or_the_table_is_not_what_was_loaded(
    plan_of, fleet
) -> None:
    _, fresh = op_running(plan_of("deploys/full.py"), "dns", LOAD)
    assert not fresh.conditional  # nothing recorded yet: load whatever the file check says
    fleet["dns"].firewall_loaded = True
    _, converged = op_running(plan_of("deploys/full.py"), "dns", LOAD)
    assert converged.conditional  # only when the installed file changes


def test_nftables_is_installed_enabled_and_stops_only_our_table(full: Plan) -> None:
    commands = full.commands("ageis-node")
    assert any(c.endswith("install --no-install-recommends nftables") for c in commands)
    assert "systemctl enable nftables.service" in commands
    index, op = op_running(full, "ageis-node", DROP_IN)
    drop_in = next(c for c in op.commands if c.startswith(DROP_IN))
    assert "ExecStop=\nExecStop=-/usr/sbin/nft delete table inet homelab\n" in drop_in
    reload_op = full.for_host("ageis-node")[index + 1]
    assert reload_op.commands == ["systemctl daemon-reload"] and reload_op.conditional


@pytest.mark.parametrize("client", ["192.168.1.77", "100.101.102.103", "127.0.0.1"])
def test_a_session_from_the_lan_the_tailnet_or_a_tunnel_is_let_through(
    plan_of, fleet, client: str
) -> None:
    fleet["embedder"].ssh_client = client
    assert op_running(plan_of("deploys/full.py"), "embedder", LOAD)


@pytest.mark.parametrize(
    "client, reason",
    [
        ("203.0.113.7", "comes from 203.0.113.7, which the rules for port 22 do not admit"),
        ("192.168.2.5", "comes from 192.168.2.5, which the rules for port 22 do not admit"),
        (None, "does not come in over SSH"),
    ],
)
def test_rules_that_would_cut_pyinfras_own_session_are_refused(
    plan_of, fleet, client: str | None, reason: str
) -> None:
    fleet["embedder"].ssh_client = client
    with pytest.raises(FirewallRefused) as caught:
        plan_of("deploys/full.py")
    assert caught.value.message.startswith("Firewall on host 'embedder' not applied")
    assert reason in caught.value.message
