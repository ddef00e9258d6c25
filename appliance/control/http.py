"""HTTP/1.1 for the control socket and the metrics endpoint, on h11 (the sans-IO HTTP
library the datapath's own machines are modelled on): one request per connection, a body
only with Content-Length, and answers whole or streamed as chunks."""

from __future__ import annotations

import http
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import h11
import trio

from ..logs import Throttled
from ..process import exhausted

log = logging.getLogger("edgelb.control")
_paused = Throttled(log)

READ_SIZE = 65536
# How long accepting pauses when the box is out of descriptors.
EXHAUSTED_PAUSE = 0.1


async def accept_forever(listener: trio.socket.SocketType,
                         handle: Callable[[trio.socket.SocketType], Awaitable[None]]) -> None:
    """Accept on ``listener`` and ``handle`` each connection in a task of its own, until
    cancelled. Running out of descriptors pauses accepting; it never ends it."""
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn, _ = await listener.accept()
            except OSError as e:
                if exhausted(e):
                    _paused(logging.WARNING, "control: accept paused: %s", e.strerror)
                    await trio.sleep(EXHAUSTED_PAUSE)
                continue  # or the client gave up before we accepted
            nursery.start_soon(handle, conn)


class Refusal(Exception):
    """A request answered with ``status`` and ``message`` before it was understood."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    body: bytes


class Exchange:
    """One request and its answer on a stream."""

    def __init__(self, stream: trio.abc.Stream, max_head: int = 16384) -> None:
        self.stream = stream
        self.max_head = max_head
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)

    async def _next(self) -> object:
        """The next event other than NEED_DATA (a Request, Data, EndOfMessage, ...)."""
        while True:
            try:
                ev = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise Refusal(e.error_status_hint, str(e) or "malformed request") from None
            if ev is not h11.NEED_DATA:
                return ev
            self.conn.receive_data(bytes(await self.stream.receive_some(READ_SIZE)))

    async def request(self, max_body: int) -> Request | None:
        """The request, or None when the client left without sending one. Raises Refusal:
        411 for a chunked body, 413 for one over ``max_body``, 400/431 for a bad head."""
        ev = await self._next()
        if not isinstance(ev, h11.Request):
            return None
        if ev.http_version not in (b"1.0", b"1.1"):
            raise Refusal(505, "only HTTP/1.0 and HTTP/1.1 are served")
        # h11 bounds a head only while it is incomplete: one that came whole in a read
        # is measured here.
        size = len(ev.target) + sum(len(k) + len(v) + 4 for k, v in ev.headers)
        if size > self.max_head:
            raise Refusal(431, f"a request head over {self.max_head} bytes")
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in ev.headers}
        if "transfer-encoding" in headers:
            raise Refusal(411, "send the body with a Content-Length")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > max_body:
            raise Refusal(413, f"a body over {max_body} bytes")
        body = b""
        while True:
            part = await self._next()
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return None
        return Request(ev.method.decode(), ev.target.decode("latin-1"), body)

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        data = self.conn.send(h11.Response(status_code=status, reason=reason,
                                           headers=[("Connection", "close"), *headers]))
        assert data is not None
        return data

    async def answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        """A whole answer (also to a request refused mid-read, which h11 allows); the
        connection closes after it."""
        head = self._head(status, [*headers, ("Content-Length", str(len(body)))])
        tail = self.conn.send(h11.Data(data=body)) or b""
        end = self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(head + tail + end)

    async def answer_stream(self, status: int, items: AsyncIterator[bytes],
                            headers: list[tuple[str, str]]) -> None:
        """An answer of many parts (chunked), until ``items`` ends or the client goes."""
        await self.stream.send_all(self._head(status, [*headers,
                                                       ("Transfer-Encoding", "chunked")]))
        async for item in items:
            data = self.conn.send(h11.Data(data=item))
            assert data is not None
            await self.stream.send_all(data)
