"""Every host: the nftables firewall, as a real host must show it.

The ports a host should have open are worked out the way the deploy works them out
(``deploys.roles.declared_ports`` for the host's groups, plus its ``firewall_extra_ports``), and
the loaded table is read back from the kernel (``nft -j``), not from the file.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from deploys.roles import declared_ports
from tasks.base.firewall import DATA, TAILNET_NETWORKS, Opening, openings, ports_of
from tasks.common.datamodel.machine import ROLE_GROUPS
from tasks.common.ports import ALL_HOSTS
from tests.verify.conftest import InventoryHost

pytestmark = pytest.mark.verify
ROLE = "all"


def expected_ports(host_in: InventoryHost) -> set[tuple[int, str]]:
    ports = ports_of(host_in.name, declared_ports(host_in.groups), host_in.data)
    return {(port.port, port.proto) for port in ports}


def settings(host_in: InventoryHost) -> dict[str, Any]:
    return DATA.check(host_in.name, host_in.data)


def loaded_table(host_in: InventoryHost) -> list[dict[str, Any]]:
    result = host_in.testinfra.run("nft -j list table inet homelab")
    assert result.rc == 0, f"{host_in.name}: table inet homelab is not loaded: {result.stderr}"
    return json.loads(result.stdout)["nftables"]


def chains(table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["chain"]["name"]: item["chain"] for item in table if "chain" in item}


def rules(table: list[dict[str, Any]], chain: str) -> list[list[dict[str, Any]]]:
    return [
        item["rule"]["expr"] for item in table if "rule" in item and item["rule"]["chain"] == chain
    ]


def _values(right: Any) -> list[Any]:
    """The values a match compares with: one, a set of them, or a range (as its ends)."""
    if isinstance(right, dict) and "set" in right:
        return [v for item in right["set"] for v in _values(item)]
    if isinstance(right, dict) and "range" in right:
        low, high = right["range"]
        return list(range(low, high + 1))
    return [right]


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One address or prefix as ``nft -j`` writes it."""
    if isinstance(value, dict) and "prefix" in value:
        return ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}")
    return ipaddress.ip_network(str(value), strict=False)


def port_rule(expr: list[dict[str, Any]]) -> dict[str, Any] | None:
    """An accepting rule with a tcp/udp destination port: its ports and how the source is scoped."""
    if not any("accept" in statement for statement in expr):
        return None
    found: dict[str, Any] = {"ports": [], "saddr": [], "iifname": [], "other": []}
    for statement in expr:
        match = statement.get("match")
        if not match:
            continue
        left, right = match["left"], match["right"]
        payload, meta = left.get("payload", {}), left.get("meta", {})
        if payload.get("field") == "dport" and payload.get("protocol") in ("tcp", "udp"):
            found["ports"] += [(port, payload["protocol"]) for port in _values(right)]
        elif payload.get("field") == "saddr":
            items = right["set"] if isinstance(right, dict) and "set" in right else [right]
            found["saddr"] += [_network(item) for item in items]
        elif meta.get("key") in ("iifname", "iif"):
            found["iifname"].append(right)
        else:
            found["other"].append(match)
    return found if found["ports"] else None


def expected_openings(
    host_in: InventoryHost, everyone: list[InventoryHost]
) -> dict[tuple[int, str], Opening]:
    """Who each port should admit, resolved the way the deploy resolves it."""
    values = settings(host_in)
    addresses: dict[str, list[str]] = {
        group: [h.data["lan_address"] for h in everyone if group in h.groups]
        for group in ROLE_GROUPS
    }
    addresses[ALL_HOSTS] = [h.data["lan_address"] for h in everyone]
    opened = openings(
        ports_of(host_in.name, declared_ports(host_in.groups), host_in.data),
        lan_cidr=ipaddress.ip_network(host_in.data["lan_cidr"]),
        admin_sources=values["firewall_admin_sources"],
        group_addresses=addresses,
        own_address=str(host_in.data["lan_address"]),
        data=host_in.data,
        peers={h.name: h.data for h in everyone},
    )
    return {(o.port.port, o.port.proto): o for o in opened}


