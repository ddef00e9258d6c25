"""The backends one worker balances across, pure: each backend's runtime state (passive
ejection, counters, open flows, idle keep-alive connections), carried from one Snapshot
to the next by (listener, key); a pool's pick; and what happens to a backend that a new
Snapshot no longer has (it drains). Time is passed in; nothing here does I/O.

A cluster's nodePort listeners have every node as a backend, most of them never used by
a given worker, and services x nodes runtime records would not fit in memory: a record
is made on a backend's first use, except where active checks need one at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..model import Backend, BackendTls, Listener, PassiveSpec
from ..views import BackendStats, ListenerStats
from .balance import Balancer, make_balancer
from .health import PassiveState

log = logging.getLogger("edgelb.datapath")

RuntimeKey = tuple[str, str]  # (listener, backend key within it)


class Cuttable(Protocol):
    """An open flow that a drain can cut: ended at ``deadline`` at the latest, unless
    its backend comes back first (``uncut``)."""

    def cut_at(self, deadline: float) -> None: ...

    def uncut(self) -> None: ...


class Closable(Protocol):
    def close(self) -> None: ...


class Shared(Protocol):
    def retire(self) -> None:
        """Take no new requests; close once those in flight are done."""


@dataclass
class IdleUpstream:
    """A keep-alive backend connection waiting for its next request."""

    wire: Closable
    since: float


@dataclass
class BackendRuntime:
    """A backend as one worker sees it."""

    backend: Backend
    passive: PassiveState
    stats: BackendStats = field(default_factory=BackendStats)
    key: str = ""  # within its listener: the address, "pool/address" for HTTP pools
    address: tuple[str, int] = ("", 0)  # where to connect
    up: bool = True  # the active health verdict, set by the control process
    removed: bool = False
    # Each open flow, so that a removed backend's flows can be drained.
    flows: dict[int, Cuttable] = field(default_factory=dict)
    # HTTP: keep-alive connections waiting for their next request, most recent last.
    idle: list[IdleUpstream] = field(default_factory=list)
    # HTTP/2: connections that streams share (``h2.upstream.H2Upstream``), each closed
    # once idle; a removed backend's close once their streams are done.
    shared: list[Shared] = field(default_factory=list)

    def close_idle(self) -> None:
        for conn in self.idle:
            conn.wire.close()
        self.idle.clear()
        for shared in list(self.shared):
            shared.retire()

    def usable(self, now: float) -> bool:
        return self.up and not self.removed and not self.passive.ejected(now)

    def connect_failed(self, listener: str, now: float, why: str) -> None:
        """A connect (or TLS handshake) to this backend failed: counted, and after enough
        in a row, ejected for a backoff (logged once per ejection)."""
        self.stats.connect_failures += 1
        if self.passive.failure(now):
            log.warning("listener %s: backend %s ejected after %d connect failures (%s)",
                        listener, self.key, self.passive.spec.failures, why)


class _ActiveView(Sequence[int]):
    """The balancers' view of active connection counts, read live without copying."""

    def __init__(self, brs: list[BackendRuntime | None]) -> None:
        self.brs = brs

    def __len__(self) -> int:
        return len(self.brs)

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        br = self.brs[i]
        return br.stats.active if br is not None else 0


@dataclass
class BackendSet:
    """The backends a listener (or one HTTP pool of it) balances across, as of one
    Snapshot, with their runtime records made on first use."""

    listener: Listener
    balancer: Balancer
    brs: list[BackendRuntime | None]  # by backend index; None until first use
    stats: ListenerStats
    make: Callable[[int], BackendRuntime]
    name: str = ""  # the HTTP pool's name; "" for an L4 listener's own backends
    tls: BackendTls | None = None
    protocol: str = "http1"  # how an HTTP pool's backends are spoken to
    active: _ActiveView = field(init=False)

    def __post_init__(self) -> None:
        self.active = _ActiveView(self.brs)

    def runtime(self, i: int) -> BackendRuntime:
        br = self.brs[i]
        if br is None:
            br = self.brs[i] = self.make(i)
        return br

    def pick(self, key: bytes, tried: set[int], now: float) -> int | None:
        """The index of the backend for a new flow from ``key`` (the client address),
        among those usable now and not yet tried; None when none is left."""
        avail = [i for i, br in enumerate(self.brs)
                 if i not in tried and (br is None or br.usable(now))]
        return self.balancer.pick(avail, key, self.active)


