"""The local DNS resolver: unbound on the DNS guest (group ``dns``), for the homelab's hosts.

Reads ``domain``, ``lan_cidr``, every inventory host's ``lan_address`` and ``dns_forwarders``.
unbound answers a local zone built from the inventory (an A and a PTR record for
``<host>.<domain>`` of every inventory host; no hand-kept list), and resolves everything else
either from the root servers itself (``dns_forwarders = []``, the default) or through the
forwarders. DNSSEC validation is always on, with Debian's trust anchor (the ``dns-root-data``
package's root key, kept current by unbound's auto-trust-anchor file): a forwarder that strips
DNSSEC makes every signed name fail validation (SERVFAIL) rather than pass unchecked. Only
localhost, the LAN (``lan_cidr``) and the tailnet (100.64.0.0/10, fd7a:115c:a1e0::/48) may
query; everyone else gets REFUSED. The firewall narrows that further: port 53 is open to the
inventory's hosts and the tailnet.

The config is one drop-in, ``/etc/unbound/unbound.conf.d/homelab.conf``, checked with
``unbound-checkconf`` (as unbound will read it, with Debian's other drop-ins) before it goes
live; unbound is restarted only when it changed (a restart, not a reload: unbound binds port 53
before it drops its privileges).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import apt, files, systemd

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import IPv4Address, ListOf
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import DNS, MACHINE
from tasks.common.ports import ALL_HOSTS, TAILNET, Port
from tasks.common.templating import file_path

RESOLVED = "systemd-resolved.service"

DATA = Schema(
    "dns_resolver",
    Key(
        "dns_forwarders",
        ListOf(IPv4Address(), unique=True),
        [],
        "Upstream resolvers unbound forwards to; [] resolves from the root servers (full"
        " recursion). They must pass DNSSEC records through: validation is always on.",
        groups=(DNS,),
    ),
)

# Every inventory host and the tailnet resolve here; other LAN devices are let in by
# firewall_extra_rules.
PORTS = (
    Port(53, "udp", "unbound", probe="dns", consumers=(ALL_HOSTS, TAILNET)),
    Port(53, "tcp", "unbound", probe="tcp", consumers=(ALL_HOSTS, TAILNET)),
)

# Tailscale hands out addresses from the CGNAT range and its own IPv6 ULA prefix.
TAILNET = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"))
LOCALHOST = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

DROP_IN = "/etc/unbound/unbound.conf.d/homelab.conf"
CHECKER = "/usr/local/sbin/unbound-check-staged"
PACKAGES = ["unbound", "dns-root-data"]
# One DNS label: what an inventory host name must be to become <name>.<domain>.
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Record:
    """One inventory host in the local zone: ``fqdn`` A ``address`` and its PTR."""

    fqdn: str
    address: ipaddress.IPv4Address


def zone_records(domain: str, hosts: Iterable[tuple[str, ipaddress.IPv4Address]]) -> list[Record]:
    """The local zone's records, sorted by name; DataError for a name that is not one label."""
    records = []
    for name, address in hosts:
        if not LABEL.fullmatch(name):
            raise DataError(
                name,
                "inventory host name",
                name,
                'one lower-case DNS label (such as "ageis-node") to be a name in the local zone',
            )
        records.append(Record(f"{name}.{domain}", address))
    return sorted(records, key=lambda record: record.fqdn)


def reverse_zone(network: ipaddress.IPv4Network) -> tuple[str, str]:
    """The in-addr.arpa zone that holds the LAN's PTR records, and unbound's zone type for it.

    The zone is the octet boundary at or above the LAN's prefix (a /24 LAN: its /24; a /20:
    its /16). A private LAN's reverse zone is ``static`` (ours alone, as unbound's defaults
    already treat RFC 1918 space); a public one stays ``transparent`` so that addresses outside
    the inventory still resolve upstream.
    """
    octets = network.prefixlen // 8
    if octets == 0:
        raise ValueError(f"{network} is wider than a /8; no reverse zone for it")
    labels = str(network.network_address).split(".")[:octets]
    zone = ".".join(reversed(labels)) + ".in-addr.arpa."
    return zone, "static" if network.is_private else "transparent"


def access_control(lan: ipaddress.IPv4Network) -> list[tuple[str, str]]:
    """unbound's access-control lines: refuse everyone, then allow localhost, LAN, tailnet."""
    refuse = [("0.0.0.0/0", "refuse"), ("::/0", "refuse")]
    allowed = [*LOCALHOST, lan, *TAILNET]
    return refuse + [(str(network), "allow") for network in allowed]


def inventory_records(domain: str) -> list[Record]:
    """Every inventory host by name and LAN address."""
    return zone_records(
        domain, ((other.name, MACHINE.read(other).lan_address) for other in inventory)
    )


@deploy("DNS resolver (unbound)", data_defaults=DATA.defaults())
def dns_resolver() -> None:
    settings = DATA.read(host)
    machine = MACHINE.read(host)
    if host.get_fact(SystemdStatus, services=[RESOLVED]).get(RESOLVED):
        raise DataError(
            host.name,
            "groups",
            list(host.groups),
            "a dns host without systemd-resolved running (its stub listener holds port 53"
            " that unbound needs): stop and disable systemd-resolved, or move the dns role",
        )
    lan = machine.lan_cidr
    if lan.prefixlen < 8:
        raise DataError(host.name, "lan_cidr", str(lan), "a LAN of /8 or narrower")
    zone, zone_type = reverse_zone(lan)

    apt.packages(
        name="Install unbound and the DNSSEC trust anchor (dns-root-data)",
        packages=PACKAGES,
        no_recommends=True,
    )
    files.put(
        name="Install the unbound drop-in checker",
        src=file_path("unbound-check-staged"),
        dest=CHECKER,
        mode="755",
    )
    installed = checked_template(
        name="unbound: local zone, access control, upstreams",
        template="unbound-homelab.conf.j2",
        dest=DROP_IN,
        mode="644",
        check=f"{CHECKER} {{}} {DROP_IN}",
        domain=machine.domain,
        records=inventory_records(machine.domain),
        reverse_zone=zone,
        reverse_zone_type=zone_type,
        access=access_control(lan),
        forwarders=[str(address) for address in settings.dns_forwarders],
    )
    systemd.service(name="Run unbound", service="unbound", running=True, enabled=True)
    systemd.service(
        name="Restart unbound for its new config",
        service="unbound",
        running=None,
        restarted=True,
        _if=installed.did_change,
    )
