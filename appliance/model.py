"""The immutable Snapshot: what edgelb forwards, to where, and how.

One Snapshot is in force at a time. New connections use the newest; a connection keeps
the Listener and Backend it started with until it ends (or its backend's drain deadline).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

BALANCERS = ("round_robin", "least_conn", "p2c", "maglev")


@dataclass(frozen=True)
class Backend:
    """A server a listener forwards to (a node IP and nodePort, or a local server)."""

    host: str
    port: int
    weight: int = 1

    @property
    def key(self) -> str:
        """The backend's identity across Snapshots: its address."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class HealthSpec:
    """Active health checking: ``tcp`` connects, ``http`` GETs ``path`` and expects a status."""

    type: str = "tcp"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    path: str = "/"
    expect_status: int = 200


@dataclass(frozen=True)
class PassiveSpec:
    """Passive ejection: ``failures`` consecutive connect failures eject a backend for
    ``backoff`` seconds, doubling on each repeat up to ``max_backoff``; 0 failures disables."""

    failures: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0


@dataclass(frozen=True)
class Timeouts:
    connect: float = 1.0
    idle: float = 300.0


@dataclass(frozen=True)
class Listener:
    """An address edgelb accepts on, with the pool of backends it balances across."""

    name: str
    bind: tuple[str, int]
    protocol: str = "tcp"
    balance: str = "round_robin"
    backends: tuple[Backend, ...] = ()
    health: HealthSpec = field(default_factory=HealthSpec)
    passive: PassiveSpec = field(default_factory=PassiveSpec)
    timeouts: Timeouts = field(default_factory=Timeouts)
    proxy_protocol: str = "none"
    max_flows: int = 65536
    max_connections: int = 0
    backlog: int = 4096

    @property
    def bind_text(self) -> str:
        host, port = self.bind
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def socket_key(self) -> tuple[str, str, int]:
        """What identifies the listening socket: a reload keeps sockets whose key stays."""
        return (self.protocol, self.bind[0], self.bind[1])


@dataclass(frozen=True)
class Snapshot:
    """Everything the datapath needs, immutable, versioned and content-hashed."""

    version: int
    listeners: tuple[Listener, ...]
    workers: int = 1
    drain_timeout: float = 30.0
    metrics_bind: tuple[str, int] | None = None

    @property
    def digest(self) -> str:
        """A short hash of the content (not the version): equal digests forward alike."""
        text = repr((self.listeners, self.workers, self.drain_timeout, self.metrics_bind))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def listener(self, name: str) -> Listener | None:
        return next((lst for lst in self.listeners if lst.name == name), None)
