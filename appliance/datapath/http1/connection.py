"""HTTP/1.1 connections as sans-IO state machines, in h11's shape: bytes go in with
``receive_data`` (``b""`` is the end of the stream), events come out of ``next_event``,
and what to send comes back as bytes from ``send_*``. No sockets, no clock: the I/O layer
only moves bytes and keeps the time.

``ServerConnection`` is the client's side of a proxied connection (h11's server role):
request heads with their limits (414, 431), body framing (Content-Length or chunked),
100-continue, keep-alive, and the upgrade to a tunnel. ``BackendConnection`` is the
backend's side (h11's client role): the request head as edgelb sends it on, then the
response with its interim 1xx answers and its framing, including a body that ends when
the backend closes.

Events: a ``Request`` or ``Response`` head; ``bytes`` of body, already decoded;
``END_OF_MESSAGE``; ``NEED_DATA`` (feed more, or ``b""`` at EOF); ``PAUSED`` (a request
was read whole and its response is not done yet). A client that breaks
the protocol gets a ``ClientError`` carrying the status to answer; a backend, a
``BackendError`` (502). A peer that closes mid-message is ``ClientGone`` or ``BackendGone``.
"""

from __future__ import annotations

from enum import StrEnum

from ...model import HttpLimits
from ..errors import BackendError, BackendGone, ClientError, ClientGone
from .chunked import LAST_CHUNK, ChunkedDecoder, chunk
from .heads import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Request,
    Response,
    bare_lf,
    downstream_head,
    error_response,
    parse_request,
    parse_response,
    request_line_end,
    upstream_head,
)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A backend's response head may be this large before it is refused with 502.
MAX_RESPONSE_HEAD = 65536


