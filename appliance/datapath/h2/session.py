"""HTTP/2 to clients (RFC 9113): h2 by ALPN on https listeners, h2c with prior knowledge
on http ones. The ``h2`` machine does the protocol (frames, HPACK, flow control, stream
states); this moves bytes and serves each stream on its own task, as one request: it is
routed, forwarded, counted and logged as an HTTP/1.1 request is.

A stream's backend is spoken to as its pool says: HTTP/1.1 (``via_http1``, the request
translated, one kept-alive connection per request at a time) or HTTP/2 (``via_h2``,
streams multiplexed over shared connections, trailers passed through both ways).
Bodies stream both ways under flow control: a request body is acknowledged to the client
only once it went to the backend, and a response waits for the client's window, so a
slow reader holds its own stream and never makes edgelb buffer.

What a client may do is bounded (``guard``): streams at once (SETTINGS), resets, SETTINGS
and PING frames per 10 s, the decoded header list (HPACK), header blocks split over
CONTINUATION frames (h2 allows 64); past a bound, GOAWAY.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import h2.errors
import h2.events
import h2.exceptions
import trio
from hyperframe.frame import GoAwayFrame

from .. import http1
from ..access import AccessLog
from ..backends import BackendRuntime, BackendSet
from ..connect import Upstream
from ..errors import BackendError, BackendGone, BackendUnreachable, ClientError, Exhausted
from ..flows import Flow
from ..forward import (
    Cut,
    Exchange,
    _backend_event,
    at_backend,
    keep_or_close,
    left_backend,
    open_upstream,
    unreachable,
)
from ..http1 import END_OF_MESSAGE, LENGTH, NEED_DATA, NO_BODY, Phase, Request
from ..site import Site
from ..wire import Wire
from .guard import FloodGuard
from .link import H2Link, machine, settings
from .messages import (
    Headers,
    backend_request,
    error_response,
    relayed,
    request_of,
    response_headers,
    status_of,
    wants_trailers,
)
from .upstream import BackendStream, H2Upstream, next_event, shared_upstream


class Proxy(Protocol):
    """What a session needs of the worker's HTTP proxy (``l7.HttpProxy``)."""

    sites: dict[tuple[str, str, int], Site]
    access: AccessLog
    drain_timeout: float
    nursery: trio.Nursery | None

log = logging.getLogger("edgelb.datapath")

END = None  # the end of a request body in a stream's channel
U = TypeVar("U")
GRPC_UNAVAILABLE = b"14"


class StreamGone(Exception):
    """The client reset the stream (or the connection went): stop serving it."""


@dataclass
class ClientStream:
    """One request of the client's connection."""

    stream_id: int
    headers: Headers
    req: Request | None = None
    ex: Exchange = field(default_factory=Exchange)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    send: trio.MemorySendChannel[tuple[bytes, int] | None] | None = None
    body: trio.MemoryReceiveChannel[tuple[bytes, int] | None] | None = None
    trailers: Headers | None = None
    taken: int = 0  # request body bytes taken to forward, against its Content-Length
    unacked: int = 0  # received, counted against the windows, not yet acknowledged
    answered: bool = False  # response headers went out
    cut: Cut | None = None  # while at a backend: lets a drain of that backend end it

    @property
    def grpc(self) -> bool:
        return any(n == b"content-type" and v.startswith(b"application/grpc")
                   for n, v in self.headers)


