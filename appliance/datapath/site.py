"""An HTTP listener as the workers serve it: what both HTTP versions route by."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field

from ..model import Listener
from ..views import ListenerStats
from .backends import BackendSet
from .routing import RouteTable


@dataclass
class Site:
    """An HTTP listener as of one Snapshot: its routes compiled, its pools, its TLS."""

    listener: Listener
    table: RouteTable
    pools: dict[str, BackendSet]
    stats: ListenerStats
    ssl_context: ssl.SSLContext | None = None
    backend_contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.trusted)