def test_nftables_loads_our_table_at_boot_and_stops_only_ours(host_in: InventoryHost) -> None:
    nftables = host_in.testinfra.service("nftables")
    assert nftables.is_enabled, f"{host_in.name}: nftables.service is not enabled"
    assert nftables.is_running, f"{host_in.name}: nftables.service is not active"
    config = host_in.testinfra.file("/etc/nftables.conf").content_string
    assert "Managed by homelab-as-code" in config and "table inet homelab {" in config
    statements = [line.strip() for line in config.splitlines() if not line.strip().startswith("#")]
    assert not [line for line in statements if line.startswith("flush")], statements
    stop = host_in.testinfra.run("systemctl show nftables -p ExecStop --value").stdout
    assert "delete table inet homelab" in stop and "flush" not in stop, stop


def test_input_and_forward_drop_what_is_not_allowed(host_in: InventoryHost) -> None:
    found = chains(loaded_table(host_in))
    assert found["input"]["hook"] == "input" and found["input"]["policy"] == "drop"
    assert found["forward"]["hook"] == "forward" and found["forward"]["policy"] == "drop"
    assert found["output"]["policy"] == "accept"
    forward = rules(loaded_table(host_in), "forward")
    if "hypervisor" not in host_in.groups:
        assert forward == [], f"{host_in.name} forwards: {forward}"
        return
    # The hypervisor forwards replies, and new traffic only into or out of its guest bridges.
    bridges = set(settings(host_in)["firewall_guest_bridges"])
    seen: set[str] = set()
    for expr in forward:
        if not any("accept" in statement for statement in expr):
            continue
        keys = [s["match"]["left"] for s in expr if "match" in s]
        if keys == [{"ct": {"key": "state"}}]:
            continue
        matches = [s["match"] for s in expr if "match" in s]
        assert len(matches) == 1, f"{host_in.name}: forward rule {expr}"
        assert matches[0]["left"].get("meta", {}).get("key") in ("iifname", "oifname"), expr
        assert matches[0]["right"] in bridges, f"{host_in.name}: forwards for {expr}"
        seen.add(matches[0]["right"])
    assert seen == bridges, f"{host_in.name}: forwards for {sorted(seen)}, not {sorted(bridges)}"


def test_each_port_admits_exactly_its_consumers(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    """Per port: the IPv4 and IPv6 sources and the tailnet the loaded rules accept are exactly
    the port's consumers; a port no other host consumes has no rule at all."""
    values = settings(host_in)
    tailnet = values["tailnet_interface"]
    loaded: dict[tuple[int, str], dict[str, Any]] = {}
    unscoped: list[dict[str, Any]] = []
    for expr in rules(loaded_table(host_in), "input"):
        found = port_rule(expr)
        if found is None:
            continue
        if found["other"] or (found["saddr"] and found["iifname"]):
            unscoped.append(found)
            continue
        for key in found["ports"]:
            seen = loaded.setdefault(key, {"ipv4": set(), "ipv6": set(), "tailnet": False})
            if found["iifname"] == [tailnet]:
                seen["tailnet"] = True
            elif found["saddr"]:
                for network in found["saddr"]:
                    seen[f"ipv{network.version}"].add(str(network))
            else:
                unscoped.append(found)
    expected = {
        key: {"ipv4": set(o.ipv4), "ipv6": set(o.ipv6), "tailnet": o.tailnet}
        for key, o in expected_openings(host_in, inventory_hosts).items()
        if not o.local_only
    }
    print(f"{host_in.name}: expected openings {expected}")
    assert loaded == expected, f"{host_in.name}: the loaded rules admit {loaded}"
    # Port rules scoped otherwise can only come from the raw rules the data adds on purpose.
    assert len(unscoped) <= len(values["firewall_extra_rules"]), unscoped


def _local_only(address: str) -> bool:
    if address.endswith("%lo"):
        return True
    host = address.split("%")[0].strip("[]")
    if host == "*":
        return False
    ip = ipaddress.ip_address(host)
    # Loopback never leaves the host; a tailnet address is reachable only over the tailnet
    # (tailscaled's own peer API listens there).
    return ip.is_loopback or any(ip in network for network in TAILNET_NETWORKS)


def test_everything_listening_beyond_loopback_is_declared(host_in: InventoryHost) -> None:
    declared_tcp = {port for port, proto in expected_ports(host_in) if proto == "tcp"}
    listening: dict[int, list[str]] = {}
    for line in host_in.testinfra.run("ss -tlnH").stdout.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        if not _local_only(address):
            listening.setdefault(int(port), []).append(address)
    undeclared = {port: where for port, where in listening.items() if port not in declared_tcp}
    print(f"{host_in.name}: listening beyond loopback on {sorted(listening)}")
    assert not undeclared, f"{host_in.name}: listening on undeclared ports {undeclared}"
