"""Every host resolves names through the inventory's DNS host(s), with a fallback behind them.

Reads ``domain``, the ``lan_address`` of every host in group ``dns`` and
``dns_fallback_servers``. The order is: the inventory's resolvers (a DNS host puts itself first
as 127.0.0.1), then the fallbacks, so that a dead resolver never stops a rollout:

- ``dns_fallback_servers = None`` (the default) keeps the resolvers the host uses now (its
  installer's or DHCP's choice, usually the router) as the fallbacks, minus loopback addresses
  and the inventory's own DNS hosts: what an operator expects from "put my resolver first";
- a list names the fallbacks; ``[]`` means none (a dead resolver then stops name resolution).

How it is configured depends on the host (detected from facts, not from the OS name):

- **systemd-resolved running and /etc/resolv.conf its stub or its resolv.conf** (Ubuntu 24.04):
  a drop-in ``/etc/systemd/resolved.conf.d/homelab.conf`` with ``DNS=`` (the resolvers, then
  the fallbacks: resolved moves on to the next server when one fails), ``Domains=<domain> ~.``
  (search domain, and these servers for every name rather than in parallel with the links'
  DHCP servers) and ``FallbackDNS=`` (the fallbacks; resolved uses those only when it knows no
  other server at all). The stub symlink stays. resolved keeps using the server that last
  answered: after a failover it may stay on the fallback until that one fails or resolved
  restarts (inventory names still resolve there from /etc/hosts).
- **otherwise** (Debian 13, Proxmox VE, LXC guests): a managed ``/etc/resolv.conf`` with
  ``options timeout:1 attempts:2``, so a dead first server costs about a second a lookup
  (a stopped unbound on a live host answers "port unreachable" and costs nothing). glibc reads
  at most three ``nameserver`` lines: explicit data that needs more is refused; kept fallbacks
  are cut to fit. On an LXC guest ``/etc/.pve-ignore.resolv.conf`` stops Proxmox VE from
  rewriting the file at every guest start. A DHCP client that rewrites /etc/resolv.conf
  (dhclient, dhcpcd hooks) must be told not to; the next rollout would put the file back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from pyinfra import host, inventory, logger
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents, Link
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, systemd

from tasks.common.datamodel.forms import IPv4Address, ListOf, Optional
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import DNS, MACHINE
from tasks.common.facts import ContainerVirt
from tasks.common.templating import template_path

RESOLVED = "systemd-resolved.service"

DATA = Schema(
    "resolver_client",
    Key(
        "dns_fallback_servers",
        Optional(ListOf(IPv4Address(), unique=True)),
        None,
        "Resolvers tried after the inventory's DNS hosts; None keeps the host's current ones"
        " (minus loopback and the DNS hosts), [] means none.",
    ),
)

RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_DROP_IN = "/etc/systemd/resolved.conf.d/homelab.conf"
# systemd-resolved's own files that /etc/resolv.conf links to when resolved manages it; the
# second lists every upstream server resolved uses (global and per link).
RESOLVED_DIR = "/run/systemd/resolve/"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"
PVE_IGNORE = "/etc/.pve-ignore.resolv.conf"
GLIBC_MAXNS = 3


def nameservers(lines: Iterable[str] | None) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order, without loopback ones."""
    found: list[str] = []
    for line in lines or ():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(words[1].split("%", 1)[0])
        except ValueError:
            continue
        if not address.is_loopback and words[1] not in found:
            found.append(words[1])
    return found