class Marker:
    """A named event without data (NEED_DATA, END_OF_MESSAGE, PAUSED)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = Marker("NEED_DATA")
END_OF_MESSAGE = Marker("END_OF_MESSAGE")
# The request was read whole; the next one is read after ``start_next_cycle``.
PAUSED = Marker("PAUSED")

Event = Request | Response | bytes | Marker


class Phase(StrEnum):
    """What a connection is waiting for, and so which timeout applies and what its
    expiry answers: a client too slow with its request gets 408, a backend too slow to
    start its response 504 (RFC 9110 15.5.9, 15.6.5); any other wait just closes."""

    FIRST = "first"  # the first request's first byte (timeouts.request)
    IDLE = "idle"  # the next request's first byte (timeouts.keepalive)
    HEAD = "head"  # the rest of a request head (timeouts.request)
    BODY = "body"  # more of the request body (timeouts.body)
    RESPONSE = "response"  # the backend's response head (timeouts.response)
    RESPONSE_BODY = "response_body"  # more of the response body (timeouts.response)
    SEND = "send"  # the client taking what we send (timeouts.body)
    DRAIN = "drain"  # not a wait: the worker is draining, close between requests

    @property
    def answer(self) -> int:
        """The status a timeout in this phase answers with; 0: close without one."""
        return _ANSWERS.get(self, 0)


_ANSWERS = {Phase.FIRST: 408, Phase.HEAD: 408, Phase.BODY: 408, Phase.RESPONSE: 504}


class _Body:
    """Reads one message body out of a buffer: by length, chunked, or until EOF. Chunks
    come out one by one, so that they go on as the sender cut them."""

    __slots__ = ("decoder", "kind", "left", "pieces")

    def __init__(self, kind: int, length: int, status: int) -> None:
        self.kind = kind
        self.left = length
        self.decoder = ChunkedDecoder(status=status) if kind == CHUNKED else None
        self.pieces: list[bytes] = []  # decoded chunks not handed out yet

    def take(self, buf: bytes) -> tuple[bytes | Marker, bytes]:
        """(event, what stays in the buffer): body bytes, END_OF_MESSAGE, or NEED_DATA."""
        kind = self.kind
        if kind == LENGTH:
            if not self.left:
                return END_OF_MESSAGE, buf
            if not buf:
                return NEED_DATA, buf
            n = self.left
            if len(buf) <= n:
                self.left -= len(buf)
                return buf, b""
            self.left = 0
            return buf[:n], buf[n:]
        if kind == CHUNKED:
            if self.pieces:
                return self.pieces.pop(0), buf
            decoder = self.decoder
            assert decoder is not None
            if decoder.done:
                rest, decoder.rest = decoder.rest, b""
                return END_OF_MESSAGE, rest + buf
            if not buf:
                return NEED_DATA, buf
            self.pieces = decoder.feed(buf)
            return self.take(b"")
        if kind == UNTIL_CLOSE:
            return (buf, b"") if buf else (NEED_DATA, buf)
        return END_OF_MESSAGE, buf

    def at_eof(self) -> bool:
        """Whether the end of the stream ends this body properly (only UNTIL_CLOSE)."""
        return self.kind == UNTIL_CLOSE


class ServerConnection:
    """The client's side: requests in, responses out. After a request's
    END_OF_MESSAGE the machine waits (``next_event`` gives PAUSED) until
    ``start_next_cycle``, called once the response went out on a connection that
    stays open; pipelined bytes wait in the buffer meanwhile."""

    __slots__ = ("_body", "_chunked_out", "_continue", "_done", "buf", "eof", "keep_alive",
                 "limits", "request", "requests")

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.buf = b""
        self.eof = False
        self.request: Request | None = None  # the request being served
        self.requests = 0  # requests whose responses went out
        self.keep_alive = True  # whether the connection stays open after this response
        self._body: _Body | None = None
        self._done = False  # the request body was read whole
        self._continue = False  # the client waits for our 100 Continue
        self._chunked_out = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when it closed its side."""
        if data:
            self.buf = self.buf + data if self.buf else data
        else:
            self.eof = True

    @property
    def phase(self) -> Phase:
        """The wait the connection is in while it needs data."""
        if self.request is not None:
            return Phase.BODY
        if self.buf:
            return Phase.HEAD
        return Phase.IDLE if self.requests else Phase.FIRST

    def next_event(self) -> Event:
        """The next Request, body bytes, END_OF_MESSAGE, NEED_DATA or PAUSED. Raises
        ClientError for a request to refuse, ClientGone for a client that left
        mid-request."""
        if self.request is None:
            return self._head()
        if self._done:
            return PAUSED
        body = self._body
        assert body is not None
        ev, self.buf = body.take(self.buf)
        if ev is NEED_DATA and self.eof:
            raise ClientGone
        if ev is END_OF_MESSAGE:
            self._done = True
        return ev

    def _head(self) -> Event:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            limits = self.limits
            request_line_end(buf, limits)
            if len(buf) > limits.max_header_bytes + 4:
                raise ClientError(431, "request header too large")
            if bare_lf(buf):
                raise ClientError(400, "a line ended by LF alone, not CRLF")
            if self.eof:
                # A client that closes between or mid-head gets nothing: no one to read it.
                raise ClientGone
            return NEED_DATA
        req = parse_request(buf[:end], self.limits)
        self.buf = buf[end + 4:]
        self.request = req
        framing = req.framing
        self._body = _Body(framing.kind, framing.length, 400)
        self._done = False
        self._continue = req.expect_continue and framing.kind != NO_BODY
        return req

    def take_continue(self) -> bool:
        """Whether to send CONTINUE now: the client asked for it, its body has not begun
        to arrive, and it was not sent yet (RFC 9110 10.1.1)."""
        if self._continue and not self.buf:
            self._continue = False
            return True
        return False

    # -- what goes to the client ----------------------------------------------------------

    def send_response(self, resp: Response, keep: bool) -> bytes:
        """The head of a final response; ``keep`` is whether edgelb would keep the
        connection (not while draining). An HTTP/1.0 client sees a body of unknown length
        end only at the close; an HTTP/1.1 one gets it re-framed as chunks."""
        req = self.request
        assert req is not None
        keep = keep and req.keep_alive
        kind = resp.framing.kind
        chunked = kind == CHUNKED or (kind == UNTIL_CLOSE and req.minor == 1)
        if kind in (CHUNKED, UNTIL_CLOSE) and req.minor == 0:
            keep = chunked = False
        self.keep_alive = keep
        self._chunked_out = chunked
        return downstream_head(resp, chunked, not keep, keep_alive_10=keep and req.minor == 0)

    def send_error(self, status: int) -> bytes:
        """A response edgelb makes itself (404, 502, 503 ...). The connection stays only
        if the request had no body, which would otherwise have to be read and thrown
        away, and asked for no upgrade."""
        req = self.request
        self.keep_alive = req is not None and req.keep_alive and \
            req.framing.kind == NO_BODY and req.upgrade is None
        return error_response(status, close=not self.keep_alive)

    def send_interim(self, resp: Response) -> bytes:
        """A 1xx other than 101, passed on as it came."""
        return downstream_head(resp, False, False)

    def send_switch(self, resp: Response) -> bytes:
        """101 Switching Protocols: from here the connection is a tunnel."""
        self.keep_alive = False
        return downstream_head(resp, False, False, switching=True)

    def send_data(self, data: bytes) -> bytes:
        return chunk(data) if self._chunked_out and data else data

    def send_end(self) -> bytes:
        return LAST_CHUNK if self._chunked_out else b""

    def start_next_cycle(self) -> None:
        """The response went out whole and the connection stays: read the next request."""
        self.request = None
        self._body = None
        self.requests += 1

    def trailing_data(self) -> bytes:
        """What the client sent beyond the request (after an upgrade: the tunnel's)."""
        data, self.buf = self.buf, b""
        return data