class H2Session:
    """One HTTP/2 client connection: its streams, each served on its own task."""

    def __init__(self, proxy: Proxy, site: Site, wire: Wire, client: tuple[str, int],
                 flow: Flow, proto: str) -> None:
        self.proxy = proxy
        self.site = site
        self.client = client
        self.client_key = client[0].encode()
        self.flow = flow
        self.proto = proto
        self.key = site.listener.socket_key
        http = site.listener.http
        assert http is not None
        self.limits = http.limits
        self.link = H2Link(machine(client_side=False), wire)
        self.streams: dict[int, ClientStream] = {}
        self.guard = FloodGuard({"reset": self.limits.max_resets,
                                 "control": self.limits.max_control_frames},
                                time.monotonic())
        self.cut = Cut(trio.CancelScope())
        self.phase = Phase.IDLE
        self.deadline = math.inf
        self.expired: Phase | None = None
        self.last_stream = 0  # after our GOAWAY: the last stream we serve
        self.going_away = False
        self.closing = False
        self.calm: int | None = None  # a GOAWAY code owed to a client past a limit
        self.nursery: trio.Nursery | None = None

    # -- the proxy's timer and drain (as ``l7.HttpConnection``) -----------------------

    def expire(self, why: Phase | None = None) -> None:
        self.expired = why or self.phase
        self.deadline = math.inf
        self.cut.scope.cancel()

    def begin_drain(self) -> None:
        """GOAWAY with the last stream taken: those finish, new ones are refused, and
        the connection closes when the last one is done."""
        if self.nursery is not None and not self.going_away and not self.closing:
            try:
                self.nursery.start_soon(self.go_away, 0)
            except RuntimeError:
                pass  # the connection is closing already

    # -- the connection ------------------------------------------------------------

    async def serve(self, first: bytes) -> None:
        """Serve until the client closes, a limit sends it away, or a drain ends."""
        conn = self.link.conn
        conn.initiate_connection()
        conn.update_settings(settings(self.limits.max_concurrent_streams,
                                      self.limits.max_header_bytes))
        # Enforced from the first request on (h2 applies a setting once acknowledged).
        conn.decoder.max_header_list_size = self.limits.max_header_bytes
        try:
            with self.cut.scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self.link.write)
                    try:
                        await self._read(first)
                    finally:
                        self.closing = True
                        nursery.cancel_scope.cancel()
        except OSError:
            pass
        except Exception as e:
            # A connection that failed (the client went) ends quietly; a defect costs
            # this client its connection, never the worker.
            if not isinstance(e, ExceptionGroup) or \
                    e.split((OSError, trio.ClosedResourceError))[1] is not None:
                log.exception("client %s: HTTP/2 connection failed", self.client[0])
        if self.expired is not None and self.expired is not Phase.DRAIN:
            self.site.stats.timeouts += 1

    async def _read(self, data: bytes) -> None:
        conn, wire = self.link.conn, self.link.wire
        keepalive = self.site.listener.timeouts.keepalive
        while True:
            if data:
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    # h2 queued its GOAWAY (PROTOCOL_ERROR, ENHANCE_YOUR_CALM for an
                    # HPACK bomb or a CONTINUATION flood ...): send it and close.
                    log.debug("client %s: HTTP/2: %s", self.client[0], e)
                    self.site.stats.bad_requests += 1
                    await self.link.flush()
                    return
                for ev in events:
                    self._event(ev)
                await self.link.flush()
                if self.calm is not None:
                    await self.go_away(self.calm)
                    return
            if self.closing or (self.going_away and not self.streams):
                return
            if self.streams:
                self.deadline = math.inf
            else:
                self.phase, self.deadline = Phase.IDLE, time.monotonic() + keepalive
            try:
                data = await wire.recv()
            except (OSError, trio.ClosedResourceError):
                return
            if not data:
                return

    async def go_away(self, code: int) -> None:
        """GOAWAY ``code``; with NO_ERROR, the streams taken finish first."""
        if self.going_away and code == 0:
            return
        self.going_away = True
        self.last_stream = self.link.conn.highest_inbound_stream_id
        # Written as a frame of our own: h2's GOAWAY would close its machine, and the
        # streams in flight could not finish.
        frame = GoAwayFrame(0, last_stream_id=self.last_stream, error_code=code)
        await self.link.flush(frame.serialize())
        if code != 0 or not self.streams:
            self.closing = True
            self.cut.scope.cancel()

    def _event(self, ev: h2.events.Event) -> None:
        now = time.monotonic()
        if isinstance(ev, h2.events.RequestReceived):
            self._request(ev)
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is None or st.send is None:
                self.link.ack(ev.stream_id, ev.flow_controlled_length)
            else:
                st.unacked += ev.flow_controlled_length
                st.send.send_nowait((ev.data, ev.flow_controlled_length))
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.trailers = ev.headers
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None and st.send is not None:
                st.send.send_nowait(END)
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.scope.cancel()
            if ev.remote_reset and self.guard.note("reset", now):
                self._calm("resets")
        elif isinstance(ev, h2.events.WindowUpdated):
            self.link.opened()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.link.opened()
            if self.guard.note("control", now):
                self._calm("SETTINGS frames")
        elif isinstance(ev, h2.events.PingReceived | h2.events.PriorityUpdated):
            if self.guard.note("control", now):
                self._calm("PING/PRIORITY frames")
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closing = True

    def _calm(self, what: str) -> None:
        """Send the client away (once these events are handled)."""
        if self.calm is None:
            log.info("client %s: HTTP/2: too many %s in %gs: GOAWAY", self.client[0], what,
                     10)
            self.site.stats.bad_requests += 1
            self.calm = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        conn = self.link.conn
        if self.going_away and sid > self.last_stream:
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        st = ClientStream(sid, list(ev.headers))
        ended = ev.stream_ended is not None
        if not ended:
            st.send, st.body = trio.open_memory_channel(math.inf)
        self.streams[sid] = st
        self.flow.state = _streams(len(self.streams))
        self.site.stats.requests += 1
        assert self.nursery is not None
        self.nursery.start_soon(self._serve_stream, st, ended)

    # -- one stream ----------------------------------------------------------------

    async def _serve_stream(self, st: ClientStream, ended: bool) -> None:
        site = self.proxy.sites.get(self.key, self.site)
        try:
            with st.scope:
                try:
                    st.req = request_of(st.headers, ended, self.limits)
                except ClientError as e:
                    site.stats.bad_requests += 1
                    await self._own(st, e.status)
                    return
                pool_name, route = site.table.route(st.req.host, st.req.path)
                site.stats.routes[route] = site.stats.routes.get(route, 0) + 1
                pool = site.pools.get(pool_name) if pool_name is not None else None
                try:
                    if pool is None:
                        await self._own(st, 404)
                    elif pool.protocol == "http1":
                        await self._via_http1(st, pool, site)
                    else:
                        await self._via_h2(st, pool, site)
                except (BackendError, BackendGone):
                    await self._failed(st)
                except StreamGone:
                    pass
        except OSError:
            pass
        except Exception:
            # A defect must cost one stream, never the worker and its other clients.
            log.exception("client %s: HTTP/2 stream %d failed", self.client[0], st.stream_id)
            await self._reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
        finally:
            self.streams.pop(st.stream_id, None)
            self.flow.state = _streams(len(self.streams))
            self._give_back(st)
            if st.scope.cancelled_caught and not st.answered and not self.closing:
                await self._reset(st, h2.errors.ErrorCodes.CANCEL)
            self._account(site, st)
            if self.going_away and not self.streams:
                self.closing = True
                self.cut.scope.cancel()

    def _account(self, site: Site, st: ClientStream) -> None:
        ex = st.ex
        site.stats.count_status(ex.status)
        self.flow.bytes_in += ex.bytes_in
        self.flow.bytes_out += ex.bytes_out
        if st.req is not None:
            self.proxy.access.request(site.listener, site.stats, self.client[0], st.req, ex,
                                      "HTTP/2")

    async def _own(self, st: ClientStream, status: int) -> None:
        """Answer ``status`` ourselves."""
        st.ex.status = status
        headers, body = error_response(status)
        st.ex.bytes_out += len(body)
        await self._headers(st, headers, end=False)
        await self._data(st, body, end=True)

    async def _failed(self, st: ClientStream) -> None:
        """The backend failed: 502 if nothing was answered yet (gRPC: UNAVAILABLE in
        trailers-only form), else the stream is reset."""
        if st.answered:
            await self._reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif st.grpc:
            st.ex.status = 200
            await self._headers(st, [(b":status", b"200"),
                                     (b"content-type", b"application/grpc"),
                                     (b"grpc-status", GRPC_UNAVAILABLE),
                                     (b"grpc-message", b"backend unavailable")], end=True)
        else:
            await self._own(st, 502)

    async def _headers(self, st: ClientStream, headers: Headers, end: bool) -> None:
        try:
            self.link.conn.send_headers(st.stream_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError:
            raise StreamGone from None  # the stream, or the connection, is closed
        st.answered = True
        await self.link.flush()

    async def _data(self, st: ClientStream, data: bytes, end: bool) -> None:
        """Response data as the client's window allows; a client that opens no room
        for ``timeouts.body`` loses the stream."""
        if self.link.fits(st.stream_id, len(data)):
            try:
                self.link.conn.send_data(st.stream_id, data, end_stream=end)
            except h2.exceptions.ProtocolError:
                raise StreamGone from None  # the stream, or the connection, is closed
            await self.link.flush()
            return
        with trio.move_on_after(self.site.listener.timeouts.body) as stalled:
            try:
                await self.link.send_data(st.stream_id, data, end)
            except h2.exceptions.ProtocolError:
                raise StreamGone from None
        if stalled.cancelled_caught:
            self.site.stats.timeouts += 1
            await self._reset(st, h2.errors.ErrorCodes.CANCEL)
            raise StreamGone

    async def _reset(self, st: ClientStream, code: int) -> None:
        try:
            self.link.conn.reset_stream(st.stream_id, code)
            await self.link.flush()
        except (h2.exceptions.ProtocolError, OSError):
            pass

    async def _body(self, st: ClientStream) -> tuple[bytes, int] | None:
        """The next piece of the request body (with its flow-controlled length), or
        END; a client that stalls for ``timeouts.body`` loses the stream."""
        assert st.body is not None
        assert st.req is not None
        piece: tuple[bytes, int] | None = END
        with trio.move_on_after(self.site.listener.timeouts.body) as stalled:
            try:
                piece = await st.body.receive()
            except trio.EndOfChannel:
                pass
        if stalled.cancelled_caught:
            self.site.stats.timeouts += 1
            await self._reset(st, h2.errors.ErrorCodes.CANCEL)
            raise StreamGone
        framing = st.req.framing
        if framing.kind == LENGTH:
            # DATA beyond (or short of) the Content-Length is malformed (RFC 9113
            # 8.1.1): past it, the bytes would reach an HTTP/1.1 backend as the start of
            # another request. Nothing beyond the length is forwarded.
            if piece is not END:
                st.taken += len(piece[0])
            if st.taken > framing.length or (piece is END and st.taken != framing.length):
                self.site.stats.bad_requests += 1
                await self._reset(st, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                raise StreamGone
        return piece

    def _give_back(self, st: ClientStream) -> None:
        """The request body a finished stream left unforwarded, acknowledged: it counted
        against the connection's window, which the other streams share."""
        if st.unacked:
            self.link.ack(st.stream_id, st.unacked)
            st.unacked = 0

    async def _consumed(self, st: ClientStream, length: int) -> None:
        """``length`` bytes of the request went to the backend: the client may send
        more."""
        st.unacked -= length
        self.link.ack(st.stream_id, length)
        await self.link.flush()

    def _begin(self, br: BackendRuntime, st: ClientStream) -> None:
        """``st`` is at ``br``: counted, and cut with it if a Snapshot removes it."""
        st.cut = Cut(st.scope)
        at_backend(br, st.cut, self.proxy.drain_timeout)
        self.flow.backend = br.key

    def _end(self, br: BackendRuntime, st: ClientStream) -> None:
        assert st.cut is not None
        left_backend(br, st.cut, st.ex.bytes_in, st.ex.bytes_out)

    # -- to an HTTP/1.1 backend --------------------------------------------------------

    async def _via_http1(self, st: ClientStream, pool: BackendSet, site: Site) -> None:
        req, ex = st.req, st.ex
        assert req is not None
        up = await self._connect(st, pool, open_upstream(
            pool, self.client_key, site.backend_contexts.get(pool.name), ex, set(),
            req.idempotent))
        if up is None:
            return
        br, wire = up.backend, up.conn
        self._begin(br, st)
        clean = False
        try:
            backend = http1.BackendConnection()
            await wire.send(backend.send_request(req, self.client[0], self.proto,
                                                 site.is_trusted(self.client[0])))
            if req.framing.kind != NO_BODY:
                while (piece := await self._body(st)) is not END:
                    data, length = piece
                    await wire.send(backend.send_data(data))
                    ex.bytes_in += len(data)
                    await self._consumed(st, length)
                end = backend.send_end()
                if end:
                    await wire.send(end)
            resp = await self._http1_head(st, backend, wire)
            if resp is None:
                return
            ex.status = resp.status
            head_only = req.method == b"HEAD" or resp.framing.kind == NO_BODY
            await self._relay_http1(st, backend, wire, response_headers(resp), head_only)
            clean = backend.reusable
        except OSError:
            raise BackendGone from None
        finally:
            self._end(br, st)
            keep_or_close(pool, br, wire, clean)

    async def _relay_http1(self, st: ClientStream, backend: http1.BackendConnection,
                           wire: Wire, headers: Headers, head_only: bool) -> None:
        """The response to the client: what the backend sent so far goes out in one
        write with the headers (a small response is one write, its end included)."""
        conn, sid = self.link.conn, st.stream_id
        try:
            conn.send_headers(sid, headers, end_stream=head_only)
        except h2.exceptions.ProtocolError:
            raise StreamGone from None
        st.answered = True
        if head_only:
            await self.link.flush()
            return
        pending: list[bytes] = []
        timeout = self.site.listener.timeouts.response
        while True:
            ev = backend.next_event()
            if ev is NEED_DATA:
                if pending:
                    await self._data(st, b"".join(pending), end=False)
                    pending = []
                else:
                    await self.link.flush()
                with trio.move_on_after(timeout) as slow:
                    try:
                        data = await wire.recv()
                    except OSError:
                        data = b""
                if slow.cancelled_caught:
                    raise BackendError("the backend stalled in its response body")
                backend.receive_data(data)
            elif ev is END_OF_MESSAGE:
                await self._data(st, b"".join(pending), end=True)
                return
            else:
                assert isinstance(ev, bytes)
                st.ex.bytes_out += len(ev)
                pending.append(ev)

    async def _http1_head(self, st: ClientStream, backend: http1.BackendConnection,
                          wire: Wire) -> http1.Response | None:
        """The backend's final response head (1xx interim ones skipped); None after
        edgelb answered 504 itself."""
        with trio.move_on_after(self.site.listener.timeouts.response) as slow:
            while True:
                ev = await _backend_event(backend, wire)
                assert isinstance(ev, http1.Response)
                if not 100 <= ev.status < 200:
                    return ev
        if slow.cancelled_caught:
            self.site.stats.timeouts += 1
            await self._own(st, 504)
        return None

    # -- to an HTTP/2 backend ----------------------------------------------------------

    async def _via_h2(self, st: ClientStream, pool: BackendSet, site: Site) -> None:
        req, ex = st.req, st.ex
        assert req is not None
        assert self.proxy.nursery is not None
        shared = await self._connect(st, pool, shared_upstream(
            pool, self.client_key, site.backend_contexts.get(pool.name), ex,
            self.proxy.nursery))
        if shared is None:
            return
        up = shared
        conn = up.conn
        br = up.backend
        headers = backend_request(req, self.client[0], self.proto,
                                  site.is_trusted(self.client[0]),
                                  b"https" if pool.tls is not None else b"http",
                                  wants_trailers(st.headers))
        no_body = req.framing.kind == NO_BODY
        try:
            bst = conn.open(headers, end=no_body)
        except h2.exceptions.ProtocolError:
            raise BackendGone from None  # the connection took no more streams after all
        self._begin(br, st)
        clean = False
        try:
            await conn.link.flush()
            async with trio.open_nursery() as nursery:
                if not no_body:
                    nursery.start_soon(self._upload, st, conn, bst)
                await self._download(st, conn, bst)
                nursery.cancel_scope.cancel()  # the response is whole: the upload is moot
                clean = True
        except BaseExceptionGroup as group:
            raise _first(group) from None
        except OSError:
            raise BackendGone from None
        finally:
            self._end(br, st)
            conn.finish(bst, reset=not clean)

    async def _connect(self, st: ClientStream, pool: BackendSet,
                       connecting: Awaitable[Upstream[U]]) -> Upstream[U] | None:
        """A backend connection for ``st``; None after answering 502 (every backend
        failed) or 503 (none usable, or this box out of descriptors) itself, gRPC in
        its own form."""
        try:
            return await connecting
        except (BackendUnreachable, Exhausted) as e:
            status = unreachable(pool, e)
        if st.grpc:
            await self._failed(st)
        else:
            await self._own(st, status)
        return None

    async def _upload(self, st: ClientStream, conn: H2Upstream, bst: BackendStream) -> None:
        """The request body (and trailers) to the backend as the client sends it. A
        backend may end the stream first (a trailers-only error): the rest is dropped."""
        try:
            while (piece := await self._body(st)) is not END:
                data, length = piece
                await conn.send(bst, data)
                st.ex.bytes_in += len(data)
                await self._consumed(st, length)
            await conn.end(bst, st.trailers)
        except (h2.exceptions.ProtocolError, OSError):
            return

    async def _download(self, st: ClientStream, conn: H2Upstream, bst: BackendStream) -> None:
        """The response (headers, data, trailers) to the client as the backend sends
        it; a backend slower than ``timeouts.response`` to answer gets 504."""
        ex = st.ex
        timeouts = self.site.listener.timeouts
        with trio.move_on_after(timeouts.response) as slow:
            item = await next_event(bst)
            while item[0] == "headers" and 100 <= status_of(item[1]) < 200:
                item = await next_event(bst)
        if slow.cancelled_caught:
            self.site.stats.timeouts += 1
            await self._own(st, 504)
            return
        while True:
            kind = item[0]
            if kind == "headers":
                ex.status = status_of(item[1])
                await self._headers(st, relayed(item[1]), end=item[2])
                if item[2]:
                    return
            elif kind == "data":
                ex.bytes_out += len(item[1])
                await self._data(st, item[1], end=False)
                await conn.consumed(bst, item[2])
            elif kind == "trailers":
                await self._headers(st, relayed(item[1]), end=True)
                return
            elif kind == "end":
                await self._data(st, b"", end=True)
                return
            elif kind == "reset":
                if st.answered:
                    await self._reset(st, item[1])
                    raise StreamGone
                raise BackendError(f"the backend reset the stream ({item[1]})")
            item = await next_event(bst)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception of a stream's two directions that says what happened (its
    cancellations aside)."""
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first(e)
        if not isinstance(e, trio.Cancelled):
            return e
    return group.exceptions[0]


def _streams(n: int) -> str:
    """A connection's state as the flow table shows it."""
    return "idle" if not n else "1 stream" if n == 1 else f"{n} streams"
