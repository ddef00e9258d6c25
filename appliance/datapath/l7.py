"""The HTTP/1.1 reverse proxy's I/O, the client's side: bytes between the client socket
and the ``http1`` machine, which decides everything about the protocol.

One task per client connection reads a request, routes it, hands it to ``forward`` (a
backend of the pool, the body across, the response back), and loops for the next
request. Pipelined requests wait in the machine's buffer and are answered in order.
Bodies are never held whole: each read is passed on before the next.

Timeouts are not a cancel scope per wait (which cost more than the read it guarded): each
connection stores the phase it waits in and that wait's deadline, and one timer task per
worker scans them every ``TIMER_TICK`` and ends the expired ones, as nginx and HAProxy
keep timers off the per-request path.
"""

from __future__ import annotations

import logging
import math
import socket
import time

import trio

from . import http1, wire
from .access import AccessLog
from .errors import ClientError, ClientGone, HttpError
from .flows import Flow, FlowBook
from .forward import Closing, Cut, Exchange, Forward
from .h2.bridge import ToH2
from .h2.messages import PREFACE
from .h2.session import H2Session
from .http1 import NEED_DATA, Phase, Request
from .site import Site
from .wire import PlainWire, TlsWire, Wire

log = logging.getLogger("edgelb.datapath")

TIMER_TICK = 0.1  # the granularity of HTTP timeouts, in seconds


