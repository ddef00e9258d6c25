"""The immutable Snapshot: what edgelb forwards, to where, and how.

One Snapshot is in force at a time. New connections use the newest; a connection keeps
the Listener and Backend it started with until it ends (or its backend's drain deadline).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from enum import StrEnum

BALANCERS = ("round_robin", "least_conn", "p2c", "maglev")
# How an HTTP pool's backends are spoken to: HTTP/1.1, HTTP/2 in the clear (prior
# knowledge), HTTP/2 over TLS.
BACKEND_PROTOCOLS = ("http1", "h2c", "h2")
# The balancers with an nftables form: numgen over weighted slots, and Maglev on jhash.
KERNEL_BALANCERS = ("round_robin", "maglev")


@dataclass(frozen=True, slots=True)
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
    port: int = 0  # probe this port of the backend's host instead of its own port


@dataclass(frozen=True)
class PassiveSpec:
    """Passive ejection: ``failures`` consecutive connect failures eject a backend for
    ``backoff`` seconds, doubling on each repeat up to ``max_backoff``; 0 failures disables."""

    failures: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``request``, ``keepalive``, ``body`` and ``response`` apply to HTTP only:
    the request head must arrive within ``request`` (else 408), an idle keep-alive
    connection closes after ``keepalive``, a request body may stall for ``body``, and a
    backend must start its response within ``response`` (else 504)."""

    connect: float = 1.0
    idle: float = 300.0
    request: float = 10.0
    keepalive: float = 60.0
    body: float = 60.0
    response: float = 60.0


@dataclass(frozen=True)
class Pool:
    """A named set of backends an HTTP listener's routes send requests to."""

    name: str
    balance: str = "round_robin"
    backends: tuple[Backend, ...] = ()
    health: HealthSpec = field(default_factory=HealthSpec)
    passive: PassiveSpec = field(default_factory=PassiveSpec)
    tls: BackendTls | None = None
    protocol: str = "http1"  # one of BACKEND_PROTOCOLS (h2 comes with tls)


@dataclass(frozen=True)
class BackendTls:
    """TLS towards a pool's backends, verified against ``ca`` (or not, if ``verify`` is off)."""

    ca: str | None = None
    verify: bool = True
    server_name: str | None = None


PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")


def path_elements(path: str) -> tuple[str, ...]:
    """Path elements split by '/', a trailing slash ignored: ``/a/b/`` -> ("a", "b")."""
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class PathRule:
    """An Ingress HTTPIngressPath: ``path`` of ``type`` goes to ``pool``."""

    path: str
    type: str
    pool: str

    @property
    def match_key(self) -> tuple[str, object]:
        """What the rule matches: two rules of one host with the same key claim the
        same requests. ``Exact`` matches the path as given; ``Prefix`` (and
        ``ImplementationSpecific``, which edgelb reads as Prefix) matches whole path
        elements, a trailing slash ignored."""
        if self.type == "Exact":
            return ("exact", self.path)
        return ("prefix", path_elements(self.path))


@dataclass(frozen=True)
class Route:
    """An Ingress rule: requests for ``host`` ("" for any, ``*.example.com`` for one label
    of that domain) are sent by path."""

    host: str
    paths: tuple[PathRule, ...]


def route_conflicts(routes: tuple[Route, ...] | list[Route]) -> list[str]:
    """Each rule that claims what an earlier rule of the same host already claims (the
    first one given wins), as a message."""
    seen: set[tuple[str, tuple[str, object]]] = set()
    out = []
    for route in routes:
        host = route.host.lower()
        for rule in route.paths:
            claim = (host, rule.match_key)
            if claim in seen:
                out.append(f"host {route.host or '*'!r} path {rule.path!r} ({rule.type}) "
                           "is given twice; the first one wins")
            seen.add(claim)
    return out


@dataclass(frozen=True)
class TlsCert:
    """A certificate and key served for ``hosts`` (SNI); ``fingerprint`` hashes the files'
    content so that a changed certificate at the same path is a changed Snapshot."""

    hosts: tuple[str, ...]
    cert: str
    key: str
    fingerprint: str = ""


