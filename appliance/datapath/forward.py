"""One HTTP request forwarded to a backend of its pool: a kept-alive connection or a new
one (with failover for requests that may be sent twice, and one retry when a reused
connection turns out to have been closed), the request body streamed across, the
response streamed back, and the connection kept for the next request when it can be.

The client's side (``l7.HttpConnection``) reads requests and owns the timeouts; this is
the backend's side of one exchange. Both only move bytes: the ``http1`` machines decide.
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import trio

from . import http1, wire
from .backends import BackendRuntime, BackendSet, IdleUpstream
from .connect import Upstream, connect_to_pool
from .errors import BackendError, BackendGone, BackendUnreachable, ClientGone, Exhausted
from .http1 import CHUNKED, END_OF_MESSAGE, NEED_DATA, NO_BODY, Marker, Phase, Request
from .wire import PlainWire, TlsWire, Wire

W = TypeVar("W")


class Closing(Exception):
    """The client connection ends here (after a response edgelb made, or a cut)."""


class _Stale(Exception):
    """A reused keep-alive backend connection was closed under us before answering."""


class Exchange:
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

    def uncut(self) -> None:
        self.scope.deadline = math.inf


class Client(Protocol):
    """What a forwarded request needs of its client connection."""

    conn: http1.ServerConnection
    wire: Wire
    client: tuple[str, int]
    client_key: bytes  # the client's address, which the balancers hash
    proto: str  # "http" or "https": what X-Forwarded-Proto says
    cut: Cut

    @property
    def nursery(self) -> trio.Nursery | None:
        """Where connections that outlive a request run (shared HTTP/2 upstreams)."""

    @property
    def draining(self) -> bool:
        """The worker drains: the connection closes after this response."""

    @property
    def drain_timeout(self) -> float:
        """How long a request to a removed backend may still run."""

    def arm(self, phase: Phase, seconds: float) -> None: ...

    def disarm(self) -> None: ...

    async def send_client(self, data: bytes) -> None: ...

    async def own_response(self, ex: Exchange, status: int) -> bool: ...


class Forward:
    """One request to ``pool``: ``run`` returns whether the client connection stays."""

    def __init__(self, client: Client, pool: BackendSet, req: Request, ex: Exchange,
                 trusted: bool, tls: ssl.SSLContext | None) -> None:
        self.client = client
        self.pool = pool
        self.req = req
        self.ex = ex
        self.trusted = trusted  # the client is a proxy whose X-Forwarded-* we keep
        self.tls = tls  # the context of TLS towards the pool's backends, if any
        self.timeouts = pool.listener.timeouts

    async def run(self) -> bool:
        req, client = self.req, self.client
        # A chunked body broken from its start never reaches a backend: its first chunk
        # is read and checked before one is chosen.
        first = await self.body_event() if req.framing.kind == CHUNKED else None
        tried: set[int] = set()
        retried_stale = False
        while True:
            up = await self._upstream(tried)
            if up is None:
                return False
            br = up.backend
            cut = client.cut
            at_backend(br, cut, client.drain_timeout)
            sent, received = self.ex.bytes_in, self.ex.bytes_out
            try:
                return await self._exchange(br, up.conn, up.reused, first)
            except _Stale:
                up.conn.close()
                # A keep-alive connection the backend had closed: the request never got
                # there, so it may go again, once, on a fresh connection.
                if retried_stale or not req.idempotent:
                    await client.own_response(self.ex, 502)
                    raise Closing from None
                retried_stale = True
            except BaseException:
                up.conn.close()
                raise
            finally:
                left_backend(br, cut, self.ex.bytes_in - sent, self.ex.bytes_out - received)

    async def _upstream(self, tried: set[int]) -> Upstream[Wire] | None:
        """A connection to a backend of the pool (see ``open_upstream``). None after
        edgelb answered 502 or 503 itself."""
        ex, pool = self.ex, self.pool
        try:
            return await open_upstream(pool, self.client.client_key, self.tls, ex, tried,
                                       self.req.idempotent)
        except (BackendUnreachable, Exhausted) as e:
            await self.client.own_response(ex, unreachable(pool, e))
            return None

    async def _exchange(self, br: BackendRuntime, up: Wire, reused: bool,
                        first: bytes | Marker | None) -> bool:
        req, ex, client = self.req, self.ex, self.client
        backend = http1.BackendConnection()
        head = backend.send_request(req, client.client[0], client.proto, self.trusted)
        try:
            await up.send(head)
            if req.framing.kind != NO_BODY:
                await self._request_body(up, backend, first)
        except OSError:
            if reused and req.framing.kind == NO_BODY:
                raise _Stale from None
            raise Closing from None
        resp = await self._response_head(backend, up, reused and ex.bytes_in == 0)
        ex.status = resp.status
        if resp.status == 101:
            if req.upgrade is None:
                raise BackendError("101 to a request that did not ask to switch")
            await client.wire.send(client.conn.send_switch(resp))
            await wire.tunnel(client.wire, up, client.conn.trailing_data(),
                              backend.trailing_data(), self.timeouts.idle, ex)
            raise Closing  # and the backend connection closes with it
        head_out = client.conn.send_response(resp, keep=not client.draining)
        if not await self._response_body(backend, up, head_out):
            raise Closing
        keep_or_close(self.pool, br, up, backend.reusable)
        return client.conn.keep_alive

    async def body_event(self) -> bytes | Marker:
        """The next piece of the request body (or its end), read as needed; a client that
        waits for 100 Continue gets it first."""
        client = self.client
        conn = client.conn
        while True:
            ev = conn.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, bytes) or ev is END_OF_MESSAGE
                return ev
            if conn.take_continue():
                await client.send_client(http1.CONTINUE)
            client.arm(Phase.BODY, self.timeouts.body)
            try:
                data = await client.wire.recv()
            except OSError:
                raise ClientGone from None
            client.disarm()
            conn.receive_data(data)

    async def _request_body(self, up: Wire, backend: http1.BackendConnection,
                            ev: bytes | Marker | None) -> None:
        while True:
            if ev is None:
                ev = await self.body_event()
            if ev is END_OF_MESSAGE:
                end = backend.send_end()
                if end:
                    await up.send(end)
                return
            assert isinstance(ev, bytes)
            await up.send(backend.send_data(ev))
            self.ex.bytes_in += len(ev)
            ev = None

    async def _response_head(self, backend: http1.BackendConnection, up: Wire,
                             may_be_stale: bool) -> http1.Response:
        """The backend's final response head; interim 1xx ones are passed on (a 100 only
        to a client that did not already get ours)."""
        client = self.client
        while True:
            client.arm(Phase.RESPONSE, self.timeouts.response)
            try:
                ev = await _backend_event(backend, up)
            except BackendGone:
                if may_be_stale:
                    raise _Stale from None
                raise BackendError("backend closed before responding") from None
            client.disarm()
            assert isinstance(ev, http1.Response)
            if 100 <= ev.status < 200 and ev.status != 101:
                if ev.status != 100 or not self.req.expect_continue:
                    await client.send_client(client.conn.send_interim(ev))
                continue
            return ev

    async def _response_body(self, backend: http1.BackendConnection, up: Wire,
                             head: bytes) -> bool:
        """Stream the body to the client; False when it could not be delivered whole (the
        client connection must then close without a proper end)."""
        client = self.client
        conn = client.conn
        out = head
        while True:
            try:
                ev = backend.next_event()
            except (BackendError, BackendGone):
                return False
            if ev is NEED_DATA:
                if out:
                    await client.send_client(out)
                    out = b""
                client.arm(Phase.RESPONSE_BODY, self.timeouts.response)
                try:
                    data = await up.recv()
                except OSError:
                    data = b""
                client.disarm()
                backend.receive_data(data)
            elif ev is END_OF_MESSAGE:
                out += conn.send_end()
                if out:
                    await client.send_client(out)
                return True
            else:
                assert isinstance(ev, bytes)
                self.ex.bytes_out += len(ev)
                out += conn.send_data(ev)


def at_backend(br: BackendRuntime, cut: Cut, drain_timeout: float) -> None:
    """A request is at ``br``: counted, and cut with it if a Snapshot removed ``br``
    (``drain_timeout`` from now)."""
    br.flows[id(cut)] = cut
    if br.removed:
        cut.cut_at(trio.current_time() + drain_timeout)
    br.stats.active += 1
    br.stats.requests += 1


def left_backend(br: BackendRuntime, cut: Cut, bytes_in: int, bytes_out: int) -> None:
    """The request at ``br`` is over, having moved these bytes."""
    br.stats.active -= 1
    br.stats.bytes_in += bytes_in
    br.stats.bytes_out += bytes_out
    br.flows.pop(id(cut), None)
    # A drain deadline applies to the request, not to the connection's next ones (which
    # go to backends still in the pool).
    if cut.scope.deadline != math.inf:
        cut.scope.deadline = math.inf


def keep_or_close(pool: BackendSet, br: BackendRuntime, up: Wire, reusable: bool) -> None:
    """A backend connection after its exchange: kept for a next request when it may be
    (``reusable``: its response ended by its framing and the backend keeps it open),
    there is room among the backend's idle ones and the backend is still in the pool;
    closed otherwise."""
    http = pool.listener.http
    if reusable and http is not None and len(br.idle) < http.backend_keepalive and \
            not br.removed:
        br.idle.append(IdleUpstream(up, trio.current_time()))
    else:
        up.close()


def unreachable(pool: BackendSet, e: BackendUnreachable | Exhausted) -> int:
    """The status edgelb answers for a request no backend of ``pool`` took, counted:
    502 when backends were tried and failed, 503 when none was usable or this box is out
    of descriptors."""
    if isinstance(e, Exhausted):
        pool.stats.exhausted += 1
        return 503
    if not e.tried:
        pool.stats.no_backend += 1
    return 502 if e.tried else 503


async def open_upstream(pool: BackendSet, client_key: bytes, ctx: ssl.SSLContext | None,
                        ex: Exchange, tried: set[int], idempotent: bool,
                        alpn: str | None = None) -> Upstream[Wire]:
    """A connection to a backend of ``pool``: a kept-alive one if there is one, else a
    new one (TLS with ``ctx``), as ``connect_to_pool`` finds it; ``ex`` learns the
    backend and the connect time. ``alpn``: the protocol the TLS backend must choose.
    Raises BackendUnreachable or Exhausted."""
    keepalive = pool.listener.timeouts.keepalive

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
        if alpn is not None and conn.selected_alpn_protocol() != alpn:
            conn.close()
            raise ConnectionRefusedError(f"the backend does not speak {alpn} (ALPN)")
        return conn

    return await timed_connect(pool, client_key, setup, ex, tried=tried, retry=idempotent,
                               reuse=reuse)


async def timed_connect(pool: BackendSet, client_key: bytes,
                        setup: Callable[[socket.socket, BackendRuntime], Awaitable[W]],
                        ex: Exchange, tried: set[int] | None = None, retry: bool = True,
                        reuse: Callable[[BackendRuntime, float], W | None] | None = None
                        ) -> Upstream[W]:
    """``connect_to_pool``, with the connect time in ``ex`` (0 for a reused connection)
    and a new connection counted."""
    t0 = time.monotonic()
    up = await connect_to_pool(pool, client_key, setup, tried=tried, retry=retry,
                               reuse=reuse)
    if up.reused:
        ex.connect_ms = 0.0
    else:
        up.backend.stats.connections += 1
        ex.connect_ms = (time.monotonic() - t0) * 1000
    return up


async def _backend_event(backend: http1.BackendConnection, up: Wire) -> http1.Event:
    while True:
        ev = backend.next_event()
        if ev is not NEED_DATA:
            return ev
        try:
            data = await up.recv()
        except OSError:
            data = b""
        backend.receive_data(data)
