"""L4 TCP forwarding: a client connection is connected to a backend of its listener
(trying the next on a failure) and relayed both ways until either side is done."""

from __future__ import annotations

import socket

import trio

from . import proxyproto, wire
from .backends import BackendRuntime, Backends, BackendSet
from .connect import connect_to_pool
from .errors import BackendUnreachable, Exhausted
from .flows import Flow, FlowBook
from .relay import HAVE_SPLICE, Relay


class TcpForwarder:
    """The TCP flows of one worker."""

    def __init__(self, book: FlowBook, backends: Backends,
                 use_splice: bool = HAVE_SPLICE) -> None:
        self.book = book
        self.backends = backends
        self.use_splice = use_splice
        self.drain_timeout = 30.0  # the Snapshot's: how long a removed backend's flows live

    async def serve(self, sock: socket.socket, client: tuple[str, int],
                    pool: BackendSet) -> None:
        """One client connection, until both directions are done (or it is cut)."""
        lst = pool.listener
        stats = pool.stats
        stats.accepted += 1
        try:
            if lst.max_connections and sum(pool.active) >= lst.max_connections:
                stats.over_limit += 1
                return
            flow = Flow(lst.name, "tcp", client, "", trio.current_time())
            self.book.begin(flow)
            try:
                await self._forward(sock, client, pool, flow)
            finally:
                self.book.end(flow)
        finally:
            wire.close(sock)

    async def _forward(self, sock: socket.socket, client: tuple[str, int], pool: BackendSet,
                       flow: Flow) -> None:
        lst = pool.listener

        async def setup(up: socket.socket, br: BackendRuntime) -> socket.socket:
            if lst.proxy_protocol != "none":
                await wire.send_all(up, proxyproto.header(lst.proxy_protocol, client,
                                                          sock.getsockname()))
            return up

        try:
            upstream = await connect_to_pool(pool, client[0].encode(), setup)
        except BackendUnreachable:
            # Every backend is down or refused: close at once rather than leave the
            # client waiting for a timeout.
            pool.stats.no_backend += 1
            return
        except Exhausted:
            pool.stats.exhausted += 1
            return
        try:
            await self._relay(flow, upstream.backend, sock, upstream.conn, lst.name,
                              lst.timeouts.idle)
        finally:
            wire.close(upstream.conn)

    async def _relay(self, flow: Flow, br: BackendRuntime, sock: socket.socket,
                     up: socket.socket, listener: str, idle: float) -> None:
        st = br.stats

        def on_bytes(direction: int, n: int) -> None:
            if direction == 0:
                flow.bytes_in += n
                st.bytes_in += n
            else:
                flow.bytes_out += n
                st.bytes_out += n

        relay = Relay(sock, up, idle, on_bytes, self.use_splice)
        flow.backend = br.key
        flow.state = "established"
        flow.cut_at = relay.cut_at
        st.active += 1
        st.connections += 1
        br.flows[flow.id] = relay
        if br.removed:
            relay.cut_at(trio.current_time() + self.drain_timeout)
        try:
            await relay.run()
        finally:
            st.active -= 1
            br.flows.pop(flow.id, None)
            self.backends.release(listener, br)
