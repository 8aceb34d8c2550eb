"""Ports a task opens, declared once next to the task that opens them.

A task module that listens on the network declares ``PORTS`` (a tuple of :class:`Port`). The
firewall opens exactly the ports of the tasks a host runs (``deploys/roles.py`` collects them),
and only to the LAN and the tailnet; a port nobody declared stays closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, order=True)
class Port:
    """One listening port: number, protocol and the service that listens there."""

    port: int
    proto: Literal["tcp", "udp"]
    service: str

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} of {self.service} is not in 1-65535")
        if self.proto not in ("tcp", "udp"):
            raise ValueError(f"protocol {self.proto!r} of {self.service} is not tcp or udp")
