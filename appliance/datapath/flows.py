"""Flows and counters: what the datapath is doing, in plain data the control process can
add up across workers and the console can show."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

_ids = itertools.count(1)


@dataclass
class Flow:
    """One client connection (TCP) or client address (UDP) and the backend it goes to."""

    listener: str
    protocol: str
    client: tuple[str, int]
    backend: str
    started: float
    id: int = field(default_factory=lambda: next(_ids))
    bytes_in: int = 0
    bytes_out: int = 0
    state: str = "connecting"


@dataclass
class BackendStats:
    """Counters of one backend of one listener, in one worker or added up."""

    active: int = 0
    connections: int = 0
    connect_failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0

    def add(self, other: BackendStats) -> None:
        self.active += other.active
        self.requests += other.requests
        self.connections += other.connections
        self.connect_failures += other.connect_failures
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out


@dataclass
class ListenerStats:
    """Counters of one listener: accepted, refused for want of a backend, and so on."""

    accepted: int = 0
    no_backend: int = 0
    over_limit: int = 0
    udp_evicted: int = 0
    backends: dict[str, BackendStats] = field(default_factory=dict)
    # HTTP listeners: requests, by route and by status class, and what went wrong.
    requests: int = 0
    bad_requests: int = 0
    timeouts: int = 0
    tls_failures: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, other: ListenerStats) -> None:
        self.requests += other.requests
        self.bad_requests += other.bad_requests
        self.timeouts += other.timeouts
        self.tls_failures += other.tls_failures
        for table, theirs in ((self.routes, other.routes), (self.statuses, other.statuses)):
            for k, n in theirs.items():
                table[k] = table.get(k, 0) + n
        self.accepted += other.accepted
        self.no_backend += other.no_backend
        self.over_limit += other.over_limit
        self.udp_evicted += other.udp_evicted
        for key, b in other.backends.items():
            self.backends.setdefault(key, BackendStats()).add(b)


def merge(parts: list[dict[str, ListenerStats]]) -> dict[str, ListenerStats]:
    """Add up the counters of several workers."""
    total: dict[str, ListenerStats] = {}
    for part in parts:
        for name, st in part.items():
            total.setdefault(name, ListenerStats()).add(st)
    return total


class FlowTable(Generic[T]):
    """UDP flows keyed by client address, least recently used first: a bound of
    ``max_flows`` evicts the oldest, and ``expire`` returns flows idle for ``idle`` seconds.
    Pure: the caller passes the time and closes what comes back."""

    def __init__(self, max_flows: int, idle: float) -> None:
        self.max_flows = max_flows
        self.idle = idle
        self._flows: OrderedDict[tuple[str, int], tuple[T, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, client: tuple[str, int], now: float) -> T | None:
        """The flow of ``client``, marked as used now, or None."""
        hit = self._flows.get(client)
        if hit is None:
            return None
        self._flows[client] = (hit[0], now)
        self._flows.move_to_end(client)
        return hit[0]

    def touch(self, client: tuple[str, int], now: float) -> None:
        hit = self._flows.get(client)
        if hit is not None:
            self._flows[client] = (hit[0], now)
            self._flows.move_to_end(client)

    def add(self, client: tuple[str, int], flow: T, now: float) -> list[T]:
        """Insert a flow; returns the flows evicted to stay within ``max_flows``."""
        self._flows[client] = (flow, now)
        self._flows.move_to_end(client)
        evicted = []
        while len(self._flows) > self.max_flows:
            _, (old, _) = self._flows.popitem(last=False)
            evicted.append(old)
        return evicted

    def remove(self, client: tuple[str, int], flow: T | None = None) -> None:
        """Forget ``client``'s flow (only if it is still ``flow``, when given)."""
        hit = self._flows.get(client)
        if hit is not None and (flow is None or hit[0] is flow):
            del self._flows[client]

    def expire(self, now: float) -> list[T]:
        """Remove and return the flows idle for longer than ``idle``."""
        out = []
        while self._flows:
            client, (flow, last) = next(iter(self._flows.items()))
            if now - last < self.idle:
                break
            del self._flows[client]
            out.append(flow)
        return out
