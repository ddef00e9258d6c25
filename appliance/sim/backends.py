"""Small real servers on loopback that stand in for node-port backends. Each says who
answered, so that a demo user (and a test) sees the balancing happen."""

from __future__ import annotations

import socket
from functools import partial

import trio


async def serve_http(host: str, port: int, name: str,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """An HTTP/1.1 server answering every request with ``backend <name>`` (keep-alive)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started()
    await trio.serve_listeners(partial(_http_conn, name=name), listeners)


async def _http_conn(stream: trio.abc.Stream, name: str) -> None:
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            body = f"backend {name}: {line.decode('latin-1')}\n".encode()
            close = b"connection: close" in head.lower()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                  b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                                  + (b"Connection: close\r\n" if close else b"")
                                  + b"\r\n" + body)
            if close:
                return
    except trio.BrokenResourceError:
        return


async def serve_udp_echo(host: str, port: int, name: str,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """A UDP server that answers each datagram with ``<name>: <datagram>``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        await sock.bind((host, port))
        task_status.started()
        prefix = f"{name}: ".encode()
        while True:
            data, addr = await sock.recvfrom(65535)
            await sock.sendto(prefix + data, addr)
