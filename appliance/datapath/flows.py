"""Flows: what the datapath is doing, one record per client connection or UDP client
address, in plain data the control process gathers and the console shows. Pure.

The counters the datapath keeps are in ``appliance.views``: they are what it publishes.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

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
    # How an operator's cut ends it (at a deadline on the loop's clock), once it has
    # something to cut.
    cut_at: Callable[[float], None] | None = field(default=None, repr=False)


class FlowBook(Protocol):
    """Where a connection's flow is registered while it is open (the worker's table, which
    the console lists and a drain waits to empty)."""

    def begin(self, flow: Flow) -> None: ...

    def end(self, flow: Flow) -> None: ...


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
