"""The host's firewall: nftables, input and forward dropped, declared ports open to LAN and tailnet.

``deploys/roles.py`` runs this task last, with the ports the host's tasks declare (``PORTS``);
``firewall_extra_ports`` adds ports of services set up by hand. Each port is accepted only from
the LAN (``lan_cidr``) and on the tailnet interface (``tailnet_interface``); everything else
that arrives unasked is dropped. Loopback, replies (established/related; invalid is dropped),
IPv6 neighbour discovery and rate-limited ICMP/ICMPv6 pass. Nothing is forwarded, except on the
hypervisor, which forwards whatever enters or leaves its guest bridges
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
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from tasks.common.checked_config import checked_template
from tasks.common.datamodel.forms import Field, Int, ListOf, Predicate, Str, Struct
from tasks.common.datamodel.keys import Key, Schema, check_key
from tasks.common.datamodel.machine import HYPERVISOR, MACHINE
from tasks.common.facts import NftTableMatches, SshSession
from tasks.common.ports import Port
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
        "firewall_extra_ports",
        ListOf(EXTRA_PORT),
        [],
        "Ports of services added by hand ({port, proto, service}), open to LAN and tailnet.",
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
        "The tailnet's network interface: declared ports are open on it.",
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


def open_ports(declared: Iterable[Port], extra: Iterable[Mapping[str, Any]]) -> tuple[Port, ...]:
    """The ports to open: the tasks' declared ports and ``firewall_extra_ports``, once each.

    A port/protocol pair declared twice is opened once, under the first service's name.
    """
    chosen: dict[tuple[int, str], Port] = {}
    for port in (*declared, *(Port(e["port"], e["proto"], e["service"]) for e in extra)):
        chosen.setdefault((port.port, port.proto), port)
    return tuple(sorted(chosen.values()))


def ports_of(host_name: str, declared: Iterable[Port], data: Mapping[str, Any]) -> tuple[Port, ...]:
    """What the firewall opens on a host whose tasks declare ``declared``, given its data."""
    extra = check_key(host_name, DATA.keys["firewall_extra_ports"], data)
    return open_ports(declared, extra)


def session_refusal(
    session: Mapping[str, Any] | None,
    lan_cidr: ipaddress.IPv4Network,
    tcp_ports: Iterable[int],
) -> str | None:
    """Why the rules would not admit the SSH ``session`` (the SshSession fact); None if they do.

    The rules admit a declared TCP port from ``lan_cidr`` and on the tailnet interface (where
    the peers have Tailscale's addresses), and anything on loopback (an SSH tunnel).
    """
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
    if port not in set(tcp_ports):
        return (
            f"pyinfra's SSH session uses port {port}/tcp, which no task declares; add it to "
            "firewall_extra_ports"
        )
    if any(client in network for network in LOOPBACK_NETWORKS):
        return None
    if client in lan_cidr or any(client in network for network in TAILNET_NETWORKS):
        return None
    return (
        f"pyinfra's SSH session comes from {client}, which is neither in lan_cidr ({lan_cidr}) "
        "nor on the tailnet (100.64.0.0/10); the new rules would drop it. Run pyinfra from the "
        "LAN or over Tailscale"
    )


def _refuse(host_name: str, reason: str) -> None:
    message = f"Firewall on host {host_name!r} not applied, nothing was touched: {reason}."
    print(message, file=sys.stderr)
    raise FirewallRefused(message)


@deploy("Firewall", data_defaults=DATA.defaults())
def firewall(declared: Iterable[Port] = ()) -> None:
    settings = DATA.read(host)
    lan_cidr = check_key(host.name, MACHINE.keys["lan_cidr"], host.data.dict())
    ports = ports_of(host.name, declared, settings)
    tcp_ports = [p.port for p in ports if p.proto == "tcp"]

    # The SSH session's own address is known on the host only (the controller may be NATed).
    reason = session_refusal(host.get_fact(SshSession, _sudo=False), lan_cidr, tcp_ports)
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
        ports=ports,
        lan_cidr=str(lan_cidr),
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
