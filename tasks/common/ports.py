"""Ports a task opens, declared once next to the task that opens them, with their consumers.

A task module that listens on the network declares ``PORTS`` (a tuple of :class:`Port`). The
firewall opens exactly the ports of the tasks a host runs (``deploys/roles.py`` collects them),
each only to the sources its ``consumers`` name; a port nobody declared stays closed, and a
port with no consumer serves the host itself (loopback) and monitoring only.

Consumers are inventory groups (``"embedder"``: every embedder host's ``lan_address``),
``ALL_HOSTS`` (every inventory host), ``ADMIN`` (the admin's devices: ``firewall_admin_sources``
and the tailnet), ``TAILNET`` (the tailnet interface only: interfaces without a login of their
own stay off the LAN) and ``LAN`` (all of ``lan_cidr``). A port with a probe or metrics path is
open to the monitoring group too, which probes and scrapes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tasks.common.datamodel.machine import ROLE_GROUPS

ADMIN = "admin"
TAILNET = "tailnet"
LAN = "lan"
ALL_HOSTS = "all"
CONSUMER_KINDS = (ADMIN, TAILNET, LAN, ALL_HOSTS, *ROLE_GROUPS)
# A function of a host's data giving more source addresses (CIDRs) for one port.
ExtraSources = Callable[[Any], Iterable[str]]
# The same from the host's data and every inventory host's data, by name: for clients that
# declare in their own data that they use this host (the machines on its UPS).
PeerSources = Callable[[Any, Mapping[str, Any]], Iterable[str]]
# Whether a port exists on a host, from the host's data.
Presence = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, order=True)
class Port:
    """One listening port: number, protocol and the service that listens there.

    ``probe`` tells monitoring how to check the service from outside: ``"tcp"`` (connect),
    ``"http:/path"`` (GET answers 2xx), ``"ssh"``, ``"dns"``; ``None`` leaves it unprobed.
    ``metrics_path`` is where Prometheus scrapes the service's own metrics, if it has any.
    ``consumers`` name who may connect (see the module's docstring); ``extra_sources`` reads
    more client addresses from the host's data (PostgreSQL's declared extra clients);
    ``peer_sources`` from its data and every inventory host's (NUT: the machines whose
    ``ups_primary`` is this host).
    ``loopback``: the service listens on 127.0.0.1 only; no consumers, probed on the host.
    ``when``: the port exists only on a host whose data makes it true (the IPMI exporter where
    the data declares a BMC); :func:`present` filters by it.
    None of these take part in comparisons: a port is its number, protocol and service.
    """

    port: int
    proto: Literal["tcp", "udp"]
    service: str
    probe: str | None = field(default=None, compare=False)
    metrics_path: str | None = field(default=None, compare=False)
    consumers: tuple[str, ...] = field(default=(), compare=False)
    extra_sources: ExtraSources | None = field(default=None, compare=False, repr=False)
    peer_sources: PeerSources | None = field(default=None, compare=False, repr=False)
    when: Presence | None = field(default=None, compare=False, repr=False)
    loopback: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.loopback and (
            self.consumers or self.extra_sources or self.peer_sources or self.metrics_path
        ):
            raise ValueError(
                f"{self.service} listens on loopback only: it has no consumers, extra sources"
                " or scraped metrics path"
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} of {self.service} is not in 1-65535")
        if self.proto not in ("tcp", "udp"):
            raise ValueError(f"protocol {self.proto!r} of {self.service} is not tcp or udp")
        if self.probe is not None and not (
            self.probe in ("tcp", "ssh", "dns") or self.probe.startswith("http:/")
        ):
            raise ValueError(
                f"probe {self.probe!r} of {self.service} is not tcp, ssh, dns or http:/PATH"
            )
        unknown = [c for c in self.consumers if c not in CONSUMER_KINDS]
        if unknown:
            raise ValueError(
                f"consumers {unknown} of {self.service} are not among {', '.join(CONSUMER_KINDS)}"
            )

    @property
    def monitored(self) -> bool:
        """Monitoring connects to it: it is probed or scraped from the monitoring guest."""
        return not self.loopback and (self.probe is not None or self.metrics_path is not None)


def present(ports: Iterable[Port], data: Mapping[str, Any]) -> tuple[Port, ...]:
    """The ``ports`` that exist on a host with ``data`` (those whose ``when`` holds)."""
    return tuple(p for p in ports if p.when is None or p.when(data))
