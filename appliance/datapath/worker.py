"""The datapath of one process: it puts Snapshots in force (listening sockets, backend
sets, HTTP sites) and keeps the table of open flows. The jobs are elsewhere: sockets in
``listeners``, TCP in ``l4``, UDP in ``udp``, HTTP in ``l7``, backend state in
``backends``. New flows use the newest Snapshot at once; open flows keep theirs; flows to
a backend a Snapshot removed drain until ``drain_timeout``.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

import trio

from ..model import Listener, Proto, Snapshot, TlsCert
from ..process import Ebb, give_back_memory
from ..views import FlowRow, ListenerStats, Traffic
from . import wire
from .access import AccessLog
from .backends import Backends, BackendSet
from .flows import Flow
from .l4 import TcpForwarder
from .l7 import HttpProxy
from .listeners import Listeners, SocketKey
from .relay import HAVE_SPLICE
from .routing import RouteTable
from .site import Site
from .tls import client_context, server_context
from .udp import UdpForwarder

# How often a worker looks whether a burst of flows has ebbed (see process.Ebb).
EBB_EVERY = 2.0


class Worker:
    """Serves one Snapshot at a time inside a trio nursery."""

    def __init__(self, nursery: trio.Nursery, worker_id: int = 0,
                 use_splice: bool = HAVE_SPLICE) -> None:
        self.nursery = nursery
        self.worker_id = worker_id
        self.snapshot: Snapshot | None = None
        self.stats: Traffic = {}
        self.flows: dict[int, Flow] = {}
        self.idle = trio.Event()
        self.idle.set()
        self.backends = Backends()
        self.sets: dict[SocketKey, BackendSet] = {}
        self.tcp = TcpForwarder(self, self.backends, use_splice)
        self.udp = UdpForwarder(self)
        self.access = AccessLog()
        self.http = HttpProxy(self, self.access, nursery)
        self.listeners = Listeners(nursery, self._accept, self.udp.serve, self._exhausted)
        self._timer = False
        # TLS contexts by certificate fingerprints: a reload that keeps the certificates
        # keeps the contexts (and their session caches).
        self.tls_contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self.ebb = Ebb()
        nursery.start_soon(self._give_back_after_bursts)
        nursery.start_soon(self.access.run)

    # -- the flow table (FlowBook) -------------------------------------------------------

    def begin(self, flow: Flow) -> None:
        self.flows[flow.id] = flow
        if len(self.flows) > self.ebb.peak:
            self.ebb.peak = len(self.flows)
        if self.idle.is_set():
            self.idle = trio.Event()

    def end(self, flow: Flow) -> None:
        self.flows.pop(flow.id, None)
        if not self.flows:
            self.idle.set()

    async def _give_back_after_bursts(self) -> None:
        """Memory back to the OS once a burst of flows has ebbed: 3,000 idle TLS
        connections took a worker from 54 to 134 MiB, and it stayed at 140 after they
        closed (free, but kept by the C allocator); given back, 86."""
        while True:
            await trio.sleep(EBB_EVERY)
            if self.ebb.ebbed(len(self.flows)):
                give_back_memory()

    # -- Snapshots -----------------------------------------------------------------------

    def apply(self, snap: Snapshot, strict: bool = False,
              all_or_nothing: bool = False) -> list[str]:
        """Put ``snap`` in force. Returns the errors of listeners that could not be bound
        (with ``strict``, raises the first; with ``all_or_nothing``, ``snap`` is then not
        put in force at all and the Snapshot in force keeps every socket it has)."""
        errors = self.listeners.apply(snap.listeners, strict, all_or_nothing)
        if errors and all_or_nothing:
            return errors
        sets: dict[SocketKey, BackendSet] = {}
        sites: dict[SocketKey, Site] = {}
        for lst in snap.listeners:
            stats = self.stats.setdefault(lst.name, ListenerStats())
            composed = self.backends.compose(lst, stats)
            if lst.http is None:
                sets[lst.socket_key] = composed[""]
            else:
                sites[lst.socket_key] = self._site(lst, composed, stats)
        self.backends.retire(trio.current_time(), snap.drain_timeout)
        if sites and not self._timer:
            self._timer = True
            self.nursery.start_soon(self.http.run_timer)
        self.sets = self.udp.sets = sets
        self.http.set_sites(sites)
        self.tcp.drain_timeout = self.http.drain_timeout = snap.drain_timeout
        self.access.configure(snap.access_log)
        self.snapshot = snap
        return errors

    def _site(self, lst: Listener, pools: dict[str, BackendSet], stats: ListenerStats) -> Site:
        assert lst.http is not None
        backend_contexts = {p.name: client_context(p.tls, p.protocol == "h2")
                            for p in lst.http.pools if p.tls is not None}
        return Site(lst, RouteTable(lst.http.routes, lst.http.default_pool), pools, stats,
                    self._tls_context(lst.http.tls, lst.http.http2)
                    if lst.protocol == Proto.HTTPS else None,
                    backend_contexts,
                    tuple(ipaddress.ip_network(n) for n in lst.http.trusted_proxies))

    def _tls_context(self, certs: tuple[TlsCert, ...], http2: bool) -> ssl.SSLContext:
        key = (*(f"{c.fingerprint}:{','.join(c.hosts)}" for c in certs), f"h2={http2}")
        ctx = self.tls_contexts.get(key)
        if ctx is None:
            ctx = server_context(certs, http2)
            self.tls_contexts[key] = ctx
        return ctx

    def _accept(self, sock: socket.socket, client: tuple[str, int], lst: Listener) -> None:
        key = lst.socket_key
        pool = self.sets.get(key)
        if pool is not None:
            self.nursery.start_soon(self.tcp.serve, sock, client, pool)
        elif (site := self.http.sites.get(key)) is not None:
            self.nursery.start_soon(self.http.serve, sock, client, site)
        else:
            wire.close(sock)

    def _exhausted(self, lst: Listener) -> None:
        self.stats.setdefault(lst.name, ListenerStats()).exhausted += 1

    def set_health(self, down: set[tuple[str, str]]) -> None:
        """Active health verdicts from the control process: (listener, backend key) down."""
        self.backends.set_health(down)

    def flow_rows(self) -> list[FlowRow]:
        """Every open flow as a row of the control API's flow table (``FLOW_FIELDS``):
        plain tuples, cheap to send to the control process and to sort there."""
        now = trio.current_time()
        vips = {lst.name: lst.bind_text for lst in self.snapshot.listeners} \
            if self.snapshot else {}
        wid = self.worker_id
        return [(f"{wid}.{f.id}", f.listener, f.protocol, wire.address_text(*f.client),
                 vips.get(f.listener, ""), f.backend, f.bytes_in, f.bytes_out,
                 round(now - f.started, 1), f.state, "user")
                for f in list(self.flows.values())]

    def cut_flow(self, flow_id: int) -> bool:
        """Cut one open flow now (an operator's action); False when it is not open."""
        flow = self.flows.get(flow_id)
        if flow is None or flow.cut_at is None:
            return False
        flow.cut_at(trio.current_time())
        return True

    async def drain(self, deadline: float) -> None:
        """Stop accepting and wait for flows to end, cutting them at ``deadline``. HTTP
        connections close between requests: idle ones at once, busy ones after their
        response (which says ``Connection: close``)."""
        self.listeners.close_all()
        self.http.drain()
        with trio.move_on_at(deadline):
            await self.idle.wait()
        for br in self.backends.runtimes.values():
            for flow in br.flows.values():
                flow.cut_at(trio.current_time())
        await self.access.flush()