def server_order(
    *,
    this_host: str,
    dns_hosts: Sequence[tuple[str, str]],
    fallbacks: Sequence[str] | None,
    current: Sequence[str],
    limit: int | None,
) -> tuple[list[str], list[str]]:
    """(resolvers, fallbacks) for ``this_host``, in the order they are to be tried.

    ``dns_hosts`` are the inventory's DNS hosts as (name, lan_address); a DNS host asks itself
    first, on 127.0.0.1. ``fallbacks`` None keeps ``current`` (minus the DNS hosts). ``limit``
    is the most servers the mechanism reads (glibc: 3), None for no limit.
    """
    resolvers = ["127.0.0.1" if name == this_host else address for name, address in dns_hosts]
    resolvers.sort(key=lambda address: address != "127.0.0.1")
    own = {address for _, address in dns_hosts} | set(resolvers)
    if fallbacks is None:
        kept = [address for address in current if address not in own]
        if limit is not None:
            kept = kept[: max(limit - len(resolvers), 0)]
        return resolvers, kept
    chosen = [str(address) for address in fallbacks]
    if limit is not None and len(resolvers) + len(chosen) > limit:
        raise DataError(
            this_host,
            "dns_fallback_servers",
            chosen,
            f"at most {max(limit - len(resolvers), 0)} addresses: the inventory has"
            f" {len(resolvers)} DNS host(s) and this host's resolver (glibc, /etc/resolv.conf)"
            f" reads only {limit} nameservers",
        )
    return resolvers, [address for address in chosen if address not in own]


def uses_resolved() -> bool:
    """Whether systemd-resolved runs and /etc/resolv.conf points into its files."""
    if not host.get_fact(SystemdStatus, services=[RESOLVED]).get(RESOLVED):
        return False
    link = host.get_fact(Link, path=RESOLV_CONF)
    return bool(link) and RESOLVED_DIR in str(link.get("link_target", ""))


@deploy("Resolver client", data_defaults=DATA.defaults())
def resolver_client() -> None:
    settings = DATA.read(host)
    domain = MACHINE.read(host).domain
    dns_hosts = [
        (other.name, str(MACHINE.read(other).lan_address))
        for other in inventory
        if DNS in other.groups
    ]
    if not dns_hosts:
        host.noop("the inventory has no host in group dns; the host's resolvers stay as they are")
        return
    resolved = uses_resolved()
    current = nameservers(
        host.get_fact(FileContents, path=RESOLVED_UPSTREAMS if resolved else RESOLV_CONF)
    )
    resolvers, fallbacks = server_order(
        this_host=host.name,
        dns_hosts=dns_hosts,
        fallbacks=settings.dns_fallback_servers,
        current=current,
        limit=None if resolved else GLIBC_MAXNS,
    )
    if not fallbacks:
        logger.warning(
            f"{host.name}: no fallback DNS server (dns_fallback_servers is"
            f" {settings.dns_fallback_servers!r}, the host has none of its own): when"
            f" {', '.join(name for name, _ in dns_hosts)} is down, name resolution stops"
        )
    if resolved:
        drop_in = files.template(
            name="systemd-resolved: the inventory's resolvers first, then the fallbacks",
            src=template_path("resolved-homelab.conf.j2"),
            dest=RESOLVED_DROP_IN,
            mode="644",
            create_remote_dir=True,
            domain=domain,
            resolvers=resolvers,
            fallbacks=fallbacks,
        )
        systemd.service(
            name="Restart systemd-resolved for its new servers",
            service="systemd-resolved",
            running=None,
            restarted=True,
            _if=drop_in.did_change,
        )
        return
    files.file(
        name="No systemd-resolved drop-in where resolved does not manage resolv.conf",
        path=RESOLVED_DROP_IN,
        present=False,
    )
    if host.get_fact(ContainerVirt) == "lxc":
        files.file(
            name="Proxmox VE leaves this guest's /etc/resolv.conf alone",
            path=PVE_IGNORE,
            present=True,
            touch=False,
            mode="644",
        )
    files.template(
        name="/etc/resolv.conf: the inventory's resolvers first, then the fallbacks",
        src=template_path("resolv.conf.j2"),
        dest=RESOLV_CONF,
        mode="644",
        user="root",
        group="root",
        domain=domain,
        resolvers=resolvers,
        fallbacks=fallbacks,
    )