class HttpProxy:
    """Every HTTP connection of one worker: the Sites in force, the timer, the drain."""

    def __init__(self, book: FlowBook, access: AccessLog,
                 nursery: trio.Nursery | None = None) -> None:
        self.book = book
        self.access = access
        self.nursery = nursery  # where connections shared by clients run (HTTP/2 upstreams)
        self.sites: dict[tuple[str, str, int], Site] = {}
        self.conns: set[HttpConnection | H2Session] = set()
        self.open: dict[str, int] = {}  # open client connections per listener
        self.draining = False
        self.drain_timeout = 30.0

    async def serve(self, sock: socket.socket, client: tuple[str, int], site: Site) -> None:
        """One client connection, until it closes."""
        lst = site.listener
        site.stats.accepted += 1
        hc: HttpConnection | None = None
        try:
            open_now = self.open.get(lst.name, 0)
            if lst.max_connections and open_now >= lst.max_connections:
                site.stats.over_limit += 1
                wire.send_now(sock, http1.error_response(503))
                return
            self.open[lst.name] = open_now + 1
            flow = Flow(lst.name, lst.protocol, client, "", trio.current_time(),
                        state="established")
            self.book.begin(flow)
            hc = HttpConnection(self, site, sock, client, flow)
            flow.cut_at = hc.cut.cut_at
            self.conns.add(hc)
            try:
                await hc.serve()
            finally:
                self.conns.discard(hc)
                self.open[lst.name] -= 1
                self.book.end(flow)
        finally:
            if hc is not None:
                hc.wire.close()  # a TLS wire has more to let go of than its socket
            wire.close(sock)

    async def run_timer(self) -> None:
        """The HTTP timeouts of every connection at once (see the module's docstring)."""
        while True:
            await trio.sleep(TIMER_TICK)
            now = time.monotonic()
            for hc in [hc for hc in self.conns if hc.deadline <= now]:
                hc.expire()

    def set_sites(self, sites: dict[tuple[str, str, int], Site]) -> None:
        """The Sites of a new Snapshot: connections of a listener it removed are sent
        away as a drain would (HTTP/2 ones get GOAWAY, their streams finish)."""
        self.sites = sites
        for hc in list(self.conns):
            if hc.key not in sites:
                hc.begin_drain()

    def drain(self) -> None:
        """Connections close between requests from now on: idle ones at once, busy ones
        after their response (which says ``Connection: close``); HTTP/2 ones get GOAWAY
        and close once their streams are done."""
        self.draining = True
        for hc in list(self.conns):
            hc.begin_drain()


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
        self.proto = str(site.listener.protocol)  # what X-Forwarded-Proto says
        assert site.listener.http is not None
        self.conn = http1.ServerConnection(site.listener.http.limits)
        self.wire: Wire = PlainWire(sock)
        self.cut = Cut(trio.CancelScope())
        # The wait the timer watches: its phase and deadline (see the module docstring).
        self.phase = Phase.FIRST
        self.deadline = math.inf
        self.expired: Phase | None = None
        self.exchange: Exchange | None = None

    @property
    def draining(self) -> bool:
        return self.proxy.draining

    @property
    def nursery(self) -> trio.Nursery | None:
        return self.proxy.nursery

    def begin_drain(self) -> None:
        """The worker drains: an idle connection closes now, a busy one after its
        response."""
        if self.phase in (Phase.IDLE, Phase.FIRST) and self.deadline != math.inf:
            self.expire(Phase.DRAIN)

    @property
    def drain_timeout(self) -> float:
        return self.proxy.drain_timeout

    # -- timeouts --------------------------------------------------------------------

    def arm(self, phase: Phase, seconds: float) -> None:
        self.phase = phase
        self.deadline = time.monotonic() + seconds

    def disarm(self) -> None:
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
        if self.site.ssl_context is not None:
            if not await self._handshake():
                return
            assert isinstance(self.wire, TlsWire)
            if self.wire.selected_alpn_protocol() == "h2":
                await self._h2(b"", "h2")
                return
        elif self.site.listener.http is not None and self.site.listener.http.h2c:
            first = await self._sniff()
            if first is None:
                return
            if first.startswith(PREFACE):
                await self._h2(first, "h2c")
                return
            self.conn.receive_data(first)
        try:
            # One scope for the connection's life: timeouts and the drain of a removed
            # backend cancel it, and the connection closes.
            with self.cut.scope:
                await self._serve_requests()
        except (Closing, ClientGone):
            return
        except ClientError as e:
            await self._refuse(e)
            return
        if self.cut.scope.cancelled_caught and self.expired is not None:
            await self._expired()

    async def _sniff(self) -> bytes | None:
        """The first bytes of a plain connection, enough to tell the HTTP/2 preface from
        an HTTP/1.1 request; None when the client went (or idled out) first."""
        data = b""
        with trio.move_on_after(self.site.listener.timeouts.request):
            while len(data) < len(PREFACE) and PREFACE.startswith(data):
                try:
                    more = await self.wire.recv()
                except OSError:
                    return None
                if not more:
                    return None
                data += more
            return data
        return None

    async def _h2(self, first: bytes, protocol: str) -> None:
        """Serve the connection as HTTP/2 from here on."""
        self.flow.protocol = protocol
        session = H2Session(self.proxy, self.site, self.wire, self.client, self.flow,
                            self.proto)
        self.flow.cut_at = session.cut.cut_at
        self.proxy.conns.discard(self)
        self.proxy.conns.add(session)
        try:
            await session.serve(first)
        finally:
            self.proxy.conns.discard(session)

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
            name = self.site.listener.name
            self.proxy.access.add(
                st, f'{name} {self.client[0]} "-" {e.status} refused: {e.reason}',
                {"listener": name, "client": self.client[0], "status": e.status,
                 "refused": e.reason} if self.proxy.access.json else {})
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
                self.disarm()
                assert isinstance(ev, Request)
                return ev
            # The request timeout runs from a request's first byte; between requests
            # the client may idle up to the keep-alive timeout.
            phase = conn.phase
            if phase is not armed:
                self.arm(phase, timeouts.keepalive if phase is Phase.IDLE
                          else timeouts.request)
                armed = phase
            try:
                data = await self.wire.recv()
            except OSError:
                return None
            conn.receive_data(data)

    async def _exchange(self, site: Site, req: Request) -> bool:
        """Serve one request; True to keep the client connection open."""
        ex = Exchange()
        self.exchange = ex
        site.stats.requests += 1
        pool_name, route = site.table.route(req.host, req.path)
        site.stats.routes[route] = site.stats.routes.get(route, 0) + 1
        pool = site.pools.get(pool_name) if pool_name is not None else None
        try:
            if pool is None:
                keep = await self.own_response(ex, 404)
            else:
                forward = Forward if pool.protocol == "http1" else ToH2
                keep = await forward(self, pool, req, ex, site.is_trusted(self.client[0]),
                                     site.backend_contexts.get(pool.name)).run()
        except HttpError as e:
            ex.status = e.status
            await self._reply_error(e.status, e.reason)
            keep = False
        finally:
            self._account(site, req, ex)
        return keep and not self.proxy.draining

    async def own_response(self, ex: Exchange, status: int) -> bool:
        """Answer ``status`` ourselves; True when the connection may stay open."""
        ex.status = status
        response = self.conn.send_error(status)
        ex.bytes_out = len(response.partition(b"\r\n\r\n")[2])
        try:
            await self.wire.send(response)
        except OSError:
            return False
        return self.conn.keep_alive

    def _account(self, site: Site, req: Request, ex: Exchange) -> None:
        site.stats.count_status(ex.status)
        self.flow.bytes_in += ex.bytes_in
        self.flow.bytes_out += ex.bytes_out
        self.proxy.access.request(site.listener, site.stats, self.client[0], req, ex)

    async def send_client(self, data: bytes) -> None:
        # A client that stops reading may stall a send for as long as a body may stall.
        self.arm(Phase.SEND, self.site.listener.timeouts.body)
        try:
            await self.wire.send(data)
        except OSError:
            raise Closing from None
        self.disarm()

