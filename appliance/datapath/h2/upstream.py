"""HTTP/2 connections to backends (h2c, or h2 over TLS), shared: the streams of any
client connection of this worker are multiplexed over a backend's connections, up to
the streams the backend allows at once, and a connection closes once it has been idle
for the listener's keep-alive timeout."""

from __future__ import annotations

import logging
import math
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import h2.events
import h2.exceptions
import trio
from h2.connection import ConnectionState

from ..backends import BackendRuntime, BackendSet
from ..connect import Upstream
from ..errors import BackendGone
from ..forward import Exchange, timed_connect
from ..wire import PlainWire, TlsWire, Wire
from .link import H2Link, machine
from .messages import Headers

GONE = ("gone",)
log = logging.getLogger("edgelb.datapath")


@dataclass
class BackendStream:
    """One stream to a backend: what the backend sends on it arrives in ``events``
    (("headers", h, ended), ("data", bytes, flow-controlled length), ("trailers", h),
    ("end",), ("reset", code), GONE)."""

    stream_id: int
    send: trio.MemorySendChannel[tuple[Any, ...]]
    events: trio.MemoryReceiveChannel[tuple[Any, ...]]
    unacked: int = 0  # received, counted against the windows, not yet acknowledged


class H2Upstream:
    """One HTTP/2 connection to a backend."""

    def __init__(self, br: BackendRuntime, wire: Wire, keepalive: float) -> None:
        self.br = br
        self.link = H2Link(machine(client_side=True), wire)
        self.streams: dict[int, BackendStream] = {}
        self.keepalive = keepalive
        self.last_stream = math.inf  # after the backend's GOAWAY: the last it serves
        self.gone = False
        self.idle = trio.Event()  # set while no stream is open

    def has_room(self) -> bool:
        """Whether a new stream may go on this connection now."""
        conn = self.link.conn
        return (not self.gone and self.last_stream == math.inf and
                len(self.streams) < conn.remote_settings.max_concurrent_streams)

    def start(self) -> None:
        self.link.conn.initiate_connection()
        self.link.queue()

    async def run(self) -> None:
        """Write and read until the backend closes (or this connection idles out), then
        fail the streams still open."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.link.write)
            await self._read()
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        conn, wire = self.link.conn, self.link.wire
        try:
            while not self.gone:
                wait = self.keepalive if not self.streams else math.inf
                with trio.move_on_after(wait) as idle:
                    try:
                        data = await wire.recv()
                    except (OSError, trio.ClosedResourceError):
                        data = b""  # the backend went, or ``close`` closed the wire
                if idle.cancelled_caught or not data:
                    return
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    return
                for ev in events:
                    self._event(ev)
                await self.link.flush()
        except (OSError, trio.ClosedResourceError):
            return
        except Exception:
            # A defect must cost this connection's streams, never the worker.
            log.exception("HTTP/2 backend %s failed", self.br.key)
        finally:
            self.close()

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            # Ended here: a trailers-only response (gRPC's errors come so).
            self._to(ev.stream_id, ("headers", ev.headers, ev.stream_ended is not None))
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is None:
                self.link.ack(ev.stream_id, ev.flow_controlled_length)
            else:
                st.unacked += ev.flow_controlled_length
                st.send.send_nowait(("data", ev.data, ev.flow_controlled_length))
        elif isinstance(ev, h2.events.TrailersReceived):
            self._to(ev.stream_id, ("trailers", ev.headers))
        elif isinstance(ev, h2.events.StreamEnded):
            self._to(ev.stream_id, ("end",))
        elif isinstance(ev, h2.events.StreamReset):
            self._to(ev.stream_id, ("reset", ev.error_code))
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.link.opened()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            # The backend goes away: no new streams here; those it still serves (up to
            # its last stream id) finish. h2 would refuse their frames after a GOAWAY,
            # so its machine is kept open for them.
            self.last_stream = ev.last_stream_id if ev.last_stream_id is not None else 0
            self.link.conn.state_machine.state = ConnectionState.CLIENT_OPEN
            for sid in [s for s in self.streams if s > self.last_stream]:
                self._to(sid, GONE)
            if not self.streams:
                self.gone = True

    def _to(self, stream_id: int, item: tuple[Any, ...]) -> bool:
        st = self.streams.get(stream_id)
        if st is None:
            return False
        st.send.send_nowait(item)
        return True

    def open(self, headers: Headers, end: bool) -> BackendStream:
        """A new stream carrying the request ``headers`` (and its end, with ``end``),
        queued for the writer: registered before anything can be cancelled, so that
        ``finish`` always finds it."""
        conn = self.link.conn
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=end)
        send, events = trio.open_memory_channel[tuple[Any, ...]](math.inf)
        st = BackendStream(sid, send, events)
        self.streams[sid] = st
        self.link.queue()
        return st

    async def send(self, st: BackendStream, data: bytes, end: bool = False) -> None:
        await self.link.send_data(st.stream_id, data, end)

    async def end(self, st: BackendStream, trailers: Headers | None = None) -> None:
        """The end of the request body, with the client's trailers if it sent any."""
        if trailers:
            self.link.conn.send_headers(st.stream_id, trailers, end_stream=True)
        else:
            self.link.conn.end_stream(st.stream_id)
        await self.link.flush()

    async def consumed(self, st: BackendStream, length: int) -> None:
        """The client took ``length`` bytes of the response: the backend may send more."""
        st.unacked -= length
        self.link.ack(st.stream_id, length)
        await self.link.flush()

    def finish(self, st: BackendStream, reset: bool) -> None:
        """The exchange is over; ``reset`` the stream if it did not end cleanly. What
        the backend sent that nobody read is acknowledged: it counted against the
        connection's window, and a connection whose window leaks away stalls every
        stream on it. No waiting here: it runs when its stream's task is cancelled."""
        self.streams.pop(st.stream_id, None)
        if st.unacked:
            self.link.ack(st.stream_id, st.unacked)
            st.unacked = 0
        if reset and not self.gone:
            try:
                self.link.conn.reset_stream(st.stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                pass
        if not self.gone:
            self.link.queue()
        if self.last_stream != math.inf and not self.streams:
            self.close()

    def retire(self) -> None:
        """No new streams here; close once the open ones are done."""
        if not self.streams:
            self.close()
        else:
            self.last_stream = max(self.streams)

    def close(self) -> None:
        if not self.gone:
            self.gone = True
        for st in self.streams.values():
            st.send.send_nowait(GONE)
        self.streams.clear()
        self.link.wire.close()
        if self in self.br.shared:
            self.br.shared.remove(self)


async def shared_upstream(pool: BackendSet, client_key: bytes, ctx: ssl.SSLContext | None,
                          ex: Exchange, nursery: trio.Nursery) -> Upstream[H2Upstream]:
    """An HTTP/2 connection to a backend of ``pool`` with room for one more stream: one
    already open, or a new one (whose reader runs in ``nursery``). Raises
    BackendUnreachable or Exhausted."""
    keepalive = pool.listener.timeouts.keepalive

    def reuse(br: BackendRuntime, now: float) -> H2Upstream | None:
        ex.backend = br.key
        for up in br.shared:
            assert isinstance(up, H2Upstream)
            if up.has_room():
                return up
        return None

    async def setup(sock: socket.socket, br: BackendRuntime) -> H2Upstream:
        wire: Wire
        if ctx is None:
            wire = PlainWire(sock)
        else:
            tls = pool.tls
            name = tls.server_name if tls and tls.server_name else br.backend.host
            wire = TlsWire(sock, ctx, server=False, server_hostname=name)
            await wire.handshake()
            if wire.selected_alpn_protocol() != "h2":
                wire.close()
                raise ConnectionRefusedError("the backend does not speak h2 (ALPN)")
        up = H2Upstream(br, wire, keepalive)
        up.start()
        br.shared.append(up)
        nursery.start_soon(up.run)
        return up

    # One connect at a time per pool: streams that arrive together (a client opens a
    # hundred at once) would each open a connection before the first one is up.
    lock = _connecting.setdefault((pool.listener.name, pool.name), trio.Lock())
    async with lock:
        return await timed_connect(pool, client_key, setup, ex, reuse=reuse)


_connecting: dict[tuple[str, str], trio.Lock] = {}  # by (listener, pool)


async def next_event(st: BackendStream) -> tuple[Any, ...]:
    """What the backend sent next on ``st``; raises BackendGone once it is gone."""
    try:
        item = await st.events.receive()
    except trio.EndOfChannel:
        raise BackendGone from None
    if item is GONE or item == GONE:
        raise BackendGone
    return item
