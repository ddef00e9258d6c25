"""What the services publish: the counters the datapath keeps, and the frozen views that
the control API, the metrics and the console read. Nothing here does I/O; nothing here
is shared mutable state between threads (a view is built in the trio thread and handed
over whole).

A service answers ``view()`` with one of these; the control plane and the metrics read
only views, so they never reach into a service, and no service imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .model import Listener

# -- counters ------------------------------------------------------------------------------


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
    # Accepts paused and flows refused because this box ran out of descriptors or memory.
    exhausted: int = 0
    # Access log lines dropped: the buffer was full, or the target refused the write.
    access_log_dropped: int = 0
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
        self.exhausted += other.exhausted
        self.access_log_dropped += other.access_log_dropped
        for key, b in other.backends.items():
            self.backends.setdefault(key, BackendStats()).add(b)

    def count_status(self, status: int) -> None:
        """One more response of ``status`` (0: the exchange was cut without one)."""
        cls = f"{status // 100}xx" if status else "cut"
        self.statuses[cls] = self.statuses.get(cls, 0) + 1


Traffic = dict[str, ListenerStats]


def merge(parts: list[Traffic]) -> Traffic:
    """Add up the counters of several workers into new objects (the parts are untouched,
    so the result is the caller's own)."""
    total: Traffic = {}
    for part in parts:
        for name, st in part.items():
            total.setdefault(name, ListenerStats()).add(st)
    return total


# A flow as workers report it: a tuple is far cheaper to gather and sort than a dict.
FLOW_FIELDS = ("id", "listener", "protocol", "client", "vip", "backend", "bytes_in",
               "bytes_out", "age", "state", "path")
FlowRow = tuple[Any, ...]
# The fields a flows query filters on: exactly listener, protocol, state and path; the
# others by substring.
FLOW_FILTERS = ("listener", "protocol", "backend", "client", "state", "path", "vip")


# -- published views ------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsView:
    """Which datapath serves what: ``kernel`` is False, with ``why_not``, when the kernel
    cannot be programmed here."""

    kernel: bool = False
    why_not: str = ""
    listeners: dict[str, str] = field(default_factory=dict)  # name -> "kernel" | "user"
    rules_changes: int = 0  # kernel rule transactions applied
    rules_seconds: float = 0.0  # the last one: from its Snapshot to rules in force
    rules_failures: int = 0

    def as_json(self) -> dict[str, Any]:
        paths = list(self.listeners.values())
        return {"kernel": self.kernel, "why_not": self.why_not,
                "mode": "kernel" if paths and set(paths) == {"kernel"} else
                        "mixed" if "kernel" in paths else "user",
                "kernel_listeners": paths.count("kernel"),
                "user_listeners": paths.count("user"),
                "rules_changes": self.rules_changes,
                "rules_seconds": round(self.rules_seconds, 4),
                "rules_failures": self.rules_failures}


class ActionRefused(ValueError):
    """An operator's action that cannot be done: it names a listener or backend that does
    not exist, a bad value, or a state that does not allow it. ``status`` is the control
    API's answer (400, 404, 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EventSink(Protocol):
    """Where services record what happened (the control plane's events ring)."""

    def event(self, kind: str, message: str, **fields: Any) -> None: ...


@dataclass(frozen=True)
class SnapshotView:
    """The Snapshot in force and where it came from. ``listeners`` are as configured and
    learned, before operators' changes (a disabled backend is still listed)."""

    version: int
    digest: str
    workers: int
    listeners: tuple[Listener, ...]
    from_cluster: int
    config_path: str
    draining: bool = False
    reload_failures: int = 0  # reloads refused (config errors, binds that failed)
    bind_errors: tuple[str, ...] = ()  # listeners in force that could not be bound


@dataclass(frozen=True)
class HealthView:
    """The active checks' verdicts: (listener, backend key) of every backend down."""

    down: frozenset[tuple[str, str]] = frozenset()


class HaMode(StrEnum):
    STANDALONE = "standalone"
    LEASE = "lease"
    VRRP = "vrrp"
    BGP = "bgp"


class VrrpState(StrEnum):
    """A VRRP virtual router's state (RFC 5798 6.4)."""

    INITIALIZE = "initialize"
    BACKUP = "backup"
    MASTER = "master"


@dataclass(frozen=True)
class RouterView:
    """One VRRP virtual router (one per address family)."""

    family: str
    vrid: int
    state: VrrpState
    priority: int
    configured_priority: int
    reason: str
    vips: tuple[str, ...]
    learned: tuple[str, ...] = ()  # the cluster's VIPs it carries (not advertised)


@dataclass(frozen=True)
class PeerView:
    """A VRRP peer as last heard: ``seen`` is wall-clock seconds."""

    address: str
    priority: int
    interval: float
    seen: float


@dataclass(frozen=True)
class BgpSessionView:
    """A BGP session of this box's BIRD, and its BFD session's state ("" without)."""

    peer: str
    asn: int
    state: str  # Established, Active, Connect ... as BIRD says
    since: str
    bfd: str
    exported: int
    established: bool


@dataclass(frozen=True)
class VipView:
    """A VIP in bgp mode: announced, or withdrawn and why."""

    vip: str
    announced: bool
    why: str


@dataclass(frozen=True)
class HaView:
    """Who leads, and how: the fields of the mode in force, and what an operator should
    know (``alerts``)."""

    mode: HaMode = HaMode.STANDALONE
    leader: bool = True
    override: str = ""
    alerts: tuple[str, ...] = ()
    # lease mode
    identity: str = ""
    lease: str = ""
    holder: str | None = None
    # vrrp mode
    interface: str = ""
    vrid: int = 0
    routers: tuple[RouterView, ...] = ()
    peers: tuple[PeerView, ...] = ()
    # bgp mode
    asn: int = 0
    router_id: str = ""
    sessions: tuple[BgpSessionView, ...] = ()
    vips: tuple[VipView, ...] = ()
    drained: str = ""  # why the box withdrew every VIP ("" while it serves)

    def as_json(self, now: float) -> dict[str, Any]:
        """The status endpoint's ``ha`` object (alerts apart)."""
        if self.mode == HaMode.STANDALONE:
            return {"mode": "standalone", "leader": True}
        out: dict[str, Any] = {"mode": str(self.mode), "leader": self.leader,
                               "override": self.override}
        if self.mode == HaMode.LEASE:
            out.update(identity=self.identity, lease=self.lease, holder=self.holder)
            return out
        if self.mode == HaMode.BGP:
            out.update(asn=self.asn, router_id=self.router_id, drained=self.drained,
                       sessions=[vars_of(s) for s in self.sessions],
                       vips=[vars_of(v) for v in self.vips])
            return out
        out.update(interface=self.interface, vrid=self.vrid,
                   routers=[vars_of(r) for r in self.routers],
                   peers=[{**vars_of(p), "seen_ago": round(now - p.seen, 1)}
                          for p in self.peers])
        return out


@dataclass(frozen=True)
class WatchView:
    """One followed collection of the cluster; ``since`` (monotonic seconds) is when it
    entered its state."""

    name: str
    state: str
    detail: str
    errors: int
    since: float


@dataclass(frozen=True)
class SyncView:
    """The cluster sync: whether every collection was listed, the watches, what was
    allocated and written."""

    synced: bool
    changes: int
    watches: tuple[WatchView, ...]
    vips: int
    status_writes: int
    problems: int

    def as_json(self) -> dict[str, Any]:
        return {"synced": self.synced, "changes": self.changes,
                "watches": [{"name": w.name, "state": w.state, "detail": w.detail,
                             "errors": w.errors} for w in self.watches],
                "vips": self.vips, "status_writes": self.status_writes,
                "problems": self.problems}

    def stale(self, now: float, longer_than: float) -> list[str]:
        """The watches out of sync for longer than ``longer_than`` seconds."""
        return [w.name for w in self.watches
                if w.state != "synced" and now - w.since > longer_than]


def vars_of(view: Any) -> dict[str, Any]:
    """A view's fields as a JSON object (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(view).items()}

