"""DNS: unbound on the dns hosts answers for the inventory and validates DNSSEC; every host
asks the dns host(s) first.

DNSSEC "on" is checked by behaviour, as a real host must show it: the signed root's SOA comes
back validated (AD flag), or, behind an upstream that strips DNSSEC (the lab's), refused with a
DNSSEC Extended DNS Error. An unvalidated NOERROR would mean validation is off.
"""

from __future__ import annotations

import re

import pytest

from tests.verify.conftest import InventoryHost, load_inventory

pytestmark = pytest.mark.verify
ROLE = "all"
DNS_GROUP = "dns"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dns_host" not in metafunc.fixturenames:
        return
    hosts = load_inventory(metafunc.config.getoption("--inventory"))
    chosen = [h for h in hosts if DNS_GROUP in h.groups]
    if not chosen:
        pytest.fail("the inventory has no host in group 'dns'", pytrace=False)
    metafunc.parametrize("dns_host", chosen, ids=[h.name for h in chosen])


def domain_of(host: InventoryHost) -> str:
    return host.data.get("domain", "home.arpa")


def dns_hosts(inventory_hosts: list[InventoryHost]) -> list[InventoryHost]:
    return [h for h in inventory_hosts if DNS_GROUP in h.groups]


def test_unbound_runs_with_a_valid_config(dns_host: InventoryHost) -> None:
    unbound = dns_host.testinfra.service("unbound")
    assert unbound.is_running and unbound.is_enabled
    check = dns_host.testinfra.run("unbound-checkconf")
    assert check.rc == 0, check.stdout + check.stderr
    assert dns_host.testinfra.file("/etc/unbound/unbound.conf.d/homelab.conf").is_file


def test_unbound_answers_for_every_inventory_host(
    dns_host: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    wrong = []
    for other in inventory_hosts:
        fqdn = f"{other.name}.{domain_of(other)}"
        address = other.data["lan_address"]
        a = dns_host.testinfra.run(f"dig +short @127.0.0.1 {fqdn} A").stdout.split()
        ptr = dns_host.testinfra.run(f"dig +short @127.0.0.1 -x {address}").stdout.split()
        if a != [address] or ptr != [f"{fqdn}."]:
            wrong.append(f"{fqdn}: A {a}, PTR of {address} {ptr}")
    assert not wrong, "\n".join(wrong)


def test_dnssec_validation_is_on(dns_host: InventoryHost) -> None:
    status = dns_host.testinfra.run("unbound-control status").stdout
    assert re.search(r"modules: \d+ \[ validator iterator \]", status), status
    anchor = dns_host.testinfra.run("unbound-checkconf -o auto-trust-anchor-file").stdout.strip()
    assert anchor, "no auto-trust-anchor-file: validation has no root key"
    key = dns_host.testinfra.file(anchor)
    assert key.is_file and re.search(r"^\.\s.*\s(DNSKEY|DS)\s", key.content_string, re.M)
    root = dns_host.testinfra.run("dig +dnssec @127.0.0.1 . SOA").stdout
    status_line = re.search(r"status: ([A-Z]+)", root)
    flags = re.search(r";; flags: ([a-z ]+);", root)
    validated = status_line and status_line.group(1) == "NOERROR" and " ad" in flags.group(1)
    refused = (
        status_line
        and status_line.group(1) == "SERVFAIL"
        and re.search(r"EDE: \d+ \((DNSKEY Missing|DNSSEC Bogus|DNSSEC Indeterminate)", root)
    )
    assert validated or refused, f"the root's SOA neither validated nor refused:\n{root}"


def test_resolver_config_asks_the_dns_hosts_first(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    resolvers = [
        "127.0.0.1" if h.name == host_in.name else h.data["lan_address"]
        for h in dns_hosts(inventory_hosts)
    ]
    resolvers.sort(key=lambda address: address != "127.0.0.1")
    link = host_in.testinfra.file("/etc/resolv.conf")
    if link.is_symlink and "/run/systemd/resolve/" in link.linked_to:
        # systemd-resolved: the global servers, in order.
        line = host_in.testinfra.run("resolvectl dns").stdout.splitlines()[0]
        servers = line.split(":", 1)[1].split()
        assert servers[: len(resolvers)] == resolvers, line
        return
    text = link.content_string
    servers = re.findall(r"^nameserver\s+(\S+)", text, re.M)
    assert servers[: len(resolvers)] == resolvers, text
    assert re.search(r"^options .*\btimeout:1\b", text, re.M), "a dead resolver would cost 5 s"
    assert len(servers) > len(resolvers), f"{host_in.name}: no fallback behind the resolver"


def test_inventory_names_resolve_through_the_hosts_own_config(
    host_in: InventoryHost, inventory_hosts: list[InventoryHost]
) -> None:
    for other in dns_hosts(inventory_hosts):
        out = host_in.testinfra.run(f"dig +search +short {other.name} A").stdout.split()
        assert out == [other.data["lan_address"]], f"{other.name} -> {out}"
