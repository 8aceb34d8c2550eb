"""Ports a task opens, declared once next to the task that opens them.

A task module that listens on the network declares ``PORTS`` (a tuple of :class:`Port`). The
firewall opens exactly the ports of the tasks a host runs (``deploys/roles.py`` collects them),
and only to the LAN and the tailnet; a port nobody declared stays closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, order=True)
class Port:
    """One listening port: number, protocol and the service that listens there.

    ``probe`` tells monitoring how to check the service from outside: ``"tcp"`` (connect),
    ``"http:/path"`` (GET answers 2xx), ``"ssh"``, ``"dns"``; ``None`` leaves it unprobed.
    ``metrics_path`` is where Prometheus scrapes the service's own metrics, if it has any.
    Neither takes part in comparisons: a port is its number, protocol and service.
    """

    port: int
    proto: Literal["tcp", "udp"]
    service: str
    probe: str | None = field(default=None, compare=False)
    metrics_path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
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
