"""An HTTP/1.1 client's request to a pool that speaks HTTP/2: the request goes on a
stream of a shared backend connection, the response comes back as HTTP/1.1 (chunked when
its length is unknown). Trailers have no way back to an HTTP/1.1 client through edgelb,
so gRPC (whose status travels in them) gets a 502 saying why; everything else
translates."""

from __future__ import annotations

import logging

import h2.exceptions
import trio

from ..errors import BackendError, BackendGone, BackendUnreachable, Exhausted
from ..forward import Closing, Forward, at_backend, left_backend, unreachable
from ..http1 import CHUNKED, END_OF_MESSAGE, LENGTH, NO_BODY, REASONS, Framing, Response
from .messages import Headers, backend_request, status_of
from .upstream import BackendStream, H2Upstream, next_event, shared_upstream

log = logging.getLogger("edgelb.datapath")


def response_of(headers: Headers, ended: bool, method: bytes) -> Response:
    """An HTTP/2 response head as the HTTP/1.1 machinery sends it on."""
    status = status_of(headers)
    fields = [(n, v) for n, v in headers if not n.startswith(b":")]
    length = next((v for n, v in fields if n == b"content-length"), None)
    if ended or method == b"HEAD" or status in (204, 304):
        framing = Framing(NO_BODY) if length is None or ended else Framing(LENGTH, int(length))
    elif length is not None and length.isdigit():
        framing = Framing(LENGTH, int(length))
    else:
        fields = [(n, v) for n, v in fields if n != b"content-length"]
        framing = Framing(CHUNKED)
    line = b"HTTP/1.1 %d %s" % (status, REASONS.get(status, "").encode())
    return Response(status, 1, line, fields, framing, True, frozenset())


class ToH2(Forward):
    """One HTTP/1.1 request to an HTTP/2 pool: ``run`` returns whether the client
    connection stays."""

    async def run(self) -> bool:
        req, ex, client = self.req, self.ex, self.client
        if any(n.lower() == b"content-type" and v.startswith(b"application/grpc")
               for n, v in req.fields):
            log.info("client %s: 502 for gRPC over HTTP/1.1: its status is in trailers, "
                     "which HTTP/1.1 cannot carry back", client.client[0])
            return await client.own_response(ex, 502)
        nursery = client.nursery
        assert nursery is not None
        try:
            up = await shared_upstream(self.pool, client.client_key, self.tls, ex, nursery)
        except (BackendUnreachable, Exhausted) as e:
            return await client.own_response(ex, unreachable(self.pool, e))
        conn, br = up.conn, up.backend
        headers = backend_request(req, client.client[0], client.proto, self.trusted,
                                  b"https" if self.pool.tls is not None else b"http", False)
        try:
            bst = conn.open(headers, end=req.framing.kind == NO_BODY)
        except h2.exceptions.ProtocolError:
            return await client.own_response(ex, 502)  # it took no more streams after all
        at_backend(br, client.cut, client.drain_timeout)
        clean = False
        try:
            await conn.link.flush()
            keep = await self._exchange_h2(conn, bst)
            clean = True
            return keep
        except BackendGone:
            if ex.status:
                raise Closing from None  # mid-body: the client sees the close
            return await client.own_response(ex, 502)
        finally:
            left_backend(br, client.cut, ex.bytes_in, ex.bytes_out)
            conn.finish(bst, reset=not clean)

    async def _exchange_h2(self, conn: H2Upstream, bst: BackendStream) -> bool:
        req, ex, client = self.req, self.ex, self.client
        if req.framing.kind != NO_BODY:
            while (ev := await self.body_event()) is not END_OF_MESSAGE:
                assert isinstance(ev, bytes)
                await conn.send(bst, ev)
                ex.bytes_in += len(ev)
            await conn.end(bst)
        with trio.move_on_after(self.timeouts.response) as slow:
            item = await next_event(bst)
            while item[0] == "headers" and 100 <= status_of(item[1]) < 200:
                item = await next_event(bst)
        if slow.cancelled_caught:
            return await client.own_response(ex, 504)
        if item[0] != "headers":
            raise BackendError(f"the backend sent {item[0]} before its response headers")
        resp = response_of(item[1], item[2], req.method)
        ex.status = resp.status
        out = client.conn.send_response(resp, keep=not client.draining)
        ended = item[2]
        while not ended:
            item = await next_event(bst)
            if item[0] == "data":
                ex.bytes_out += len(item[1])
                await client.send_client(out + client.conn.send_data(item[1]))
                out = b""
                await conn.consumed(bst, item[2])
            elif item[0] in ("end", "trailers"):
                ended = True
            elif item[0] == "reset":
                raise Closing  # the body cannot end properly: the client sees the close
        await client.send_client(out + client.conn.send_end())
        return client.conn.keep_alive