class Backends:
    """Every backend runtime of one worker, by (listener, key). ``compose`` builds the
    sets of a new Snapshot, carrying each backend's runtime over where its listener and
    key stay; ``retire`` drains the ones the Snapshot left out."""

    def __init__(self) -> None:
        self.runtimes: dict[RuntimeKey, BackendRuntime] = {}
        self.down: set[RuntimeKey] = set()  # the active checks' verdicts
        self._with_runtimes: set[str] = set()  # listeners that have any runtime state
        self._pairs: dict[int, tuple[tuple[Backend, ...], list[tuple[str, int]]]] = {}
        self._keep: set[RuntimeKey] = set()

    def compose(self, lst: Listener, stats: ListenerStats) -> dict[str, BackendSet]:
        """The backend sets of one listener of a new Snapshot: one named "" for an L4
        listener, one per pool for an HTTP one."""
        if lst.http is None:
            return {"": self._set(lst, "", lst.backends, lst.balance, lst.passive,
                                  lst.health.type != "none", stats)}
        return {p.name: self._set(lst, p.name + "/", p.backends, p.balance, p.passive,
                                  p.health.type != "none", stats, p.name, p.tls, p.protocol)
                for p in lst.http.pools}

    def retire(self, now: float, drain_timeout: float) -> None:
        """After every listener of a Snapshot was composed: backends it no longer has
        take no new flows, their idle connections close, and their open flows are cut at
        ``now + drain_timeout``."""
        keep, self._keep, self._pairs = self._keep, set(), {}
        for k, br in list(self.runtimes.items()):
            if k in keep:
                continue
            br.removed = True
            br.close_idle()
            for flow in br.flows.values():
                flow.cut_at(now + drain_timeout)
            if not br.flows:
                del self.runtimes[k]

    def release(self, listener: str, br: BackendRuntime) -> None:
        """A flow of ``br`` ended: a removed backend goes once its last flow is done."""
        k = (listener, br.key)
        if br.removed and not br.flows and self.runtimes.get(k) is br:
            del self.runtimes[k]

    def set_health(self, down: set[RuntimeKey]) -> None:
        """The active checks' verdicts from the control process."""
        self.down = set(down)
        for k, br in self.runtimes.items():
            br.up = k not in down

    def _set(self, lst: Listener, prefix: str, backends: tuple[Backend, ...], balance: str,
             passive: PassiveSpec, eager: bool, stats: ListenerStats, name: str = "",
             tls: BackendTls | None = None, protocol: str = "http1") -> BackendSet:
        """Health-checked sets get their runtimes at once (a check may mark one down);
        the others on first use."""
        listener = lst.name

        def key_of(b: Backend) -> str:
            return prefix + (b.key if prefix else lst.backend_key(b))

        def make(i: int) -> BackendRuntime:
            b = backends[i]
            key = key_of(b)
            k = (listener, key)
            br = self.runtimes.get(k)
            if br is None or br.passive.spec != passive:
                old = br
                br = BackendRuntime(b, PassiveState(passive),
                                    stats.backends.setdefault(key, BackendStats()))
                if old is not None:
                    br.flows = old.flows
                    br.idle = old.idle
                    br.shared = old.shared
            br.backend, br.key = b, key
            br.address = b.address if prefix else lst.backend_address(b)
            if br.removed:
                # Back before its drain deadline: its flows are no longer to be cut.
                for flow in br.flows.values():
                    flow.uncut()
            br.removed = False
            br.up = k not in self.down
            self.runtimes[k] = br
            self._with_runtimes.add(listener)
            return br

        brs: list[BackendRuntime | None] = [None] * len(backends)
        if eager or listener in self._with_runtimes:
            for i, b in enumerate(backends):
                k = (listener, key_of(b))
                if eager or k in self.runtimes:
                    brs[i] = make(i)
                    self._keep.add(k)
        pairs = self._pairs.get(id(backends))
        if pairs is None or pairs[0] is not backends:
            # A tuple of nodes shared by thousands of listeners is described once.
            pairs = (backends, [(b.key, b.weight) for b in backends])
            self._pairs[id(backends)] = pairs
        return BackendSet(lst, make_balancer(balance, pairs[1]), brs, stats, make, name, tls,
                          protocol)