class BackendConnection:
    """The backend's side for one request: ``send_request`` gives the head to send, and
    the response comes back as events. ``reusable`` says whether the connection may carry
    another request afterwards."""

    __slots__ = ("_body", "_chunked_out", "buf", "eof", "method", "received", "response")

    def __init__(self) -> None:
        self.buf = b""
        self.eof = False
        self.received = 0  # bytes of response seen: none means a reused connection was stale
        self.method = b"GET"
        self.response: Response | None = None
        self._body: _Body | None = None
        self._chunked_out = False

    def send_request(self, req: Request, client_ip: str, proto: str, trusted: bool) -> bytes:
        """The request head as the backend gets it (see ``upstream_head``)."""
        self.method = req.method
        self._chunked_out = req.framing.kind == CHUNKED
        return upstream_head(req, client_ip, proto, trusted)

    def send_data(self, data: bytes) -> bytes:
        return chunk(data) if self._chunked_out and data else data

    def send_end(self) -> bytes:
        return LAST_CHUNK if self._chunked_out else b""

    def receive_data(self, data: bytes) -> None:
        """Bytes from the backend; ``b""`` when it closed."""
        if data:
            self.received += len(data)
            self.buf = self.buf + data if self.buf else data
        else:
            self.eof = True

    def next_event(self) -> Event:
        """A Response head (1xx interim ones too), body bytes, END_OF_MESSAGE or
        NEED_DATA. Raises BackendError for a response not to pass on, BackendGone for a
        backend that closed before its response was whole."""
        body = self._body
        if body is None:
            return self._head()
        ev, self.buf = body.take(self.buf)
        if ev is NEED_DATA and self.eof:
            if body.at_eof():
                self._body = _Body(NO_BODY, 0, 502)
                return END_OF_MESSAGE
            raise BackendGone
        return ev

    def _head(self) -> Event:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_RESPONSE_HEAD:
                raise BackendError("response head too large")
            if bare_lf(buf):
                raise BackendError("a response line ended by LF alone, not CRLF")
            if self.eof:
                if not buf:
                    raise BackendGone
                raise BackendError("backend closed before responding")
            return NEED_DATA
        resp = parse_response(buf[:end], self.method)
        self.buf = buf[end + 4:]
        if 100 <= resp.status < 200 and resp.status != 101:
            return resp  # interim: the final response is still to come
        self.response = resp
        framing = resp.framing
        self._body = _Body(framing.kind, framing.length, 502)
        return resp

    def trailing_data(self) -> bytes:
        """What the backend sent after its response head (after 101: the tunnel's)."""
        data, self.buf = self.buf, b""
        return data

    @property
    def reusable(self) -> bool:
        """The response ended by its framing, the backend keeps the connection open, and
        it sent nothing beyond the response."""
        resp = self.response
        return resp is not None and resp.keep_alive and not self.buf and not self.eof
