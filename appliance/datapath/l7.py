"""The HTTP/1.1 reverse proxy: the I/O around the pure ``http1`` parser and ``routing``.

One task per client connection reads a request head, routes it, takes a keep-alive
connection to a backend from the pool (or opens one), streams the body across, streams
the response back, and loops for the next request. Pipelined requests wait in the
buffer and are answered in order. Bodies are never held whole: each read is passed on
before the next.
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
from typing import TYPE_CHECKING, Protocol

import trio

from ..model import HttpLimits, Listener
from . import http1
from .flows import Flow, ListenerStats
from .http1 import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, HttpError, Request, Response
from .routing import RouteTable

if TYPE_CHECKING:
    from .worker import BackendRuntime, Pool, Worker

log = logging.getLogger("edgelb.datapath")
access = logging.getLogger("edgelb.access")

READ_SIZE = 65536
MAX_RESPONSE_HEAD = 65536


class Wire(Protocol):
    """A byte stream: a plain socket or TLS over one."""

    async def recv(self) -> bytes: ...
    def try_recv(self) -> bytes | None: ...
    async def send(self, data: bytes | bytearray | memoryview) -> None: ...
    async def send_eof(self) -> None: ...
    def close(self) -> None: ...


class PlainWire:
    """A non-blocking socket driven with raw syscalls: one recv or send per call when the
    socket is ready, which is most of the time (trio's socket methods checkpoint twice)."""

    __slots__ = ("sock", "tsock")

    def __init__(self, tsock: trio.socket.SocketType) -> None:
        self.tsock = tsock
        self.sock: socket.socket = tsock._sock  # type: ignore[attr-defined]

    async def recv(self) -> bytes:
        while True:
            try:
                return self.sock.recv(READ_SIZE)
            except BlockingIOError:
                pass
            # Outside the except block, so no exception stays referenced while we wait.
            await trio.lowlevel.wait_readable(self.sock)

    def try_recv(self) -> bytes | None:
        """What is readable now without waiting, or None; b"" at EOF."""
        try:
            return self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return None

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                n = -1
            if n < 0:
                await trio.lowlevel.wait_writable(self.sock)
            else:
                view = view[n:]

    async def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def alive(self) -> bool:
        """An idle keep-alive connection is reusable if it has not been closed or sent
        anything unasked; one peek answers both."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # nothing to read: open and quiet
        except OSError:
            pass
        return False  # closed, reset, or talking out of turn

    def close(self) -> None:
        self.tsock.close()


class TlsWire:
    """TLS over a socket, through trio's SSLStream."""

    __slots__ = ("stream", "tsock")

    def __init__(self, tsock: trio.socket.SocketType, ctx: ssl.SSLContext, server: bool,
                 server_hostname: str | None = None) -> None:
        self.tsock = tsock
        self.stream = trio.SSLStream(trio.SocketStream(tsock), ctx, server_side=server,
                                     server_hostname=server_hostname,
                                     https_compatible=True)

    async def handshake(self) -> None:
        await self.stream.do_handshake()

    async def recv(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(READ_SIZE))
        except trio.BrokenResourceError as e:
            raise ConnectionResetError(str(e)) from None

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as e:
            raise ConnectionResetError(str(e)) from None

    async def send_eof(self) -> None:
        pass  # TLS 1.2 has no half-close; the relay ends when either side closes

    def try_recv(self) -> bytes | None:
        return None  # TLS records need the stream's machinery: always wait

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self.tsock.close()


@dataclass
class IdleUpstream:
    """A keep-alive backend connection waiting for its next request."""

    wire: PlainWire | TlsWire
    since: float


@dataclass
class Site:
    """An HTTP listener as of one Snapshot: its routes compiled, its pools, its TLS."""

    listener: Listener
    table: RouteTable
    pools: dict[str, Pool]
    stats: ListenerStats
    ssl_context: ssl.SSLContext | None = None
    backend_contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def http_limits(self) -> HttpLimits:
        assert self.listener.http is not None
        return self.listener.http.limits

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.trusted)


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

    def __init__(self, worker: Worker, site: Site, tsock: trio.socket.SocketType,
                 client: tuple[str, int], flow: Flow) -> None:
        self.worker = worker
        self.site = site
        self.tsock = tsock
        self.client = client
        self.flow = flow
        self.key = site.listener.socket_key
        self.proto = "https" if site.listener.protocol == "https" else "http"
        self.buf = b""
        self.wire: PlainWire | TlsWire = PlainWire(tsock)
        self.cut = Cut(trio.CancelScope())
        # Timeouts: the phase the connection waits in and when that wait expires, read
        # by the worker's timer task (``expire``). A float store per wait instead of a
        # cancel scope per wait, which costs more than the read it guards.
        self.phase = ""
        self.deadline = math.inf
        self.expired = ""
        self.exchange: _Exchange | None = None
        self.continued = False  # this request got our 100 Continue
        self.request_expects_continue = False
        self.chunks: tuple[http1.ChunkedDecoder, list[bytes]] = (http1.ChunkedDecoder(), [])

    # -- timeouts --------------------------------------------------------------------

    def _arm(self, phase: str, seconds: float) -> None:
        self.phase = phase
        self.deadline = time.monotonic() + seconds

    def _disarm(self) -> None:
        self.deadline = math.inf

    def expire(self, why: str = "") -> None:
        """End the connection: its wait timed out (``why`` defaults to the phase it was
        in), or the worker drains. Called by the worker, never by the connection."""
        self.expired = why or self.phase
        self.deadline = math.inf
        ex = self.exchange
        if ex is not None and not ex.status:
            ex.status = {"response": 504, "body": 408}.get(self.expired, 0)
        self.cut.scope.cancel()

    # -- the request loop ------------------------------------------------------------

    async def serve(self) -> None:
        lst = self.site.listener
        if self.site.ssl_context is not None:
            tls = TlsWire(self.tsock, self.site.ssl_context, server=True)
            self.wire = tls
            with trio.move_on_after(lst.timeouts.request) as scope:
                try:
                    await tls.handshake()
                except (trio.BrokenResourceError, OSError):
                    self.site.stats.tls_failures += 1
                    return
            if scope.cancelled_caught:
                self.site.stats.tls_failures += 1
                return
        first = True
        try:
            # One scope for the connection's life: timeouts and the drain of a removed
            # backend cancel it, and the connection closes.
            with self.cut.scope:
                await self._serve_requests(first)
        except _Closing:
            return
        except HttpError as e:
            await self._refuse(e)
            return
        if self.cut.scope.cancelled_caught and self.expired:
            await self._expired()

    async def _expired(self) -> None:
        """After a timeout: 408 for a client too slow with its request, 504 for a
        backend too slow to start its response (if nothing was sent yet), else close."""
        why = self.expired
        if why == "drain":
            return
        self.site.stats.timeouts += 1
        ex = self.exchange
        started = ex is not None and ex.bytes_out > 0
        if why in ("first", "head", "body"):
            status = 408
        elif why == "response" and not started:
            status = 504
        else:
            return
        self.site.stats.statuses[f"{status // 100}xx"] = \
            self.site.stats.statuses.get(f"{status // 100}xx", 0) + 1
        await self._reply_error(status, f"timeout in {why}")

    async def _serve_requests(self, first: bool) -> None:
        while True:
            site = self.worker.sites.get(self.key, self.site)
            self.site = site
            head = await self._read_head(first)
            if head is None:
                return
            first = False
            keep = await self._exchange(site, head)
            if not keep:
                return

    async def _refuse(self, e: HttpError) -> None:
        """A request refused before it was routed: counted, logged, answered, closed."""
        st = self.site.stats
        st.bad_requests += 1
        cls = f"{e.status // 100}xx"
        st.statuses[cls] = st.statuses.get(cls, 0) + 1
        if self.site.listener.http is not None and self.site.listener.http.access_log:
            access.info('%s %s "-" %d refused: %s', self.site.listener.name,
                        self.client[0], e.status, e.reason, extra={"access": {
                            "listener": self.site.listener.name,
                            "client": self.client[0], "status": e.status,
                            "refused": e.reason}})
        await self._reply_error(e.status, e.reason)

    async def _reply_error(self, status: int, reason: str = "", close: bool = True) -> None:
        try:
            with trio.move_on_after(1.0):
                await self.wire.send(http1.error_response(status, close))
        except OSError:
            pass
        if status >= 400:
            log.debug("client %s: %d %s", self.client[0], status, reason)

    async def _read_head(self, first: bool) -> bytes | None:
        """The next request head, None when the client closed (or idled out) between
        requests, HttpError for a bad or slow one."""
        lst = self.site.listener
        limits = self.site.http_limits
        buf = self.buf
        if not buf:
            # Data already waiting needs no wait: the common case under load.
            try:
                ready = self.wire.try_recv()
            except OSError:
                return None
            if ready is not None:
                if not ready:
                    return None
                buf = ready
        if buf:
            self._arm("head", lst.timeouts.request)
        else:
            # Between requests the client may idle up to the keep-alive timeout; the
            # request timeout starts with its first byte.
            self._arm("first" if first else "idle",
                      lst.timeouts.request if first else lst.timeouts.keepalive)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                self._disarm()
                self.buf = buf[end + 4:]
                return buf[:end]
            http1.request_line_end(buf, limits)
            if len(buf) > limits.max_header_bytes + 4:
                raise HttpError(431, "request header too large")
            try:
                data = await self.wire.recv()
            except OSError:
                return None
            if not data:
                # A client that closes between or mid-head gets nothing: no one to read it.
                return None
            if not buf:
                self._arm("head", lst.timeouts.request)
            buf += data

    async def _exchange(self, site: Site, head: bytes) -> bool:
        """Serve one request; True to keep the client connection open."""
        ex = _Exchange()
        self.exchange = ex
        req = http1.parse_request(head, site.http_limits)
        site.stats.requests += 1
        pool_name, route = site.table.route(req.host, req.path)
        site.stats.routes[route] = site.stats.routes.get(route, 0) + 1
        pool = site.pools.get(pool_name) if pool_name is not None else None
        try:
            if pool is None:
                keep = await self._own_response(req, ex, 404)
            else:
                keep = await self._proxy(site, pool, req, ex)
        except HttpError as e:
            ex.status = e.status
            await self._reply_error(e.status, e.reason)
            keep = False
        finally:
            self._account(site, req, ex)
        return keep and not self.worker.draining

    async def _own_response(self, req: Request, ex: _Exchange, status: int) -> bool:
        """Answer ``status`` ourselves; keep the connection only if the request has no
        body we would have to read and discard."""
        keep = req.keep_alive and req.framing.kind == NO_BODY and req.upgrade is None
        ex.status = status
        response = http1.error_response(status, close=not keep)
        ex.bytes_out = len(response.partition(b"\r\n\r\n")[2])
        try:
            await self.wire.send(response)
        except OSError:
            return False
        return keep

    def _account(self, site: Site, req: Request, ex: _Exchange) -> None:
        st = site.stats
        cls = f"{ex.status // 100}xx" if ex.status else "cut"
        st.statuses[cls] = st.statuses.get(cls, 0) + 1
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

    async def _proxy(self, site: Site, pool: Pool, req: Request, ex: _Exchange) -> bool:
        self.continued = False
        self.request_expects_continue = req.expect_continue
        if req.framing.kind == CHUNKED:
            await self._first_chunk()
        tried: set[int] = set()
        retried_stale = False
        while True:
            got = await self._upstream(site, pool, req, ex, tried)
            if got is None:
                return False
            br, up, reused = got
            cut = self.cut
            br.flows[id(cut)] = cut
            if br.removed and self.worker.snapshot is not None:
                cut.cut_at(trio.current_time() + self.worker.snapshot.drain_timeout)
            br.stats.active += 1
            br.stats.requests += 1
            try:
                return await self._forward(site, pool, br, up, req, ex, reused)
            except _Stale:
                up.close()
                # A keep-alive connection the backend had closed: the request never got
                # there, so it may go again, once, on a fresh connection.
                if retried_stale or not req.idempotent:
                    await self._own_response(req, ex, 502)
                    raise _Closing from None
                retried_stale = True
            except BaseException:
                up.close()
                raise
            finally:
                br.stats.active -= 1
                br.flows.pop(id(cut), None)
                # The request is over: a drain deadline applies to it, not to the
                # connection's next requests (which go to backends still in the pool).
                if cut.scope.deadline != math.inf:
                    cut.scope.deadline = math.inf

    async def _upstream(self, site: Site, pool: Pool, req: Request, ex: _Exchange,
                        tried: set[int]) -> tuple[BackendRuntime, PlainWire | TlsWire,
                                                  bool] | None:
        """A connection to a backend of ``pool``: an idle keep-alive one if there is one,
        else a new one, trying the next backend on a connect failure (idempotent
        requests only). None after edgelb answered 502 or 503 itself."""
        lst = site.listener
        key = self.client[0].encode()
        failed = False
        while True:
            now = trio.current_time()
            i = pool.pick(key, tried, now)
            if i is None:
                status = 502 if failed else 503
                if not failed:
                    site.stats.no_backend += 1
                await self._own_response(req, ex, status)
                return None
            br = pool.runtime(i)
            ex.backend = br.key
            while br.idle:
                idle = br.idle.pop()
                if now - idle.since < lst.timeouts.keepalive and idle.wire.alive():
                    ex.connect_ms = 0.0
                    return br, idle.wire, True
                idle.wire.close()
            tried.add(i)
            t0 = time.monotonic()
            family = socket.AF_INET6 if ":" in br.backend.host else socket.AF_INET
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with trio.fail_after(lst.timeouts.connect):
                    await sock.connect(br.address)
                    wire: PlainWire | TlsWire
                    ctx = site.backend_contexts.get(pool.name)
                    if ctx is not None:
                        tls = pool.tls_spec
                        name = (tls.server_name if tls and tls.server_name else
                                br.backend.host)
                        wire = TlsWire(sock, ctx, server=False, server_hostname=name)
                        await wire.handshake()
                    else:
                        wire = PlainWire(sock)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
                sock.close()
                br.connect_failed(lst.name, e)
                failed = True
                if not req.idempotent:
                    await self._own_response(req, ex, 502)
                    return None
                continue
            br.passive.success()
            br.stats.connections += 1
            ex.connect_ms = (time.monotonic() - t0) * 1000
            return br, wire, False

    async def _forward(self, site: Site, pool: Pool, br: BackendRuntime,
                       up: PlainWire | TlsWire, req: Request, ex: _Exchange,
                       reused: bool) -> bool:
        lst = site.listener
        client_ip = self.client[0]
        head = http1.upstream_head(req, client_ip, self.proto, site.is_trusted(client_ip))
        kind = req.framing.kind
        try:
            if kind == NO_BODY:
                await up.send(head)
            else:
                if req.expect_continue and not self.buf and not self.continued:
                    self.continued = True
                    await self.wire.send(http1.CONTINUE)
                await up.send(head)
                await self._request_body(req, up, ex)
        except OSError:
            if reused and kind == NO_BODY:
                raise _Stale from None
            raise _Closing from None
        resp, rbuf = await self._response_head(req, up, ex, reused and ex.bytes_in == 0)
        ex.status = resp.status
        if resp.status == 101:
            if req.upgrade is None:
                raise HttpError(502, "101 to a request that did not ask to switch")
            await self.wire.send(http1.downstream_head(resp, False, False, switching=True))
            await self._tunnel(up, rbuf, lst.timeouts.idle, ex)
            raise _Closing
        client_keep = req.keep_alive and not self.worker.draining
        rkind = resp.framing.kind
        to_client_chunked = rkind == CHUNKED or (rkind == UNTIL_CLOSE and req.minor == 1)
        if rkind in (CHUNKED, UNTIL_CLOSE) and req.minor == 0:
            client_keep = False  # an HTTP/1.0 client can only see the end as a close
            to_client_chunked = False
        head_out = http1.downstream_head(resp, to_client_chunked, not client_keep,
                                         keep_alive_10=client_keep and req.minor == 0)
        complete = await self._response_body(resp, rbuf, up, head_out, to_client_chunked, ex)
        if not complete:
            raise _Closing
        if resp.keep_alive and lst.http is not None and \
                len(br.idle) < lst.http.backend_keepalive and not br.removed:
            br.idle.append(IdleUpstream(up, trio.current_time()))
        else:
            up.close()
        return client_keep

    async def _request_body(self, req: Request, up: PlainWire | TlsWire,
                            ex: _Exchange) -> None:
        timeout = self.site.listener.timeouts.body
        if req.framing.kind == LENGTH:
            left = req.framing.length
            buf = self.buf
            while True:
                if buf:
                    piece, buf = buf[:left], buf[left:]
                    await up.send(piece)
                    left -= len(piece)
                    ex.bytes_in += len(piece)
                if not left:
                    self.buf = buf
                    return
                buf = await self._client_read(timeout)
        decoder, pieces = self.chunks
        data = b""
        while True:
            if data or pieces or decoder.done:
                pieces = pieces + decoder.feed(data) if data else pieces
                if pieces:
                    out = b"".join(http1.chunk(p) for p in pieces)
                    await up.send(out)
                    ex.bytes_in += sum(len(p) for p in pieces)
                    pieces = []
                if decoder.done:
                    await up.send(http1.LAST_CHUNK)
                    self.buf = decoder.rest
                    return
            data = await self._client_read(timeout)

    async def _first_chunk(self) -> None:
        """Read until the first chunk size line is validated, before any backend is
        chosen: a body that is broken from its start never reaches a backend."""
        decoder = http1.ChunkedDecoder()
        if self.request_expects_continue and not self.buf:
            self.continued = True
            await self._send_client(http1.CONTINUE)
        data, self.buf = self.buf, b""
        pieces: list[bytes] = []
        while True:
            pieces += decoder.feed(data)
            if pieces or decoder.done:
                break
            data = await self._client_read(self.site.listener.timeouts.body)
        self.chunks = (decoder, pieces)

    async def _client_read(self, patience: float) -> bytes:
        self._arm("body", patience)
        try:
            data = await self.wire.recv()
        except OSError:
            raise _Closing from None
        self._disarm()
        if not data:
            raise _Closing  # the client went away mid-body: nothing to answer
        return data

    async def _response_head(self, req: Request, up: PlainWire | TlsWire, ex: _Exchange,
                             may_be_stale: bool) -> tuple[Response, bytes]:
        self._arm("response", self.site.listener.timeouts.response)
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    up.close()
                    raise HttpError(502, "response head too large")
                try:
                    data = await up.recv()
                except OSError:
                    data = b""
                if not data:
                    up.close()
                    if may_be_stale and not buf:
                        raise _Stale
                    raise HttpError(502, "backend closed before responding")
                buf += data
                end = buf.find(b"\r\n\r\n")
            self._disarm()
            try:
                resp = http1.parse_response(buf[:end], req.method)
            except HttpError:
                up.close()
                raise
            buf = buf[end + 4:]
            if 100 <= resp.status < 200 and resp.status != 101:
                if resp.status != 100 or not req.expect_continue:
                    await self.wire.send(http1.downstream_head(resp, False, False))
                continue
            return resp, buf

    async def _response_body(self, resp: Response, rbuf: bytes, up: PlainWire | TlsWire,
                             head: bytes, chunked: bool, ex: _Exchange) -> bool:
        """Stream the body to the client; False when it could not be delivered whole (the
        client connection must then close without a proper end)."""
        timeout = self.site.listener.timeouts.response
        kind = resp.framing.kind
        if kind == NO_BODY:
            await self._send_client(head)
            return True
        if kind == LENGTH:
            left = resp.framing.length
            first = rbuf[:left]
            await self._send_client(head + first)
            left -= len(first)
            ex.bytes_out += len(first)
            while left:
                data = await self._backend_read(up, timeout)
                if not data:
                    return False
                piece = data[:left] if len(data) > left else data
                await self._send_client(piece)
                left -= len(piece)
                ex.bytes_out += len(piece)
            return True
        if kind == CHUNKED:
            decoder = http1.ChunkedDecoder(status=502)
            data = rbuf
            out = head
            while True:
                if data:
                    try:
                        pieces = decoder.feed(data)
                    except HttpError:
                        return False
                    for p in pieces:
                        out += http1.chunk(p) if chunked else p
                        ex.bytes_out += len(p)
                    if decoder.done:
                        await self._send_client(out + http1.LAST_CHUNK if chunked else out)
                        return True
                if out:
                    await self._send_client(out)
                    out = b""
                data = await self._backend_read(up, timeout)
                if not data:
                    return False
        # Until close: the backend's close ends the body, which we re-frame as chunks for
        # an HTTP/1.1 client so that its connection can stay open.
        await self._send_client(head + (http1.chunk(rbuf) if chunked and rbuf else rbuf))
        ex.bytes_out += len(rbuf)
        while True:
            data = await self._backend_read(up, timeout)
            if not data:
                if chunked:
                    await self._send_client(http1.LAST_CHUNK)
                return True
            await self._send_client(http1.chunk(data) if chunked else data)
            ex.bytes_out += len(data)

    async def _send_client(self, data: bytes) -> None:
        # A client that stops reading may stall a send for as long as a body may stall.
        self._arm("send", self.site.listener.timeouts.body)
        try:
            await self.wire.send(data)
        except OSError:
            raise _Closing from None
        self._disarm()

    async def _backend_read(self, up: PlainWire | TlsWire, patience: float) -> bytes:
        self._arm("response_body", patience)
        try:
            data = await up.recv()
        except OSError:
            data = b""
        self._disarm()
        return data

    async def _tunnel(self, up: PlainWire | TlsWire, rbuf: bytes, idle: float,
                      ex: _Exchange) -> None:
        """After 101 Switching Protocols: bytes both ways until either side closes or the
        connection idles out."""
        deadline = [trio.current_time() + idle]

        async def pump(src: PlainWire | TlsWire, dst: PlainWire | TlsWire, first: bytes,
                       count: Callable[[int], None], scope: trio.CancelScope) -> None:
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
                nursery.start_soon(pump, self.wire, up, self.buf, count_in, scope)
                nursery.start_soon(pump, up, self.wire, rbuf, count_out, scope)
                self.buf = b""
            outer.cancel_scope.cancel()
        up.close()
