"""The host's firewall: nftables, input and forward dropped, each declared port open to its users.

``deploys/roles.py`` runs this task last, with the ports the host's tasks declare (``PORTS``);
``firewall_extra_ports`` adds ports of services set up by hand. Each port is accepted only from
the sources its consumers name (``tasks/common/ports.py``): the ``lan_address`` of each host in
a consumer group, the admin's devices (``firewall_admin_sources``, by default the LAN, and the
tailnet interface ``tailnet_interface``), the tailnet alone, or the whole LAN; a probed or
scraped port also to the monitoring guest. A port with no consumer serves loopback only.
Everything else that arrives unasked is dropped. Loopback, replies (established/related; invalid
is dropped), IPv6 neighbour discovery and rate-limited ICMP/ICMPv6 pass. Nothing is forwarded,
except on the hypervisor, which forwards whatever enters or leaves its guest bridges
(``firewall_guest_bridges``, ``vmbr*`` and Proxmox's per-guest firewall bridges ``fwbr*``): its
guests are bridged to the LAN and each runs this firewall itself. Output is not filtered.

The rules live in our own table ``inet homelab`` in ``/etc/nftables.conf`` (loaded at boot by
Debian's nftables.service, enabled here); other tables (Tailscale's, Proxmox's) are never
touched, so there is no ``flush ruleset`` anywhere, and a drop-in makes the service's stop
remove only our table. A new ruleset must first pass ``nft -c -f`` (the kernel checks the whole
transaction and commits nothing), then ``nft -f`` replaces the table in one transaction, only
when the file changed or the loaded table differs from what was last loaded (a hand edit, a
flush). Before any of that, the run is refused when the rules would not let in the SSH session
pyinfra itself is using.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import (
    Field,
    Int,
    IPNetwork,
    ListOf,
    Optional,
    Predicate,
    Str,
    Struct,
)
from tasks.common.datamodel.keys import Key, Schema, check_key
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE, MONITORING, ROLE_GROUPS
from tasks.common.facts import NftTableMatches, SshSession
from tasks.common.ports import ADMIN, ALL_HOSTS, CONSUMER_KINDS, LAN, TAILNET, Port, present
from tasks.common.templating import file_path

TABLE = "inet homelab"
CONFIG = "/etc/nftables.conf"
# What the kernel listed right after the last load (nft -s list table): drift shows against it.
LOADED_LISTING = "/etc/homelab/nftables.loaded"
SERVICE_DROP_IN = "/etc/systemd/system/nftables.service.d/homelab.conf"
# Tailscale gives every node an address in the CGNAT range (and an IPv6 one in its ULA prefix).
TAILNET_NETWORKS = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

SERVICE_NAME = Str(
    r"[A-Za-z0-9][A-Za-z0-9 ._+/()-]{0,63}",
    what='a service name such as "grafana" (letters, digits, space . _ + / ( ) -)',
)
EXTRA_PORT = Struct(
    {
        "port": Field(Int(1, 65535), doc="port number"),
        "proto": Field(Str(choices=("tcp", "udp")), doc="tcp or udp"),
        "service": Field(SERVICE_NAME, doc="what listens there (shown in the ruleset)"),
        "consumers": Field(
            ListOf(Str(choices=CONSUMER_KINDS), min_items=1, unique=True),
            required=False,
            default=[ADMIN],
            doc="who may connect (default: the admin's devices)",
        ),
    },
    what="a port",
)
INTERFACE = Str(r"[A-Za-z0-9_.:-]{1,15}", what='a network interface name such as "tailscale0"')
INTERFACE_PATTERN = Str(
    r"[A-Za-z0-9_.:-]{1,15}\*?", what='an interface name or prefix pattern such as "vmbr*"'
)


def _one_rule(rule: str) -> bool:
    """One line of rule text that cannot close the chain or the table it is put in."""
    depth = 0
    for char in rule:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0 and rule.count('"') % 2 == 0


_NFT_RULE_FORM = (
    'one nft rule on one line, such as "ip saddr 192.168.1.5 tcp dport 9100 accept" '
    "(balanced braces and quotes; no ';' or '#')"
)
NFT_RULE = Predicate(Str(r"[^\n\r;#]+", what=_NFT_RULE_FORM), _one_rule, _NFT_RULE_FORM)

DATA = Schema(
    "firewall",
    Key(
        "firewall_admin_sources",
        Optional(ListOf(IPNetwork(), min_items=1, unique=True)),
        None,
        "Networks of the admin's devices (SSH, Proxmox UI); None: all of lan_cidr. The "
        "tailnet interface is always an admin source.",
    ),
    Key(
        "firewall_extra_ports",
        ListOf(EXTRA_PORT),
        [],
        "Ports of services added by hand ({port, proto, service[, consumers]}); consumers "
        f"from {', '.join(CONSUMER_KINDS)}, default admin.",
    ),
    Key(
        "firewall_extra_rules",
        ListOf(NFT_RULE),
        [],
        "Raw nft rules appended to the input chain, for special cases (checked by nft -c).",
    ),
    Key(
        "firewall_icmp_rate",
        Str(r"[1-9][0-9]{0,5}/(second|minute|hour|day)", what='a rate such as "10/second"'),
        "10/second",
        "Rate limit of accepted ping and ICMP errors (IPv4 and IPv6 each).",
    ),
    Key(
        "firewall_icmp_burst",
        Int(1, 10000),
        20,
        "Packets of ICMP accepted in a burst above that rate.",
    ),
    Key(
        "tailnet_interface",
        INTERFACE,
        "tailscale0",
        "The tailnet's network interface: admin and tailnet ports are open on it.",
    ),
    Key(
        "firewall_guest_bridges",
        ListOf(INTERFACE_PATTERN, unique=True),
        ["vmbr*", "fwbr*"],
        "Bridges whose traffic the hypervisor forwards for its guests (nft patterns).",
        (HYPERVISOR,),
    ),
)


class FirewallRefused(SystemExit):
    """The rules would cut the SSH session this run uses: exit 2 before anything changes."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Opening:
    """One port and exactly who may reach it: source networks per family, and the tailnet."""

    port: Port
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    tailnet: bool
    consumers: tuple[str, ...]

    @property
    def local_only(self) -> bool:
        return not (self.ipv4 or self.ipv6 or self.tailnet)

    def admits(self, client: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether a connection from ``client`` to this port is accepted."""
        if any(client in network for network in LOOPBACK_NETWORKS):
            return True
        if self.tailnet and any(client in network for network in TAILNET_NETWORKS):
            return True
        return any(client in ipaddress.ip_network(cidr) for cidr in (*self.ipv4, *self.ipv6))


def open_ports(declared: Iterable[Port], extra: Iterable[Mapping[str, Any]]) -> tuple[Port, ...]:
    """The ports to open: the tasks' declared ports and ``firewall_extra_ports``, once each.

    A port/protocol pair declared twice is opened once, under the first service's name.
    """
    chosen: dict[tuple[int, str], Port] = {}
    added = (
        Port(e["port"], e["proto"], e["service"], consumers=tuple(e.get("consumers") or [ADMIN]))
        for e in extra
    )
    for port in (*declared, *added):
        if not port.loopback:  # listens on loopback only: opened to nobody
            chosen.setdefault((port.port, port.proto), port)
    return tuple(sorted(chosen.values()))


def ports_of(host_name: str, declared: Iterable[Port], data: Mapping[str, Any]) -> tuple[Port, ...]:
    """What the firewall opens on a host whose tasks declare ``declared``, given its data."""
    extra = check_key(host_name, DATA.keys["firewall_extra_ports"], data)
    return open_ports(present(declared, data), extra)


def openings(
    ports: Iterable[Port],
    *,
    lan_cidr: ipaddress.IPv4Network,
    admin_sources: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] | None,
    group_addresses: Mapping[str, Iterable[str]],
    own_address: str,
    data: Any = None,
    peers: Mapping[str, Any] | None = None,
) -> tuple[Opening, ...]:
    """Who may reach each of ``ports``: resolve its consumers (and monitoring, for a probed or
    scraped port) into source networks. ``group_addresses`` maps each inventory group, and
    ``ALL_HOSTS``, to its hosts' LAN addresses; the host's own address is left out (its own
    connections arrive on loopback). ``data`` is given to a port's ``extra_sources``."""
    admin = list(admin_sources) if admin_sources else [lan_cidr]
    result = []
    for port in ports:
        consumers = tuple(
            dict.fromkeys((*port.consumers, *([MONITORING] if port.monitored else [])))
        )
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        tailnet = False
        for consumer in consumers:
            if consumer == ADMIN:
                networks += admin
                tailnet = True
            elif consumer == TAILNET:
                tailnet = True
            elif consumer == LAN:
                networks.append(lan_cidr)
            else:
                networks += [
                    ipaddress.ip_network(f"{address}/32")
                    for address in group_addresses.get(consumer, ())
                    if str(address) != own_address
                ]
        if port.extra_sources is not None:
            networks += [ipaddress.ip_network(cidr) for cidr in port.extra_sources(data)]
        if port.peer_sources is not None:
            networks += [
                ipaddress.ip_network(cidr) for cidr in port.peer_sources(data, peers or {})
            ]
        collapsed4 = ipaddress.collapse_addresses(n for n in networks if n.version == 4)
        collapsed6 = ipaddress.collapse_addresses(n for n in networks if n.version == 6)
        result.append(
            Opening(
                port=port,
                ipv4=tuple(str(n) for n in collapsed4),
                ipv6=tuple(str(n) for n in collapsed6),
                tailnet=tailnet,
                consumers=consumers,
            )
        )
    return tuple(result)


def inventory_addresses() -> dict[str, list[str]]:
    """Each role group's, and ``ALL_HOSTS``', LAN addresses, from the inventory."""
    addresses = {
        group: [str(MACHINE.read(other).lan_address) for other in inventory.get_group(group, [])]
        for group in ROLE_GROUPS
    }
    addresses[ALL_HOSTS] = [str(MACHINE.read(other).lan_address) for other in inventory]
    return addresses


def session_refusal(session: Mapping[str, Any] | None, opened: Iterable[Opening]) -> str | None:
    """Why the rules would not admit the SSH ``session`` (the SshSession fact); None if they do."""
    if session is None:
        return (
            "this run does not come in over SSH ($SSH_CONNECTION is empty), so it cannot tell "
            "whether the new rules would let it in"
        )
    try:
        client = ipaddress.ip_address(str(session["client"]).split("%")[0])
    except ValueError:
        return f"the SSH client address {session['client']!r} is not an IP address"
    port = int(session["port"])
    ssh = [o for o in opened if o.port.port == port and o.port.proto == "tcp"]
    if not ssh:
        return (
            f"pyinfra's SSH session uses port {port}/tcp, which no task declares; add it to "
            "firewall_extra_ports"
        )
    if ssh[0].admits(client):
        return None
    sources = ", ".join((*ssh[0].ipv4, *ssh[0].ipv6)) or "no network"
    return (
        f"pyinfra's SSH session comes from {client}, which the rules for port {port} do not "
        f"admit (from {sources}"
        f"{' and the tailnet (100.64.0.0/10)' if ssh[0].tailnet else ''}); the new rules would "
        "drop it. Run pyinfra from an admin source (firewall_admin_sources) or over Tailscale"
    )


def _refuse(host_name: str, reason: str) -> None:
    message = f"Firewall on host {host_name!r} not applied, nothing was touched: {reason}."
    print(message, file=sys.stderr)
    raise FirewallRefused(message)


@deploy("Firewall", data_defaults=DATA.defaults())
def firewall(declared: Iterable[Port] = ()) -> None:
    settings = DATA.read(host)
    machine = MACHINE.read(host)
    opened = openings(
        # The host's data, not only this task's: a port may exist only where it says (when).
        ports_of(host.name, declared, host.data),
        lan_cidr=machine.lan_cidr,
        admin_sources=settings.firewall_admin_sources,
        group_addresses=inventory_addresses(),
        own_address=str(machine.lan_address),
        data=host.data,
        peers={other.name: other.data for other in inventory},
    )

    # The SSH session's own address is known on the host only (the controller may be NATed).
    reason = session_refusal(host.get_fact(SshSession, _sudo=False), opened)
    if reason:
        _refuse(host.name, reason)

    apt.packages(name="Install nftables", packages=["nftables"], no_recommends=True)
    drop_in = files.put(
        name="nftables.service stops only our table (no flush ruleset)",
        src=file_path("nftables-service-homelab.conf"),
        dest=SERVICE_DROP_IN,
        mode="644",
        create_remote_dir=True,
    )
    systemd.daemon_reload(name="Reload systemd for the nftables drop-in", _if=drop_in.did_change)
    guest_bridges = settings.firewall_guest_bridges if HYPERVISOR in host.groups else []
    installed = checked_template(
        name="Firewall ruleset",
        template="nftables.conf.j2",
        dest=CONFIG,
        mode="755",
        check="nft -c -f {}",
        jinja_env_kwargs={"trim_blocks": True, "lstrip_blocks": True},
        openings=opened,
        tailnet_interface=settings.tailnet_interface,
        icmp_rate=settings.firewall_icmp_rate,
        icmp_burst=settings.firewall_icmp_burst,
        extra_rules=settings.firewall_extra_rules,
        guest_bridges=guest_bridges,
    )
    in_step = host.get_fact(NftTableMatches, table=TABLE, recorded=LOADED_LISTING)
    server.shell(
        name="Load the firewall (one nft transaction)",
        commands=[f"nft -f {CONFIG} && nft -s list table {TABLE} > {LOADED_LISTING}"],
        _if=installed.did_change if in_step else None,
    )
    systemd.service(
        name="Load the firewall at boot",
        service="nftables",
        enabled=True,
        running=True,
    )
