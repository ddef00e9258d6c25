"""Sockets as the datapath drives them: plain non-blocking stdlib sockets and raw
syscalls (SSLSockets for TLS), with trio only to wait for readiness. trio's own socket
methods yield to the scheduler twice per call, which doubled the cost of a small request;
a syscall that finds the socket ready (most of the time, under load) costs one call here.

This is the only module that opens, connects or closes datapath sockets, and the only
one that knows the address family is chosen by the host's text. ``exhausted`` tells a
failure of this box (out of descriptors) from a peer's. A socket that a task may
be waiting on is closed with ``close``, which wakes the waiter first (trio requires it).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

from ..process import exhausted as exhausted  # the datapath asks wire

READ_SIZE = 65536
# Python 3.11's socket module lacks the freebind constants: Linux's values.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)

Address = tuple[str, int]
T = TypeVar("T")


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal, AF_INET otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def address_text(host: str, port: int) -> str:
    """``10.0.0.1:80`` or ``[::1]:80``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4096


def listening_socket(bind: Address, transport: str, backlog: int = 4096) -> socket.socket:
    """A bound, non-blocking socket with SO_REUSEPORT (so that every worker holds its
    own), listening for TCP; raises OSError."""
    host, port = bind
    family = family_of(host)
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # A VIP may be added after we bind (an HA promotion): freebind lets us bind first.
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(min(backlog, _somaxconn()))
    except BaseException:
        sock.close()
        raise
    return sock


def accept(sock: socket.socket) -> tuple[socket.socket, Address] | None:
    """The next pending connection, non-blocking and without Nagle's delay on small
    writes; None when there is none now. Raises OSError (EMFILE and friends)."""
    try:
        conn, client = sock.accept()
    except BlockingIOError:
        return None
    conn.setblocking(False)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn, (client[0], client[1])


def send_now(sock: socket.socket, data: bytes) -> None:
    """Best effort, without waiting: what fits in the socket's buffer (an answer sent
    just before closing)."""
    try:
        sock.send(data)
    except OSError:
        pass