@dataclass(frozen=True)
class HttpLimits:
    """Request size limits, defaulting to what HAProxy and nginx allow."""

    max_request_line: int = 8192
    max_header_bytes: int = 32768  # HTTP/2: the decoded header list (HPACK bombs)
    max_headers: int = 100
    # HTTP/2, per client connection: streams open at once (SETTINGS), and what a client
    # may do per 10 s before it gets GOAWAY ENHANCE_YOUR_CALM (rapid reset, floods).
    max_concurrent_streams: int = 100
    max_resets: int = 200
    max_control_frames: int = 200


@dataclass(frozen=True)
class HttpSpec:
    """What an ``http`` or ``https`` listener adds: routes, pools, TLS and limits."""

    routes: tuple[Route, ...] = ()
    pools: tuple[Pool, ...] = ()
    default_pool: str | None = None
    tls: tuple[TlsCert, ...] = ()
    limits: HttpLimits = field(default_factory=HttpLimits)
    trusted_proxies: tuple[str, ...] = ()
    access_log: bool = True
    backend_keepalive: int = 32
    http2: bool = True  # https: offer h2 by ALPN
    h2c: bool = False  # http: accept HTTP/2 with prior knowledge

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)


class Proto(StrEnum):
    """What a listener serves, and so which part of the datapath serves it: TCP flows
    and UDP flows at L4, HTTP and HTTPS requests at L7."""

    TCP = "tcp"
    UDP = "udp"
    HTTP = "http"
    HTTPS = "https"


@dataclass(frozen=True)
class Listener:
    """An address edgelb accepts on, with the pool of backends it balances across."""

    name: str
    bind: tuple[str, int]
    protocol: Proto = Proto.TCP
    balance: str = "round_robin"
    backends: tuple[Backend, ...] = ()
    health: HealthSpec = field(default_factory=HealthSpec)
    passive: PassiveSpec = field(default_factory=PassiveSpec)
    timeouts: Timeouts = field(default_factory=Timeouts)
    proxy_protocol: str = "none"
    max_flows: int = 65536
    max_connections: int = 0
    backlog: int = 4096
    http: HttpSpec | None = None
    # Non-zero: every backend is reached on this port (a Service's nodePort on each of
    # the nodes), so that all nodePort listeners can share one tuple of node Backends.
    backend_port: int = 0
    # tcp and udp: who moves the packets. ``auto``: the kernel (nftables DNAT and
    # conntrack) where it can serve the listener's features, else user space.
    datapath: str = "auto"
    # kernel: source NAT towards the backends (their replies come back through this box);
    # False keeps the client's address, for backends that route back through the box.
    snat: bool = True
    # Learned from a cluster: the nodes not among the backends for a reason an operator
    # should see (no InternalIP of the VIP's family), as "node: why".
    left_out: tuple[str, ...] = ()

    @property
    def bind_text(self) -> str:
        host, port = self.bind
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def socket_key(self) -> tuple[str, str, int]:
        """What identifies the listening socket: a reload keeps sockets whose key stays."""
        return (self.protocol, self.bind[0], self.bind[1])

    @property
    def transport(self) -> str:
        """The socket type under the protocol: ``udp`` or ``tcp``."""
        return "udp" if self.protocol == Proto.UDP else "tcp"

    def backend_key(self, b: Backend) -> str:
        """The backend's identity within this listener: its address."""
        if not self.backend_port:
            return b.key
        return f"[{b.host}]:{self.backend_port}" if ":" in b.host else \
            f"{b.host}:{self.backend_port}"

    def backend_address(self, b: Backend) -> tuple[str, int]:
        return (b.host, self.backend_port or b.port)

    @property
    def kernel_refusal(self) -> str | None:
        """Why the kernel datapath cannot serve this listener (it stays in user space),
        or None when it can."""
        if self.protocol not in (Proto.TCP, Proto.UDP):
            return f"{self.protocol} is served in user space"
        if self.proxy_protocol != "none":
            return "proxy_protocol needs user space"
        if self.balance not in KERNEL_BALANCERS:
            return f"balance {self.balance} has no kernel form"
        if self.max_connections:
            return "max_connections needs user space"
        host = self.bind[0]
        if ipaddress.ip_address(host).is_unspecified:
            return "a wildcard bind needs user space"
        family = ipaddress.ip_address(host).version
        if any(ipaddress.ip_address(b.host).version != family for b in self.backends):
            return "backends of the other IP family need user space"
        return None

    def no_healthy_backend(self, down: Collection[tuple[str, str]]) -> bool:
        """Every actively checked backend is down (False without active checks)."""
        keys = [k for k, _, _ in self.checked()]
        return bool(keys) and all((self.name, k) in down for k in keys)

    def checked(self) -> list[tuple[str, Backend, HealthSpec]]:
        """The backends under active health checks, with their key within this listener
        (``pool/address`` for HTTP pools) and the spec; none when checks are off."""
        if self.http is None:
            if self.health.type == "none":
                return []
            return [(self.backend_key(b), Backend(b.host, self.backend_port or b.port),
                     self.health) for b in self.backends]
        return [(f"{p.name}/{b.key}", b, p.health)
                for p in self.http.pools if p.health.type != "none" for b in p.backends]


