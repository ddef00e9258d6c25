"""The datapath of one process: it owns listening sockets (SO_REUSEPORT, so N workers can
each hold their own), forwards TCP and UDP flows, and swaps Snapshots atomically.

Decisions (which backend, is it usable) come from the pure balance and health modules;
this module only moves bytes and keeps the books.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..model import Backend, BackendTls, Listener, PassiveSpec, Snapshot, TlsCert
from . import http1, proxyproto
from .balance import Balancer, make_balancer
from .flows import BackendStats, Flow, FlowTable, ListenerStats
from .health import PassiveState
from .l7 import HttpConnection, IdleUpstream, Site
from .relay import HAVE_SPLICE, Relay
from .routing import RouteTable
from .tls import client_context, server_context

log = logging.getLogger("edgelb.datapath")

TIMER_TICK = 0.1  # the granularity of HTTP timeouts, in seconds
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)


class Cuttable(Protocol):
    scope: trio.CancelScope

    def cut_at(self, deadline: float) -> None: ...


@dataclass
class BackendRuntime:
    """A backend as one worker sees it, carried across Snapshots by (listener, address)."""

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

    def close_idle(self) -> None:
        for conn in self.idle:
            conn.wire.close()
        self.idle.clear()

    def usable(self, now: float) -> bool:
        return self.up and not self.removed and not self.passive.ejected(now)

    def connect_failed(self, listener: str, error: BaseException) -> None:
        """A connect (or TLS handshake) to this backend failed: counted, and after enough
        in a row, ejected for a backoff (logged once per ejection)."""
        self.stats.connect_failures += 1
        if self.passive.failure(trio.current_time()):
            why = getattr(error, "strerror", None) or (
                "timeout" if isinstance(error, trio.TooSlowError) else type(error).__name__)
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
class Pool:
    """A Listener's backends and balancer as of one Snapshot."""

    listener: Listener
    balancer: Balancer
    # Runtime state per backend index, made on first use (None until then): a cluster's
    # nodePort listeners have every node as a backend, most of them never used by a
    # given worker, and services x nodes records would not fit in memory.
    brs: list[BackendRuntime | None]
    stats: ListenerStats
    make: Callable[[int], BackendRuntime]
    name: str = ""  # the HTTP pool's name; "" for an L4 listener's own backends
    tls_spec: BackendTls | None = None
    active: _ActiveView = field(init=False)

    def __post_init__(self) -> None:
        self.active = _ActiveView(self.brs)

    def runtime(self, i: int) -> BackendRuntime:
        br = self.brs[i]
        if br is None:
            br = self.brs[i] = self.make(i)
        return br

    def pick(self, key: bytes, tried: set[int], now: float) -> int | None:
        avail = [i for i, br in enumerate(self.brs)
                 if i not in tried and (br is None or br.usable(now))]
        return self.balancer.pick(avail, key, self.active)


@dataclass
class _Bound:
    listener: Listener
    sock: trio.socket.SocketType
    scope: trio.CancelScope


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4096


def open_listener_socket(lst: Listener) -> trio.socket.SocketType:
    """A bound (and for TCP, listening) socket with SO_REUSEPORT, raising OSError."""
    host, port = lst.bind
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if lst.transport == "tcp" else socket.SOCK_DGRAM
    sock = trio.socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # A VIP may be added after we bind (HA promotion); freebind lets us bind first.
        # (Python 3.11's socket module lacks the constants: Linux's values.)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        # trio's bind is async only for name resolution; the address is a literal, so
        # the stdlib socket binds it directly and this stays a plain function.
        sock._sock.bind((host, port))  # type: ignore[attr-defined]
        if kind == socket.SOCK_STREAM:
            sock.listen(min(lst.backlog, _somaxconn()))
    except BaseException:
        sock.close()
        raise
    return sock