async def connect(address: Address) -> socket.socket:
    """A TCP connection to ``address``; raises OSError. The caller bounds the time (a
    cancel scope around the connect and whatever follows it)."""
    sock = socket.socket(family_of(address[0]), socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


def datagram_socket(address: Address) -> socket.socket:
    """A UDP socket connected to ``address`` (so that only its replies arrive)."""
    sock = socket.socket(family_of(address[0]), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def send_datagram(sock: socket.socket, data: bytes,
                        to: Address | None = None) -> None:
    """One datagram, to the connected peer or to ``to``."""
    while True:
        try:
            if to is None:
                sock.send(data)
            else:
                sock.sendto(data, to)
            return
        except BlockingIOError:
            pass
        await trio.lowlevel.wait_writable(sock)


async def recv_datagram(sock: socket.socket) -> tuple[bytes, Address]:
    """The next datagram and its sender."""
    while True:
        try:
            data, addr = sock.recvfrom(65535)
            return data, (addr[0], addr[1])
        except BlockingIOError:
            pass
        await trio.lowlevel.wait_readable(sock)


def close(sock: socket.socket) -> None:
    """Close a socket that a task may be waiting on, waking that task first."""
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
    sock.close()


async def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    """Send every byte, waiting only when the socket's buffer is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
            continue
        except BlockingIOError:
            pass
        # Outside the except block: no exception stays referenced while we wait.
        await trio.lowlevel.wait_writable(sock)


async def recv(sock: socket.socket, size: int = READ_SIZE) -> bytes:
    """The next bytes (b"" at EOF), waiting only when none are there yet."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            pass
        await trio.lowlevel.wait_readable(sock)


class PlainWire:
    """A byte stream over a connected TCP socket."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def recv(self) -> bytes:
        return await recv(self.sock)

    def try_recv(self) -> bytes | None:
        """What is readable now without waiting, or None; b"" at EOF."""
        try:
            return self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return None

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        await send_all(self.sock, data)

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
        close(self.sock)


class TlsWire:
    """TLS over a connected socket: the stdlib's SSLSocket, non-blocking, driven like
    PlainWire (a call, and a wait for readiness only when OpenSSL asks for one). OpenSSL
    reads and writes the socket itself, in C, where trio's SSLStream moved every record
    through memory BIOs in Python.

    The socket is taken over (``sock`` is detached): close the wire, not the socket.
    A failed or cancelled handshake closes it."""

    __slots__ = ("ssock",)

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server: bool,
                 server_hostname: str | None = None) -> None:
        self.ssock = ctx.wrap_socket(sock, server_side=server, server_hostname=server_hostname,
                                     do_handshake_on_connect=False, suppress_ragged_eofs=True)

    async def handshake(self) -> None:
        """Raises OSError (ssl.SSLError among them) when the handshake fails or the peer
        goes away."""
        try:
            await _as_openssl_asks(self.ssock, self.ssock.do_handshake)
        except BaseException:
            self.close()
            raise

    def selected_alpn_protocol(self) -> str | None:
        return self.ssock.selected_alpn_protocol()

    async def recv(self) -> bytes:
        try:
            return await _as_openssl_asks(self.ssock, self.ssock.recv, READ_SIZE)
        except ssl.SSLZeroReturnError:
            return b""  # the peer's close_notify

    def try_recv(self) -> bytes | None:
        """What is readable now without waiting, or None; b"" at EOF."""
        try:
            return self.ssock.recv(READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except ssl.SSLZeroReturnError:
            return b""

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        ssock = self.ssock
        view = memoryview(data)
        while view:
            # OpenSSL wants the same bytes again once the socket is ready: a call that
            # asks to wait is made again with ``view`` unchanged.
            view = view[await _as_openssl_asks(ssock, ssock.send, view):]

    async def send_eof(self) -> None:
        pass  # TLS 1.2 has no half-close; the relay ends when either side closes

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        close(self.ssock)


async def _as_openssl_asks(ssock: ssl.SSLSocket, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` on a non-blocking SSLSocket, made again after each wait for the
    readiness OpenSSL asks for (a read may need the socket writable, and a write
    readable)."""
    while True:
        try:
            return call(*args)
        except ssl.SSLWantReadError:
            writable = False
        except ssl.SSLWantWriteError:
            writable = True
        # Outside the except blocks: no exception stays referenced while we wait.
        if writable:
            await trio.lowlevel.wait_writable(ssock)
        else:
            await trio.lowlevel.wait_readable(ssock)


Wire = PlainWire | TlsWire


class _Counts(Protocol):
    bytes_in: int
    bytes_out: int


async def tunnel(client: Wire, backend: Wire, from_client: bytes, from_backend: bytes,
                 idle: float, counts: _Counts) -> None:
    """Bytes both ways (after 101 Switching Protocols) until either side closes or
    nothing moves for ``idle`` seconds. ``from_client`` and ``from_backend`` were read
    already and go first; ``counts`` gets bytes_in (client->backend) and bytes_out."""
    deadline = trio.current_time() + idle

    async def pump(src: Wire, dst: Wire, first: bytes, inbound: bool,
                   scope: trio.CancelScope) -> None:
        nonlocal deadline
        data = first
        try:
            while True:
                if data:
                    await dst.send(data)
                    if inbound:
                        counts.bytes_in += len(data)
                    else:
                        counts.bytes_out += len(data)
                data = await src.recv()
                if not data:
                    await dst.send_eof()
                    return
                deadline = trio.current_time() + idle
        except OSError:
            scope.cancel()

    async def idle_watch(scope: trio.CancelScope) -> None:
        # The deadline moves with every read, so an Event would not do.
        while trio.current_time() < deadline:  # noqa: ASYNC110
            await trio.sleep_until(deadline)
        scope.cancel()

    async with trio.open_nursery() as outer:
        outer.start_soon(idle_watch, outer.cancel_scope)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, backend, from_client, True, nursery.cancel_scope)
            nursery.start_soon(pump, backend, client, from_backend, False,
                               nursery.cancel_scope)
        outer.cancel_scope.cancel()