# An address pool larger than this is refused: IPAM lists its addresses.
MAX_POOL = 1 << 20


def pool_addresses(text: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses of an address pool: ``192.0.2.0/28`` (all its addresses but network
    and broadcast for IPv4 wider than /31), ``192.0.2.10-192.0.2.20``, or one address.
    Raises ValueError for anything else."""
    text = text.strip()
    if "-" in text:
        lo_text, hi_text = (t.strip() for t in text.split("-", 1))
        lo, hi = ipaddress.ip_address(lo_text), ipaddress.ip_address(hi_text)
        if lo.version != hi.version or int(hi) < int(lo):
            raise ValueError(f"{text!r} is not a range low-high of one IP version")
        if int(hi) - int(lo) > MAX_POOL:
            raise ValueError(f"{text!r} is too large a range")
        return [ipaddress.ip_address(int(lo) + i) for i in range(int(hi) - int(lo) + 1)]
    net = ipaddress.ip_network(text, strict=False)
    if net.num_addresses > MAX_POOL:
        raise ValueError(f"{text!r} is too large a pool")
    if net.version == 4 and net.prefixlen < 31:
        return list(net.hosts())
    return list(net)


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how to learn from a Kubernetes cluster (the ``cluster:`` section)."""

    kubeconfig: str | None = None  # None: in-cluster service account
    context: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    load_balancer_class: str = "edgelb.io/slb"
    default_class: bool = False  # also serve LoadBalancer services without a class
    ingress_class: str = "edgelb"
    address_pools: tuple[str, ...] = ()
    # Where Ingress routes are served: addresses of either family (empty: not served).
    ingress_http: tuple[tuple[str, int], ...] = ()
    ingress_https: tuple[tuple[str, int], ...] = ()
    ingress_h2c: bool = False  # the http addresses also take HTTP/2 (prior knowledge)
    direct_endpoints: bool = False
    # A VIP whose family a node has no InternalIP of forwards to its other one.
    cross_family: bool = False
    tls_dir: str = "/run/edgelb/tls"
    debounce: float = 0.1
    resync: float = 0.0  # 0: never re-list unless a watch fails


@dataclass(frozen=True)
class BgpPeer:
    """A BGP neighbour of this box (the upstream router), as BIRD peers with it."""

    address: str = ""
    asn: int = 0
    bfd: bool = False
    password: str = ""
    hold_time: float = 9.0
    multihop: int = 0  # 0: directly connected; else the TTL to reach it
    port: int = 179
    source: str = ""  # this box's address towards it ("": BIRD picks)


@dataclass(frozen=True)
class BgpAnnounce:
    """Attributes of the VIPs within ``prefix`` (a pool's range, or one VIP)."""

    prefix: str = ""
    communities: tuple[str, ...] = ()
    local_pref: int = 0  # 0: not set


@dataclass(frozen=True)
class HaSpec:
    """Who leads: ``standalone`` (this box always), ``lease`` (a coordination.k8s.io
    Lease in the cluster), ``vrrp`` (the VIPs on the master), or ``bgp`` (every box
    serves, each announcing the VIPs it serves well to its routers through BIRD). The
    leader writes status."""

    mode: str = "standalone"
    identity: str = ""
    lease_name: str = "edgelb"
    lease_namespace: str = "kube-system"
    lease_duration: float = 15.0
    # vrrp mode
    interface: str = ""
    vrid: int = 51
    priority: int = 100
    advert_interval: float = 1.0
    preempt: bool = True
    preempt_delay: float = 0.0
    vips: tuple[str, ...] = ()
    unicast_peers: tuple[str, ...] = ()
    garp_count: int = 3
    garp_interval: float = 0.1
    # While master, announce again this often (0: never): after a split brain heals, the
    # hosts the other master announced itself to come back within this time.
    garp_refresh: float = 10.0
    # Tracking: each failing condition lowers the priority by ``track_weight``.
    track_listeners: tuple[str, ...] = ()  # failing: no backend of it is healthy
    track_api_timeout: float = 0.0  # failing: the cluster API unreachable this long
    track_weight: int = 50
    # bgp mode
    asn: int = 0
    router_id: str = ""
    peers: tuple[BgpPeer, ...] = ()
    communities: tuple[str, ...] = ()
    local_pref: int = 0
    announce: tuple[BgpAnnounce, ...] = ()
    bfd_interval: float = 0.1
    bfd_multiplier: int = 3
    withdraw_wait: float = 2.0  # after withdrawing, before draining: the routers move
    bird_binary: str = "bird"
    birdc_binary: str = "birdc"
    bird_directory: str = "/run/edgelb/bird"
    bird_include: tuple[str, ...] = ()


DATAPATHS = ("auto", "kernel", "user")


@dataclass(frozen=True)
class KernelSpec:
    """The kernel datapath (the ``kernel:`` section). ``snat_addresses``: the source
    address of source NAT towards the backends, one per family (a floating address that
    moves with the VIPs, so that the backends' replies find the new master after a
    failover); none: the outgoing interface's address (masquerade). ``conntrack_sync``:
    the interface conntrackd replicates flows to the peer box over (vrrp mode)."""

    table: str = "edgelb"
    snat_addresses: tuple[str, ...] = ()
    conntrack_sync: str = ""

    def snat_address(self, family: int) -> str | None:
        """The configured source NAT address of IP ``family`` (4 or 6), if any."""
        return next((a for a in self.snat_addresses
                     if ipaddress.ip_address(a).version == family), None)


@dataclass(frozen=True)
class ControlSpec:
    """The control API (the ``control:`` section): a Unix socket whose callers get a role
    from their groups, and an audit log of every action."""

    socket: str = "/run/edgelb/control.sock"
    group: str = "edgelb"  # the socket's group (mode 0660); kept as is if it does not exist
    audit_log: str = "/var/log/edgelb/audit.jsonl"
    # Drained, disabled and re-weighted backends survive a restart when this is set.
    state_file: str = ""
    admin_group: str = "edgelb-admins"
    operator_group: str = "edgelb-operators"
    viewer_group: str = "edgelb-viewers"


@dataclass(frozen=True)
class AccessLogSpec:
    """Where the access log goes (the ``access_log:`` section; each HTTP listener's
    ``access_log`` turns its lines on). Requests append preformatted lines to a buffer
    of ``buffer`` bytes; a tick every ``flush`` seconds writes it, off the event loop,
    to ``target``: ``stderr`` (the journal), ``syslog`` (/dev/log) or a file path. What
    does not fit is dropped and counted, never waited for."""

    target: str = "stderr"
    buffer: int = 65536
    flush: float = 1.0


@dataclass(frozen=True)
class Snapshot:
    """Everything the datapath needs, immutable, versioned and content-hashed."""

    version: int
    listeners: tuple[Listener, ...]
    workers: int = 1
    drain_timeout: float = 30.0
    metrics_bind: tuple[str, int] | None = None
    cluster: ClusterSpec | None = None
    ha: HaSpec = field(default_factory=HaSpec)
    control: ControlSpec = field(default_factory=ControlSpec)
    # A reload to a file without listeners stops them all only when the file says so.
    allow_no_listeners: bool = False
    kernel: KernelSpec = field(default_factory=KernelSpec)
    access_log: AccessLogSpec = field(default_factory=AccessLogSpec)

    @functools.cached_property
    def digest(self) -> str:
        """A short hash of the content (not the version): equal digests forward alike.
        A tuple of backends shared by many listeners (the nodes) is hashed once."""
        h = hashlib.sha256(repr((self.workers, self.drain_timeout, self.metrics_bind,
                                 self.cluster, self.ha, self.kernel,
                                 self.access_log)).encode())
        seen: dict[int, bytes] = {}
        for lst in self.listeners:
            b = seen.get(id(lst.backends))
            if b is None:
                b = hashlib.sha256(repr(lst.backends).encode()).digest()
                seen[id(lst.backends)] = b
            h.update(repr(replace(lst, backends=())).encode())
            h.update(b)
        return h.hexdigest()[:12]

    def listener(self, name: str) -> Listener | None:
        return next((lst for lst in self.listeners if lst.name == name), None)
