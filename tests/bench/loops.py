"""The event loop's floor under the L7 path: what an HTTP/1.1 keep-alive proxy costs per
request on each Python event loop before it does anything edgelb does, beside HAProxy and
edgelb, in one run on loopback, in front of the same nginx ``return 200`` backend
(wrk -t1 -c50, as ``tests.bench.l7``).

    python -m tests.bench.loops [--seconds 5]

The reference proxies are minimal and only for this measure: one backend connection per
client connection, a read from one side written to the other.
- ``bytes``: no HTTP at all (a request is whatever one read brings), so the figure is the
  loop's own cost: two readiness waits, two reads and two writes per request.
- ``http1``: the same, with edgelb's own ``http1`` machines in the middle (the request
  parsed and validated, the head sent on with X-Forwarded-*, the response parsed and
  re-framed): the cost of the protocol without routing, balancing, timeouts, counters,
  flows or logs.
And the machines' side of one request alone, in a loop with no I/O.
Each runs on trio (raw non-blocking sockets and ``wait_readable``, as ``wire`` does), on
asyncio's own loop and on uvloop (Protocols, callbacks, no task per read). They tell how
much of edgelb's CPU per request is the loop and how much the rest, and what a change of
loop would buy: issue 15's targets (CPU per request <= 2.5x HAProxy's) are measured
against these floors. Only ratios within one run mean anything.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import subprocess
import sys
import time
from typing import Any

import trio

from appliance.datapath import http1
from appliance.datapath.http1 import END_OF_MESSAGE, NEED_DATA, PAUSED
from appliance.model import HttpLimits
from tests.bench.l4 import save_results
from tests.bench.l7 import (
    arguments,
    behind_nginx,
    measured,
    missing,
    proxy_edgelb,
    proxy_haproxy,
    run_one,
)
from tests.helpers import free_port

LIMITS = HttpLimits()
KINDS = [f"{loop}-{work}" for work in ("bytes", "http1")
         for loop in ("trio", "asyncio", "uvloop")]


# -- trio: one task per client connection, raw sockets ---------------------------------

async def _trio_recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            pass
        await trio.lowlevel.wait_readable(sock)


async def _trio_connection(client: socket.socket, backend_port: int, work: str) -> None:
    backend = socket.socket()
    backend.setblocking(False)
    backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    backend.connect_ex(("127.0.0.1", backend_port))
    await trio.lowlevel.wait_writable(backend)
    conn = http1.ServerConnection(LIMITS)
    try:
        while True:
            if work == "bytes":
                data = await _trio_recv(client)
                if not data:
                    return
                backend.send(data)
                data = await _trio_recv(backend)
                if not data:
                    return
                client.send(data)
                continue
            ev = conn.next_event()
            if ev is NEED_DATA:
                data = await _trio_recv(client)
                if not data:
                    return
                conn.receive_data(data)
                continue
            assert isinstance(ev, http1.Request)
            be = http1.BackendConnection()
            backend.send(be.send_request(ev, "127.0.0.1", "http", False))
            out = b""
            while True:
                ev = be.next_event()
                if ev is NEED_DATA:
                    be.receive_data(await _trio_recv(backend))
                elif isinstance(ev, http1.Response):
                    out += conn.send_response(ev, True)
                elif ev is END_OF_MESSAGE:
                    break
                else:
                    assert isinstance(ev, bytes)
                    out += conn.send_data(ev)
            client.send(out + conn.send_end())
            conn.next_event()  # the request's END_OF_MESSAGE (it had no body)
            conn.start_next_cycle()
    except (OSError, http1.HttpError):
        pass
    finally:
        client.close()
        backend.close()


async def _trio_serve(port: int, backend_port: int, work: str) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(_trio_connection, client, backend_port, work)


# -- asyncio and uvloop: Protocols ---------------------------------------------------

class _Backend(asyncio.Protocol):
    def __init__(self, front: _Front) -> None:
        self.front = front
        self.machine: http1.BackendConnection | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        front = self.front
        assert front.transport is not None
        if front.work == "bytes":
            front.transport.write(data)
            return
        be, conn = self.machine, front.conn
        assert be is not None
        be.receive_data(data)
        out = b""
        while True:
            ev = be.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, http1.Response):
                out += conn.send_response(ev, True)
            elif ev is END_OF_MESSAGE:
                front.transport.write(out + conn.send_end())
                conn.next_event()
                conn.start_next_cycle()
                self.machine = None
                front.pump()
                return
            else:
                assert isinstance(ev, bytes)
                out += conn.send_data(ev)
        if out:
            front.transport.write(out)


class _Front(asyncio.Protocol):
    def __init__(self, backend_port: int, work: str) -> None:
        self.backend_port = backend_port
        self.work = work
        self.conn = http1.ServerConnection(LIMITS)
        self.backend: _Backend | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        # Held: the loop keeps only a weak reference to its tasks.
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        _, backend = await asyncio.get_running_loop().create_connection(
            lambda: _Backend(self), "127.0.0.1", self.backend_port)
        self.backend = backend
        for data in self.early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.early.append(data)
        elif self.work == "bytes":
            assert self.backend.transport is not None
            self.backend.transport.write(data)
        else:
            self.conn.receive_data(data)
            self.pump()

    def pump(self) -> None:
        backend = self.backend
        if backend is None or backend.machine is not None:
            return
        try:
            ev = self.conn.next_event()
        except http1.HttpError:
            assert self.transport is not None
            self.transport.close()
            return
        if ev is NEED_DATA or ev is PAUSED:
            return
        assert isinstance(ev, http1.Request) and backend.transport is not None
        backend.machine = http1.BackendConnection()
        backend.transport.write(backend.machine.send_request(ev, "127.0.0.1", "http", False))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.close()


async def _asyncio_serve(port: int, backend_port: int, work: str) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: _Front(backend_port, work), "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
             b"Date: Wed, 02 Dec 2026 02:30:00 GMT\r\nContent-Type: application/octet-stream\r\n"
             b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


def machine_floor(seconds: float = 2.0) -> float:
    """CPU microseconds of the ``http1`` machines' side of one request, no I/O: the
    request read and validated, its head for the backend, the response (as the bench's
    nginx sends it) read and validated, its head and body for the client."""
    conn = http1.ServerConnection(LIMITS)
    count = 0
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        for _ in range(1000):
            conn.receive_data(_REQUEST)
            req = conn.next_event()
            assert isinstance(req, http1.Request)
            be = http1.BackendConnection()
            be.send_request(req, "127.0.0.1", "http", False)
            be.receive_data(_RESPONSE)
            resp = be.next_event()
            assert isinstance(resp, http1.Response)
            out = conn.send_response(resp, True)
            while (ev := be.next_event()) is not END_OF_MESSAGE:
                assert isinstance(ev, bytes)
                out += conn.send_data(ev)
            conn.next_event()
            conn.start_next_cycle()
        count += 1000
    return (time.process_time() - t0) / count * 1e6


def serve(kind: str, port: int, backend_port: int) -> None:
    """Run the reference proxy ``kind`` (one of KINDS) until killed."""
    loop, work = kind.split("-")
    if loop == "trio":
        trio.run(_trio_serve, port, backend_port, work)
        return
    if loop == "uvloop":
        import uvloop
        uvloop.run(_asyncio_serve(port, backend_port, work))
        return
    asyncio.run(_asyncio_serve(port, backend_port, work))


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    args = arguments(__doc__)
    if missing("haproxy", "nginx", "wrk"):
        return 2
    results: dict[str, Any] = {"seconds": args.seconds}
    with behind_nginx("edgelb-loops-") as (tmp, crt, key, pem, bport):
        runs: list[tuple[str, Any]] = [
            ("haproxy", lambda h, s: proxy_haproxy(tmp, h, s, bport, pem)),
            ("edgelb", lambda h, s: proxy_edgelb(tmp, 1, h, s, bport, crt, key)),
            *[(kind, lambda h, s, k=kind: subprocess.Popen(
                [sys.executable, "-m", "tests.bench.loops", "serve", k, str(h), str(bport)]))
              for kind in KINDS],
        ]
        for name, start in runs:
            http, https = free_port(), free_port()
            if name not in ("haproxy", "edgelb"):
                https = http  # the reference proxies serve plain HTTP only
            results[name] = measured(name, start(http, https), functools.partial(
                run_one, name, http=http, https=https, seconds=args.seconds,
                schemes=("http",)))["http"]
    results["http1-machine-alone"] = {"cpu_us_per_req": machine_floor()}
    out = save_results("loops", results)
    report(results)
    print(f"\nraw figures: {out}")
    return 0


def report(r: dict[str, Any]) -> None:
    base = r["haproxy"]["cpu_us_per_req"]
    print("\n| proxy | req/s | CPU µs per request | / HAProxy |")
    print("|---|---|---|---|")
    for name in ["haproxy", "edgelb", *KINDS]:
        f = r[name]
        cpu = f["cpu_us_per_req"]
        print(f"| {name} | {f['rps']:,.0f} | {cpu:.1f} | {cpu / base:.2f}x |")
    cpu = r["http1-machine-alone"]["cpu_us_per_req"]
    print(f"| the http1 machines alone, no I/O | - | {cpu:.1f} | {cpu / base:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
