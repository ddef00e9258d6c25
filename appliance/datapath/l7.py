"""The HTTP/1.1 reverse proxy's I/O: bytes between the sockets and the ``http1``
connection machines, which decide everything about the protocol.

One task per client connection reads a request, routes it, takes a keep-alive connection
to a backend from the pool (or opens one), streams the body across, streams the response
back, and loops for the next request. Pipelined requests wait in the machine's buffer and
are answered in order. Bodies are never held whole: each read is passed on before the next.

Timeouts are not a cancel scope per wait (which cost more than the read it guarded): each
connection stores the phase it waits in and that wait's deadline, and one timer task per
worker scans them every ``TIMER_TICK`` and ends the expired ones, as nginx and HAProxy
keep timers off the per-request path.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..model import Listener
from ..views import ListenerStats
from . import http1, wire
from .backends import BackendRuntime, BackendSet, IdleUpstream
from .connect import Upstream, connect_to_pool
from .errors import (
    BackendError,
    BackendGone,
    BackendUnreachable,
    ClientError,
    ClientGone,
    HttpError,
)
from .flows import Flow, FlowBook
from .http1 import CHUNKED, END_OF_MESSAGE, NEED_DATA, NO_BODY, Phase, Request, Response
from .routing import RouteTable
from .wire import PlainWire, TlsWire, Wire

log = logging.getLogger("edgelb.datapath")
access = logging.getLogger("edgelb.access")

TIMER_TICK = 0.1  # the granularity of HTTP timeouts, in seconds


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


class HttpProxy:
    """Every HTTP connection of one worker: the Sites in force, the timer, the drain."""

    def __init__(self, book: FlowBook) -> None:
        self.book = book
        self.sites: dict[tuple[str, str, int], Site] = {}
        self.conns: set[HttpConnection] = set()
        self.open: dict[str, int] = {}  # open client connections per listener
        self.draining = False
        self.drain_timeout = 30.0

    async def serve(self, sock: socket.socket, client: tuple[str, int], site: Site) -> None:
        """One client connection, until it closes."""
        lst = site.listener
        site.stats.accepted += 1
        try:
            open_now = self.open.get(lst.name, 0)
            if lst.max_connections and open_now >= lst.max_connections:
                site.stats.over_limit += 1
                try:
                    sock.send(http1.error_response(503))
                except OSError:
                    pass
                return
            self.open[lst.name] = open_now + 1
            flow = Flow(lst.name, lst.protocol, client, "", trio.current_time(),
                        state="established")
            self.book.begin(flow)
            hc = HttpConnection(self, site, sock, client, flow)
            self.conns.add(hc)
            try:
                await hc.serve()
            finally:
                self.conns.discard(hc)
                self.open[lst.name] -= 1
                self.book.end(flow)
        finally:
            wire.close(sock)

    async def run_timer(self) -> None:
        """The HTTP timeouts of every connection at once (see the module's docstring)."""
        while True:
            await trio.sleep(TIMER_TICK)
            now = time.monotonic()
            for hc in [hc for hc in self.conns if hc.deadline <= now]:
                hc.expire()

    def drain(self) -> None:
        """Connections close between requests from now on: idle ones at once, busy ones
        after their response (which says ``Connection: close``)."""
        self.draining = True
        for hc in list(self.conns):
            if hc.phase in (Phase.IDLE, Phase.FIRST) and hc.deadline != math.inf:
                hc.expire(Phase.DRAIN)


class _Closing(Exception):
    """The client connection ends here (after a response edgelb made, or a cut)."""


class _Stale(Exception):
    """A reused keep-alive backend connection was closed under us before answering."""


class _Exchange:
    """The bookkeeping of one request: what the access log and counters need."""

    __slots__ = ("backend", "bytes_in", "bytes_out", "connect_ms", "started", "status")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.backend = "-"
        self.connect_ms = -1.0


class Cut:
    """Lets the worker cut a connection that is in a request to a removed backend."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope

    def cut_at(self, deadline: float) -> None:
        self.scope.deadline = min(self.scope.deadline, deadline)


class HttpConnection:
    """One client connection, served request after request."""

    def __init__(self, proxy: HttpProxy, site: Site, sock: socket.socket,
                 client: tuple[str, int], flow: Flow) -> None:
        self.proxy = proxy
        self.site = site
        self.sock = sock
        self.client = client
        self.client_key = client[0].encode()
        self.flow = flow
        self.key = site.listener.socket_key
        self.proto = "https" if site.listener.protocol == "https" else "http"
        assert site.listener.http is not None
        self.conn = http1.ServerConnection(site.listener.http.limits)
        self.wire: Wire = PlainWire(sock)
        self.cut = Cut(trio.CancelScope())
        # The wait the timer watches: its phase and deadline (see the module docstring).
        self.phase = Phase.FIRST
        self.deadline = math.inf
        self.expired: Phase | None = None
        self.exchange: _Exchange | None = None

    # -- timeouts --------------------------------------------------------------------

    def _arm(self, phase: Phase, seconds: float) -> None:
        self.phase = phase
        self.deadline = time.monotonic() + seconds

    def _disarm(self) -> None:
        self.deadline = math.inf

    def expire(self, why: Phase | None = None) -> None:
        """End the connection: its wait timed out (``why`` defaults to the phase it was
        in), or the worker drains. Called by the timer, never by the connection."""
        self.expired = why or self.phase
        self.deadline = math.inf
        ex = self.exchange
        if ex is not None and not ex.status and self.expired in (Phase.RESPONSE, Phase.BODY):
            ex.status = self.expired.answer
        self.cut.scope.cancel()

    # -- the request loop ------------------------------------------------------------

    async def serve(self) -> None:
        if self.site.ssl_context is not None and not await self._handshake():
            return
        try:
            # One scope for the connection's life: timeouts and the drain of a removed
            # backend cancel it, and the connection closes.
            with self.cut.scope:
                await self._serve_requests()
        except (_Closing, ClientGone):
            return
        except ClientError as e:
            await self._refuse(e)
            return
        if self.cut.scope.cancelled_caught and self.expired is not None:
            await self._expired()

    async def _handshake(self) -> bool:
        assert self.site.ssl_context is not None
        tls = TlsWire(self.sock, self.site.ssl_context, server=True)
        self.wire = tls
        with trio.move_on_after(self.site.listener.timeouts.request):
            try:
                await tls.handshake()
                return True
            except OSError:
                pass
        self.site.stats.tls_failures += 1
        return False

    async def _expired(self) -> None:
        """After a timeout: 408 for a client too slow with its request, 504 for a
        backend too slow to start its response (if nothing was sent yet), else close."""
        why = self.expired
        if why is None or why is Phase.DRAIN:
            return
        self.site.stats.timeouts += 1
        ex = self.exchange
        status = why.answer
        if why is Phase.RESPONSE and ex is not None and ex.bytes_out > 0:
            status = 0
        if status:
            self.site.stats.count_status(status)
            await self._reply_error(status, f"timeout in {why}")

    async def _serve_requests(self) -> None:
        while True:
            site = self.proxy.sites.get(self.key, self.site)
            self.site = site
            req = await self._read_request()
            if req is None:
                return
            if not await self._exchange(site, req):
                return
            self.conn.start_next_cycle()

    async def _refuse(self, e: HttpError) -> None:
        """A request refused before it was routed: counted, logged, answered, closed."""
        st = self.site.stats
        st.bad_requests += 1
        st.count_status(e.status)
        if self.site.listener.http is not None and self.site.listener.http.access_log:
            access.info('%s %s "-" %d refused: %s', self.site.listener.name,
                        self.client[0], e.status, e.reason, extra={"access": {
                            "listener": self.site.listener.name,
                            "client": self.client[0], "status": e.status,
                            "refused": e.reason}})
        await self._reply_error(e.status, e.reason)

    async def _reply_error(self, status: int, reason: str = "") -> None:
        try:
            with trio.move_on_after(1.0):
                await self.wire.send(http1.error_response(status))
        except OSError:
            pass
        if status >= 400:
            log.debug("client %s: %d %s", self.client[0], status, reason)

    async def _read_request(self) -> Request | None:
        """The next request head; None when the client closed (or idled out) between
        requests. Raises ClientError for a bad one, ClientGone mid-head."""
        conn = self.conn
        if not conn.buf:
            # Data already waiting needs no wait: the common case under load.
            try:
                ready = self.wire.try_recv()
            except OSError:
                return None
            if ready is not None:
                conn.receive_data(ready)
        timeouts = self.site.listener.timeouts
        armed: Phase | None = None
        while True:
            ev = conn.next_event()
            if ev is not NEED_DATA:
                self._disarm()
                assert isinstance(ev, Request)
                return ev
            # The request timeout runs from a request's first byte; between requests
            # the client may idle up to the keep-alive timeout.
            phase = conn.phase
            if phase is not armed:
                self._arm(phase, timeouts.keepalive if phase is Phase.IDLE
                          else timeouts.request)
                armed = phase
            try:
                data = await self.wire.recv()
            except OSError:
                return None
            conn.receive_data(data)

    async def _exchange(self, site: Site, req: Request) -> bool:
        """Serve one request; True to keep the client connection open."""
        ex = _Exchange()
        self.exchange = ex
        site.stats.requests += 1
        pool_name, route = site.table.route(req.host, req.path)
        site.stats.routes[route] = site.stats.routes.get(route, 0) + 1
        pool = site.pools.get(pool_name) if pool_name is not None else None
        try:
            if pool is None:
                keep = await self._own_response(ex, 404)
            else:
                keep = await self._proxy(site, pool, req, ex)
        except HttpError as e:
            ex.status = e.status
            await self._reply_error(e.status, e.reason)
            keep = False
        finally:
            self._account(site, req, ex)
        return keep and not self.proxy.draining

    async def _own_response(self, ex: _Exchange, status: int) -> bool:
        """Answer ``status`` ourselves; True when the connection may stay open."""
        ex.status = status
        response = self.conn.send_error(status)
        ex.bytes_out = len(response.partition(b"\r\n\r\n")[2])
        try:
            await self.wire.send(response)
        except OSError:
            return False
        return self.conn.keep_alive

    def _account(self, site: Site, req: Request, ex: _Exchange) -> None:
        site.stats.count_status(ex.status)
        self.flow.bytes_in += ex.bytes_in
        self.flow.bytes_out += ex.bytes_out
        if site.listener.http is not None and site.listener.http.access_log:
            total = (time.monotonic() - ex.started) * 1000
            access.info(
                '%s %s "%s %s%s" %d in=%d out=%d backend=%s connect=%s total=%.1fms',
                site.listener.name, self.client[0], req.method.decode(), req.host or "-",
                req.target.decode("latin-1"), ex.status, ex.bytes_in, ex.bytes_out,
                ex.backend, f"{ex.connect_ms:.1f}ms" if ex.connect_ms >= 0 else "-", total,
                extra={"access": {
                    "listener": site.listener.name, "client": self.client[0],
                    "host": req.host, "method": req.method.decode(),
                    "path": req.target.decode("latin-1"), "status": ex.status,
                    "bytes_in": ex.bytes_in, "bytes_out": ex.bytes_out,
                    "backend": ex.backend, "connect_ms": round(ex.connect_ms, 3),
                    "total_ms": round(total, 3)}})

    # -- one proxied request ---------------------------------------------------------

    async def _proxy(self, site: Site, pool: BackendSet, req: Request, ex: _Exchange) -> bool:
        # A chunked body broken from its start never reaches a backend: its first chunk
        # is read and checked before one is chosen.
        first = await self._body_event() if req.framing.kind == CHUNKED else None
        tried: set[int] = set()
        retried_stale = False
        while True:
            up = await self._upstream(site, pool, req, ex, tried)
            if up is None:
                return False
            br = up.backend
            cut = self.cut
            br.flows[id(cut)] = cut
            if br.removed:
                cut.cut_at(trio.current_time() + self.proxy.drain_timeout)
            br.stats.active += 1
            br.stats.requests += 1
            try:
                return await self._forward(site, br, up.conn, req, ex, up.reused, first)
            except _Stale:
                up.conn.close()
                # A keep-alive connection the backend had closed: the request never got
                # there, so it may go again, once, on a fresh connection.
                if retried_stale or not req.idempotent:
                    await self._own_response(ex, 502)
                    raise _Closing from None
                retried_stale = True
            except BaseException:
                up.conn.close()
                raise
            finally:
                br.stats.active -= 1
                br.flows.pop(id(cut), None)
                # The request is over: a drain deadline applies to it, not to the
                # connection's next requests (which go to backends still in the pool).
                if cut.scope.deadline != math.inf:
                    cut.scope.deadline = math.inf

    async def _upstream(self, site: Site, pool: BackendSet, req: Request, ex: _Exchange,
                        tried: set[int]) -> Upstream[Wire] | None:
        """A connection to a backend of ``pool``: a kept-alive one if there is one, else a
        new one (see ``connect_to_pool``). None after edgelb answered 502 or 503 itself."""
        keepalive = site.listener.timeouts.keepalive
        ctx = site.backend_contexts.get(pool.name)

        def reuse(br: BackendRuntime, now: float) -> Wire | None:
            ex.backend = br.key
            while br.idle:
                idle = br.idle.pop()
                w = idle.wire
                assert isinstance(w, PlainWire | TlsWire)
                if now - idle.since < keepalive and w.alive():
                    return w
                w.close()
            return None

        async def setup(sock: socket.socket, br: BackendRuntime) -> Wire:
            if ctx is None:
                return PlainWire(sock)
            tls = pool.tls
            name = tls.server_name if tls and tls.server_name else br.backend.host
            conn = TlsWire(sock, ctx, server=False, server_hostname=name)
            await conn.handshake()
            return conn

        t0 = time.monotonic()
        try:
            up = await connect_to_pool(pool, self.client_key, setup, tried=tried,
                                       retry=req.idempotent, reuse=reuse)
        except BackendUnreachable as e:
            if not e.tried:
                site.stats.no_backend += 1
            await self._own_response(ex, 502 if e.tried else 503)
            return None
        if up.reused:
            ex.connect_ms = 0.0
        else:
            up.backend.stats.connections += 1
            ex.connect_ms = (time.monotonic() - t0) * 1000
        return up

    async def _forward(self, site: Site, br: BackendRuntime, up: Wire, req: Request,
                       ex: _Exchange, reused: bool,
                       first: bytes | http1.Marker | None) -> bool:
        backend = http1.BackendConnection()
        client_ip = self.client[0]
        head = backend.send_request(req, client_ip, self.proto, site.is_trusted(client_ip))
        try:
            await up.send(head)
            if req.framing.kind != NO_BODY:
                await self._request_body(up, backend, ex, first)
        except OSError:
            if reused and req.framing.kind == NO_BODY:
                raise _Stale from None
            raise _Closing from None
        resp = await self._response_head(backend, up, req, reused and ex.bytes_in == 0)
        ex.status = resp.status
        if resp.status == 101:
            if req.upgrade is None:
                raise BackendError("101 to a request that did not ask to switch")
            await self.wire.send(self.conn.send_switch(resp))
            await self._tunnel(up, backend.trailing_data(), site.listener.timeouts.idle, ex)
            raise _Closing
        head_out = self.conn.send_response(resp, keep=not self.proxy.draining)
        if not await self._response_body(backend, up, head_out, ex):
            raise _Closing
        http = site.listener.http
        if backend.reusable and http is not None and \
                len(br.idle) < http.backend_keepalive and not br.removed:
            br.idle.append(IdleUpstream(up, trio.current_time()))
        else:
            up.close()
        return self.conn.keep_alive

    async def _body_event(self) -> bytes | http1.Marker:
        """The next piece of the request body (or its end), read as needed; a client that
        waits for 100 Continue gets it first."""
        conn = self.conn
        while True:
            ev = conn.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, bytes) or ev is END_OF_MESSAGE
                return ev
            if conn.take_continue():
                await self._send_client(http1.CONTINUE)
            self._arm(Phase.BODY, self.site.listener.timeouts.body)
            try:
                data = await self.wire.recv()
            except OSError:
                raise ClientGone from None
            self._disarm()
            conn.receive_data(data)

    async def _request_body(self, up: Wire, backend: http1.BackendConnection, ex: _Exchange,
                            ev: bytes | http1.Marker | None) -> None:
        while True:
            if ev is None:
                ev = await self._body_event()
            if ev is END_OF_MESSAGE:
                end = backend.send_end()
                if end:
                    await up.send(end)
                return
            assert isinstance(ev, bytes)
            await up.send(backend.send_data(ev))
            ex.bytes_in += len(ev)
            ev = None

    async def _response_head(self, backend: http1.BackendConnection, up: Wire, req: Request,
                             may_be_stale: bool) -> Response:
        """The backend's final response head; interim 1xx ones are passed on (a 100 only
        to a client that did not already get ours)."""
        timeout = self.site.listener.timeouts.response
        while True:
            self._arm(Phase.RESPONSE, timeout)
            try:
                ev = await self._backend_event(backend, up)
            except BackendGone:
                if may_be_stale:
                    raise _Stale from None
                raise BackendError("backend closed before responding") from None
            self._disarm()
            assert isinstance(ev, Response)
            if 100 <= ev.status < 200 and ev.status != 101:
                if ev.status != 100 or not req.expect_continue:
                    await self._send_client(self.conn.send_interim(ev))
                continue
            return ev

    async def _backend_event(self, backend: http1.BackendConnection, up: Wire) -> http1.Event:
        while True:
            ev = backend.next_event()
            if ev is not NEED_DATA:
                return ev
            try:
                data = await up.recv()
            except OSError:
                data = b""
            backend.receive_data(data)

    async def _response_body(self, backend: http1.BackendConnection, up: Wire, head: bytes,
                             ex: _Exchange) -> bool:
        """Stream the body to the client; False when it could not be delivered whole (the
        client connection must then close without a proper end)."""
        conn = self.conn
        timeout = self.site.listener.timeouts.response
        out = head
        while True:
            try:
                ev = backend.next_event()
            except (BackendError, BackendGone):
                return False
            if ev is NEED_DATA:
                if out:
                    await self._send_client(out)
                    out = b""
                self._arm(Phase.RESPONSE_BODY, timeout)
                try:
                    data = await up.recv()
                except OSError:
                    data = b""
                self._disarm()
                backend.receive_data(data)
            elif ev is END_OF_MESSAGE:
                out += conn.send_end()
                if out:
                    await self._send_client(out)
                return True
            else:
                assert isinstance(ev, bytes)
                ex.bytes_out += len(ev)
                out += conn.send_data(ev)

    async def _send_client(self, data: bytes) -> None:
        # A client that stops reading may stall a send for as long as a body may stall.
        self._arm(Phase.SEND, self.site.listener.timeouts.body)
        try:
            await self.wire.send(data)
        except OSError:
            raise _Closing from None
        self._disarm()

    async def _tunnel(self, up: Wire, rbuf: bytes, idle: float, ex: _Exchange) -> None:
        """After 101 Switching Protocols: bytes both ways until either side closes or the
        connection idles out."""
        deadline = [trio.current_time() + idle]

        async def pump(src: Wire, dst: Wire, first: bytes, count: Callable[[int], None],
                       scope: trio.CancelScope) -> None:
            try:
                if first:
                    await dst.send(first)
                    count(len(first))
                while True:
                    data = await src.recv()
                    if not data:
                        await dst.send_eof()
                        return
                    deadline[0] = trio.current_time() + idle
                    await dst.send(data)
                    count(len(data))
            except OSError:
                scope.cancel()

        def count_in(n: int) -> None:
            ex.bytes_in += n

        def count_out(n: int) -> None:
            ex.bytes_out += n

        async def idle_watch(scope: trio.CancelScope) -> None:
            # The deadline moves with every read, so an Event would not do.
            while trio.current_time() < deadline[0]:  # noqa: ASYNC110
                await trio.sleep_until(deadline[0])
            scope.cancel()

        async with trio.open_nursery() as outer:
            outer.start_soon(idle_watch, outer.cancel_scope)
            async with trio.open_nursery() as nursery:
                scope = nursery.cancel_scope
                nursery.start_soon(pump, self.wire, up, self.conn.trailing_data(), count_in,
                                   scope)
                nursery.start_soon(pump, up, self.wire, rbuf, count_out, scope)
            outer.cancel_scope.cancel()
        up.close()
