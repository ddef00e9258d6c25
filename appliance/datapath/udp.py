"""UDP forwarding: one flow per client address, with a connected socket towards its
backend; replies go back from the listener's address to that client; idle flows expire,
and at ``max_flows`` the least recently used is evicted."""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import dataclass

import trio

from . import wire
from .backends import BackendRuntime, BackendSet
from .flows import Flow, FlowBook, FlowTable
from .listeners import Bound, SocketKey

log = logging.getLogger("edgelb.datapath")

# A flood of new clients past max_flows would otherwise flood the log.
EVICT_LOG_EVERY = 10.0


@dataclass
class UdpFlow:
    flow: Flow
    br: BackendRuntime
    upstream: socket.socket
    scope: trio.CancelScope
    closed: bool = False

    def cut_at(self, deadline: float) -> None:
        self.scope.deadline = min(self.scope.deadline, deadline)

    def uncut(self) -> None:
        self.scope.deadline = math.inf  # idle flows expire through the flow table

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.br.stats.active -= 1
            self.scope.cancel()
            wire.close(self.upstream)


class UdpForwarder:
    """The UDP flows of one worker. ``sets`` are the backend sets in force by socket
    (the worker replaces them with each Snapshot)."""

    def __init__(self, book: FlowBook) -> None:
        self.book = book
        self.sets: dict[SocketKey, BackendSet] = {}

    async def serve(self, bound: Bound) -> None:
        """One listening UDP socket, until its listener goes."""
        lst = bound.listener
        table: FlowTable[UdpFlow] = FlowTable(lst.max_flows, lst.timeouts.idle)
        with bound.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire, table)
                await self._datagrams(bound, table, nursery)

    async def _datagrams(self, bound: Bound, table: FlowTable[UdpFlow],
                         nursery: trio.Nursery) -> None:
        last_evict_log = -1e9
        while True:
            # The raw calls below do not yield when the socket is ready: under a flood
            # this keeps the other flows (and cancellation) going.
            await trio.lowlevel.checkpoint()
            data, client = await wire.recv_datagram(bound.sock)
            now = trio.current_time()
            uf = table.get(client, now)
            if uf is None:
                pool = self.sets.get(bound.listener.socket_key)
                if pool is None:
                    continue
                uf = self._open(pool, client)
                if uf is None:
                    pool.stats.no_backend += 1
                    continue
                evicted = table.add(client, uf, now)
                if evicted:
                    pool.stats.udp_evicted += len(evicted)
                    if now - last_evict_log >= EVICT_LOG_EVERY:
                        log.warning("listener %s: max_flows %d reached, evicting oldest "
                                    "flows (%d so far)", bound.listener.name, table.max_flows,
                                    pool.stats.udp_evicted)
                        last_evict_log = now
                    for old in evicted:
                        old.close()
                nursery.start_soon(self._replies, uf, table, bound)
            try:
                await wire.send_datagram(uf.upstream, data)
            except OSError:
                uf.close()
                table.remove(client, uf)
                continue
            uf.flow.bytes_in += len(data)
            uf.br.stats.bytes_in += len(data)

    def _open(self, pool: BackendSet, client: tuple[str, int]) -> UdpFlow | None:
        i = pool.pick(client[0].encode(), set(), trio.current_time())
        if i is None:
            return None
        br = pool.runtime(i)
        try:
            up = wire.datagram_socket(br.address)
        except OSError as e:
            if wire.exhausted(e):
                pool.stats.exhausted += 1
            else:
                br.stats.connect_failures += 1
            return None
        flow = Flow(pool.listener.name, "udp", client, br.key, trio.current_time(),
                    state="established")
        br.stats.active += 1
        br.stats.connections += 1
        pool.stats.accepted += 1
        uf = UdpFlow(flow, br, up, trio.CancelScope())
        flow.cut_at = uf.cut_at
        self.book.begin(flow)
        br.flows[flow.id] = uf
        return uf

    async def _replies(self, uf: UdpFlow, table: FlowTable[UdpFlow], bound: Bound) -> None:
        try:
            with uf.scope:
                while True:
                    await trio.lowlevel.checkpoint()
                    try:
                        data = await wire.recv(uf.upstream)
                    except OSError:
                        # ECONNREFUSED from an ICMP port unreachable: the flow is dead.
                        break
                    await wire.send_datagram(bound.sock, data, uf.flow.client)
                    uf.flow.bytes_out += len(data)
                    uf.br.stats.bytes_out += len(data)
                    table.touch(uf.flow.client, trio.current_time())
        finally:
            table.remove(uf.flow.client, uf)
            uf.close()
            uf.br.flows.pop(uf.flow.id, None)
            self.book.end(uf.flow)

    @staticmethod
    async def _expire(table: FlowTable[UdpFlow]) -> None:
        tick = max(0.05, min(1.0, table.idle / 4))
        while True:
            await trio.sleep(tick)
            for uf in table.expire(trio.current_time()):
                uf.close()