class Worker:
    """Serves one Snapshot at a time inside a trio nursery."""

    def __init__(self, nursery: trio.Nursery, worker_id: int = 0,
                 use_splice: bool = HAVE_SPLICE) -> None:
        self.nursery = nursery
        self.worker_id = worker_id
        self.use_splice = use_splice
        self.snapshot: Snapshot | None = None
        self.pools: dict[tuple[str, str, int], Pool] = {}
        self.bound: dict[tuple[str, str, int], _Bound] = {}
        self.backends: dict[tuple[str, str], BackendRuntime] = {}
        self.with_runtimes: set[str] = set()  # listeners that have any runtime state
        self._pairs: dict[int, tuple[tuple[Backend, ...], list[tuple[str, int]]]] = {}
        self.stats: dict[str, ListenerStats] = {}
        self.flows: dict[int, Flow] = {}
        self.health_down: set[tuple[str, str]] = set()
        self.idle = trio.Event()
        self.idle.set()
        self.sites: dict[tuple[str, str, int], Site] = {}
        self.http_conns: set[HttpConnection] = set()
        self.http_open: dict[str, int] = {}
        self.draining = False
        self.http_timer = False
        # TLS contexts by certificate fingerprints: a reload that keeps the certificates
        # keeps the contexts (and their session caches).
        self.tls_contexts: dict[tuple[str, ...], ssl.SSLContext] = {}

    # -- Snapshots -----------------------------------------------------------------

    def apply(self, snap: Snapshot, strict: bool = False) -> list[str]:
        """Put ``snap`` in force: new flows use it at once, existing flows keep theirs, and
        flows to backends it no longer has drain until ``drain_timeout``. Returns the
        errors of listeners that could not be bound (with ``strict``, raises the first)."""
        errors: list[str] = []
        now = trio.current_time()
        pools: dict[tuple[str, str, int], Pool] = {}
        sites: dict[tuple[str, str, int], Site] = {}
        keep: set[tuple[str, str]] = set()
        self._pairs = {}
        for lst in snap.listeners:
            stats = self.stats.setdefault(lst.name, ListenerStats())
            if lst.http is None:
                pools[lst.socket_key] = self._pool(lst, "", lst.backends, lst.balance,
                                                   lst.passive, lst.health.type != "none",
                                                   stats, keep)
                continue
            site_pools: dict[str, Pool] = {}
            backend_contexts = {}
            for p in lst.http.pools:
                site_pools[p.name] = self._pool(lst, p.name + "/", p.backends, p.balance,
                                                p.passive, p.health.type != "none", stats,
                                                keep, p.name, p.tls)
                if p.tls is not None:
                    backend_contexts[p.name] = client_context(p.tls)
            sites[lst.socket_key] = Site(
                lst, RouteTable(lst.http.routes, lst.http.default_pool), site_pools, stats,
                self._tls_context(lst.http.tls) if lst.protocol == "https" else None,
                backend_contexts,
                tuple(ipaddress.ip_network(n) for n in lst.http.trusted_proxies))

        for k, br in list(self.backends.items()):
            if k not in keep:
                br.removed = True
                br.close_idle()
                for flow in br.flows.values():
                    flow.cut_at(now + snap.drain_timeout)
                if not br.flows:
                    del self.backends[k]

        wanted = {lst.socket_key: lst for lst in snap.listeners}
        for key, bound in list(self.bound.items()):
            if key not in wanted:
                bound.scope.cancel()
                bound.sock.close()
                del self.bound[key]
        for key, lst in wanted.items():
            if key in self.bound:
                self.bound[key].listener = lst
                continue
            try:
                sock = open_listener_socket(lst)
            except OSError as e:
                msg = f"listener {lst.name}: cannot bind {lst.bind_text}: {e.strerror}"
                if strict:
                    raise OSError(e.errno, msg) from e
                log.error("%s", msg)
                errors.append(msg)
                continue
            bound = _Bound(lst, sock, trio.CancelScope())
            self.bound[key] = bound
            if lst.http is not None and not self.http_timer:
                self.http_timer = True
                self.nursery.start_soon(self._expire_http)
            serve = self._serve_udp if lst.protocol == "udp" else self._serve_tcp
            self.nursery.start_soon(serve, bound)
        self.pools = pools
        self.sites = sites
        self.snapshot = snap
        self._pairs = {}
        return errors

    def _pool(self, lst: Listener, prefix: str, backends: tuple[Backend, ...], balance: str,
              passive: PassiveSpec, eager: bool, stats: ListenerStats,
              keep: set[tuple[str, str]], name: str = "",
              tls: BackendTls | None = None) -> Pool:
        """A pool as of this Snapshot, with the runtime state carried over (by listener
        and key, where the passive spec is unchanged) for the backends that have one.
        Health-checked pools get theirs at once (a check may mark one down); the others
        on first use."""
        listener = lst.name

        def key_of(b: Backend) -> str:
            return prefix + (b.key if prefix else lst.backend_key(b))

        def make(i: int) -> BackendRuntime:
            b = backends[i]
            key = key_of(b)
            k = (listener, key)
            br = self.backends.get(k)
            if br is None or br.passive.spec != passive:
                old = br
                br = BackendRuntime(b, PassiveState(passive),
                                    stats.backends.setdefault(key, BackendStats()))
                if old is not None:
                    br.flows = old.flows
                    br.idle = old.idle
            br.backend, br.key = b, key
            br.address = b.address if prefix else lst.backend_address(b)
            br.removed = False
            br.up = k not in self.health_down
            self.backends[k] = br
            self.with_runtimes.add(listener)
            return br

        brs: list[BackendRuntime | None] = [None] * len(backends)
        if eager or listener in self.with_runtimes:
            for i, b in enumerate(backends):
                k = (listener, key_of(b))
                if eager or k in self.backends:
                    brs[i] = make(i)
                    keep.add(k)
        pairs = self._pairs.get(id(backends))
        if pairs is None or pairs[0] is not backends:
            # A tuple of nodes shared by thousands of listeners is described once.
            pairs = (backends, [(b.key, b.weight) for b in backends])
            self._pairs[id(backends)] = pairs
        balancer = make_balancer(balance, pairs[1])
        return Pool(lst, balancer, brs, stats, make, name, tls)

    def _tls_context(self, certs: tuple[TlsCert, ...]) -> ssl.SSLContext:
        key = tuple(f"{c.fingerprint}:{','.join(c.hosts)}" for c in certs)
        ctx = self.tls_contexts.get(key)
        if ctx is None:
            ctx = server_context(certs)
            self.tls_contexts[key] = ctx
        return ctx

    def set_health(self, down: set[tuple[str, str]]) -> None:
        """Active health verdicts from the control process: (listener, backend key) down."""
        self.health_down = set(down)
        for k, br in self.backends.items():
            br.up = k not in down

    def flow_rows(self) -> list[tuple[Any, ...]]:
        """Every open flow as a row of the control API's flow table (``FLOW_FIELDS``):
        plain tuples, cheap to send to the control process and to sort there."""
        now = trio.current_time()
        vips = {lst.name: lst.bind_text for lst in self.snapshot.listeners} \
            if self.snapshot else {}
        wid = self.worker_id
        return [(f"{wid}.{f.id}", f.listener, f.protocol,
                 f"[{f.client[0]}]:{f.client[1]}" if ":" in f.client[0]
                 else f"{f.client[0]}:{f.client[1]}", vips.get(f.listener, ""), f.backend,
                 f.bytes_in, f.bytes_out, round(now - f.started, 1), f.state)
                for f in list(self.flows.values())]

    def stop_accepting(self) -> None:
        for bound in self.bound.values():
            bound.scope.cancel()
            bound.sock.close()
        self.bound.clear()

    async def drain(self, deadline: float) -> None:
        """Stop accepting and wait for flows to end, cutting them at ``deadline``. HTTP
        connections close between requests: idle ones at once, busy ones after their
        response (which says ``Connection: close``)."""
        self.stop_accepting()
        self.draining = True
        for hc in list(self.http_conns):
            if hc.phase in ("idle", "first") and hc.deadline != math.inf:
                hc.expire("drain")
        with trio.move_on_at(deadline):
            await self.idle.wait()
        for br in self.backends.values():
            for flow in br.flows.values():
                flow.scope.cancel()

    # -- TCP -------------------------------------------------------------------------

    async def _serve_tcp(self, bound: _Bound) -> None:
        raw: socket.socket = bound.sock._sock  # type: ignore[attr-defined]
        accepted = 0
        with bound.scope:
            while True:
                # Accept until the backlog is empty before parking, as nginx's
                # multi_accept: a burst of connects costs one wake-up, not one each.
                try:
                    sock, client = raw.accept()
                except BlockingIOError:
                    sock = None
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        # Out of descriptors: back off instead of spinning on accept.
                        log.warning("accept on %s: %s", bound.listener.bind_text, e.strerror)
                        await trio.sleep(0.1)
                        continue
                    if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue  # the client gave up before we accepted
                    raise
                if sock is None:
                    accepted = 0
                    await trio.lowlevel.wait_readable(bound.sock)
                    continue
                conn = trio.socket.from_stdlib_socket(sock)
                key = bound.listener.socket_key
                pool = self.pools.get(key)
                if pool is not None:
                    self.nursery.start_soon(self._tcp_flow, conn, client, pool)
                elif (site := self.sites.get(key)) is not None:
                    self.nursery.start_soon(self._http_flow, conn, client, site)
                else:
                    conn.close()
                    continue
                accepted += 1
                if accepted >= 64:
                    accepted = 0
                    await trio.lowlevel.checkpoint()

    def _begin(self, flow: Flow) -> None:
        self.flows[flow.id] = flow
        self.idle = trio.Event() if self.idle.is_set() else self.idle

    def _end(self, flow: Flow) -> None:
        self.flows.pop(flow.id, None)
        if not self.flows:
            self.idle.set()

    async def _tcp_flow(self, conn: trio.socket.SocketType, client: tuple[str, int],
                        pool: Pool) -> None:
        lst = pool.listener
        stats = pool.stats
        stats.accepted += 1
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if lst.max_connections and sum(pool.active) >= lst.max_connections:
                stats.over_limit += 1
                return
            flow = Flow(lst.name, "tcp", (client[0], client[1]), "", trio.current_time())
            self._begin(flow)
            try:
                picked = await self._connect(pool, client, conn)
                if picked is None:
                    # Every backend is down or refused: close at once rather than leave
                    # the client waiting for a timeout.
                    stats.no_backend += 1
                    return
                br, upstream = picked
                with upstream:
                    await self._relay(flow, br, conn, upstream, lst)
            finally:
                self._end(flow)

    async def _expire_http(self) -> None:
        """The HTTP timeouts, for every connection at once: a tick scans the waits that
        connections registered and ends those past their deadline (nginx and HAProxy
        keep timers the same way, off the per-request path)."""
        while True:
            await trio.sleep(TIMER_TICK)
            now = time.monotonic()
            for hc in [hc for hc in self.http_conns if hc.deadline <= now]:
                hc.expire()

    async def _http_flow(self, conn: trio.socket.SocketType, client: tuple[str, int],
                         site: Site) -> None:
        lst = site.listener
        site.stats.accepted += 1
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            open_now = self.http_open.get(lst.name, 0)
            if lst.max_connections and open_now >= lst.max_connections:
                site.stats.over_limit += 1
                try:
                    conn._sock.send(http1.error_response(503))  # type: ignore[attr-defined]
                except OSError:
                    pass
                return
            self.http_open[lst.name] = open_now + 1
            flow = Flow(lst.name, lst.protocol, (client[0], client[1]), "",
                        trio.current_time(), state="established")
            self._begin(flow)
            hc = HttpConnection(self, site, conn, (client[0], client[1]), flow)
            self.http_conns.add(hc)
            try:
                await hc.serve()
            finally:
                self.http_conns.discard(hc)
                self.http_open[lst.name] -= 1
                self._end(flow)

    async def _connect(self, pool: Pool, client: tuple[str, int],
                       conn: trio.socket.SocketType) -> tuple[BackendRuntime,
                                                             trio.socket.SocketType] | None:
        lst = pool.listener
        key = client[0].encode()
        tried: set[int] = set()
        while True:
            now = trio.current_time()
            i = pool.pick(key, tried, now)
            if i is None:
                return None
            tried.add(i)
            br = pool.runtime(i)
            family = socket.AF_INET6 if ":" in br.backend.host else socket.AF_INET
            up = trio.socket.socket(family, socket.SOCK_STREAM)
            try:
                up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with trio.fail_after(lst.timeouts.connect):
                    await up.connect(br.address)
                if lst.proxy_protocol != "none":
                    header = proxyproto.header(lst.proxy_protocol, client, conn.getsockname())
                    await up.send(header)
            except (OSError, trio.TooSlowError) as e:
                up.close()
                br.connect_failed(lst.name, e)
                continue
            br.passive.success()
            return br, up

    async def _relay(self, flow: Flow, br: BackendRuntime, conn: trio.socket.SocketType,
                     upstream: trio.socket.SocketType, lst: Listener) -> None:
        st = br.stats

        def on_bytes(direction: int, n: int) -> None:
            if direction == 0:
                flow.bytes_in += n
                st.bytes_in += n
            else:
                flow.bytes_out += n
                st.bytes_out += n

        relay = Relay(conn, upstream, lst.timeouts.idle, on_bytes, self.use_splice)
        flow.backend = br.key
        flow.state = "established"
        st.active += 1
        st.connections += 1
        br.flows[flow.id] = relay
        if br.removed:
            relay.cut_at(trio.current_time() + (
                self.snapshot.drain_timeout if self.snapshot else 0))
        try:
            await relay.run()
        finally:
            st.active -= 1
            br.flows.pop(flow.id, None)
            k = (lst.name, br.key)
            if br.removed and not br.flows and self.backends.get(k) is br:
                del self.backends[k]

    # -- UDP -------------------------------------------------------------------------

    async def _serve_udp(self, bound: _Bound) -> None:
        lst = bound.listener
        table: FlowTable[_UdpFlow] = FlowTable(lst.max_flows, lst.timeouts.idle)
        last_evict_log = -1e9
        with bound.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._udp_expiry, table, bound)
                while True:
                    data, client = await bound.sock.recvfrom(65535)
                    client = (client[0], client[1])
                    now = trio.current_time()
                    uf = table.get(client, now)
                    if uf is None:
                        pool = self.pools.get(bound.listener.socket_key)
                        if pool is None:
                            continue
                        uf = await self._udp_open(pool, client)
                        if uf is None:
                            pool.stats.no_backend += 1
                            continue
                        evicted = table.add(client, uf, now)
                        if evicted:
                            pool.stats.udp_evicted += len(evicted)
                            if now - last_evict_log >= 10:
                                # Once per interval: a flood would otherwise flood the log.
                                log.warning("listener %s: max_flows %d reached, evicting "
                                            "oldest flows (%d so far)", lst.name,
                                            lst.max_flows, pool.stats.udp_evicted)
                                last_evict_log = now
                            for old in evicted:
                                old.close()
                        nursery.start_soon(self._udp_return, uf, table, bound)
                    try:
                        await uf.upstream.send(data)
                    except OSError:
                        uf.close()
                        table.remove(client, uf)
                        continue
                    uf.flow.bytes_in += len(data)
                    uf.br.stats.bytes_in += len(data)

    async def _udp_open(self, pool: Pool, client: tuple[str, int]) -> _UdpFlow | None:
        i = pool.pick(client[0].encode(), set(), trio.current_time())
        if i is None:
            return None
        br = pool.runtime(i)
        family = socket.AF_INET6 if ":" in br.backend.host else socket.AF_INET
        up = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await up.connect(br.address)
        except OSError:
            up.close()
            br.stats.connect_failures += 1
            return None
        flow = Flow(pool.listener.name, "udp", client, br.key, trio.current_time(),
                    state="established")
        br.stats.active += 1
        br.stats.connections += 1
        pool.stats.accepted += 1
        uf = _UdpFlow(flow, br, up, trio.CancelScope())
        self._begin(flow)
        br.flows[flow.id] = uf
        return uf

    async def _udp_return(self, uf: _UdpFlow, table: FlowTable[_UdpFlow],
                          bound: _Bound) -> None:
        try:
            with uf.scope:
                while True:
                    try:
                        data = await uf.upstream.recv(65535)
                    except OSError:
                        # ECONNREFUSED from an ICMP port unreachable: the flow is dead.
                        break
                    await bound.sock.sendto(data, uf.flow.client)
                    uf.flow.bytes_out += len(data)
                    uf.br.stats.bytes_out += len(data)
                    table.touch(uf.flow.client, trio.current_time())
        finally:
            table.remove(uf.flow.client, uf)
            uf.close()
            uf.br.flows.pop(uf.flow.id, None)
            self._end(uf.flow)

    async def _udp_expiry(self, table: FlowTable[_UdpFlow], bound: _Bound) -> None:
        tick = max(0.05, min(1.0, table.idle / 4))
        while True:
            await trio.sleep(tick)
            for uf in table.expire(trio.current_time()):
                uf.close()


@dataclass
class _UdpFlow:
    flow: Flow
    br: BackendRuntime
    upstream: trio.socket.SocketType
    scope: trio.CancelScope
    closed: bool = False

    def cut_at(self, deadline: float) -> None:
        self.scope.deadline = min(self.scope.deadline, deadline)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.br.stats.active -= 1
            self.scope.cancel()
            self.upstream.close()
