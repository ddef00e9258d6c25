"""Moving bytes between two connected TCP sockets: zero-copy ``os.splice`` through a pipe,
with a buffered fallback, half-close propagated, and an idle deadline pushed forward on
every transfer."""

from __future__ import annotations

import errno
import fcntl
import math
import os
import socket
from collections.abc import Callable

import trio

# 1 MiB is the default /proc/sys/fs/pipe-max-size: one splice moves up to that much.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
HAVE_SPLICE = hasattr(os, "splice")


class PipePool:
    """Pipes for splice, lent only while bytes are in flight (as HAProxy's pipe pool):
    an idle flow holds no pipe, so 10,000 idle flows cost 20,000 descriptors, not 60,000.
    A pipe is always drained before it is returned."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self.free: list[tuple[int, int, int]] = []
        self.unsupported = False

    def take(self) -> tuple[int, int, int]:
        """(read fd, write fd, capacity)."""
        if self.free:
            return self.free.pop()
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(wfd, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            size = 65536
        return rfd, wfd, size

    def give(self, pipe: tuple[int, int, int]) -> None:
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            self.close(pipe)

    @staticmethod
    def close(pipe: tuple[int, int, int]) -> None:
        os.close(pipe[0])
        os.close(pipe[1])


PIPES = PipePool()


class Relay:
    """One TCP flow's two directions. ``on_bytes(direction, n)`` counts what moved:
    direction 0 is client->backend (bytes in), 1 is backend->client (bytes out)."""

    def __init__(self, client: trio.socket.SocketType, backend: trio.socket.SocketType,
                 idle: float, on_bytes: Callable[[int, int], None],
                 use_splice: bool = HAVE_SPLICE) -> None:
        self.client = client
        self.backend = backend
        self.idle = idle
        self.on_bytes = on_bytes
        self.use_splice = use_splice
        self.scope = trio.CancelScope()
        # A drain deadline caps the idle deadline: traffic must not push it back.
        self.cut_deadline = math.inf

    def cut_at(self, deadline: float) -> None:
        """End the flow at ``deadline`` at the latest (a removed backend draining)."""
        self.cut_deadline = min(self.cut_deadline, deadline)
        self.scope.deadline = min(self.scope.deadline, deadline)

    async def run(self) -> None:
        """Relay until both directions saw EOF, one side fails, or the idle deadline hits."""
        self.scope.deadline = min(trio.current_time() + self.idle, self.cut_deadline)
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._direction, self.client, self.backend, 0, nursery)
                nursery.start_soon(self._direction, self.backend, self.client, 1, nursery)

    async def _direction(self, src: trio.socket.SocketType, dst: trio.socket.SocketType,
                         direction: int, nursery: trio.Nursery) -> None:
        try:
            if self.use_splice:
                try:
                    await self._splice(src, dst, direction)
                except _SpliceUnsupported:
                    await self._copy(src, dst, direction)
            else:
                await self._copy(src, dst, direction)
        except OSError:
            # A reset or broken pipe on either side ends the whole flow: the other
            # direction has nowhere to go.
            nursery.cancel_scope.cancel()
            return
        # EOF from src: pass the half-close on, keep the other direction open.
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            nursery.cancel_scope.cancel()

    def _touch(self, direction: int, n: int) -> None:
        self.on_bytes(direction, n)
        self.scope.deadline = min(trio.current_time() + self.idle, self.cut_deadline)

    async def _splice(self, src: trio.socket.SocketType, dst: trio.socket.SocketType,
                      direction: int) -> None:
        sfd, dfd = src.fileno(), dst.fileno()
        first = True
        while True:
            pipe = PIPES.take()
            rfd, wfd, size = pipe
            try:
                n = os.splice(sfd, wfd, size, flags=_FLAGS)
            except BlockingIOError:
                # The pipe is empty, so EAGAIN means the socket has nothing yet: give
                # the pipe back while we wait, an idle flow holds none.
                PIPES.give(pipe)
                await trio.lowlevel.wait_readable(src)
                continue
            except OSError as e:
                PIPES.give(pipe)
                if first and e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise _SpliceUnsupported from e
                raise
            first = False
            if n == 0:
                PIPES.give(pipe)
                return
            left = n
            try:
                while left:
                    try:
                        m = os.splice(rfd, dfd, left, flags=_FLAGS)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(dst)
                        continue
                    left -= m
            except BaseException:
                # Bytes may be left inside: this pipe cannot go back to the pool.
                PIPES.close(pipe)
                raise
            PIPES.give(pipe)
            self._touch(direction, n)
            # A flow that always has data would otherwise never yield to others.
            await trio.lowlevel.checkpoint()

    async def _copy(self, src: trio.socket.SocketType, dst: trio.socket.SocketType,
                    direction: int) -> None:
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        while True:
            n = await src.recv_into(buf)
            if n == 0:
                return
            sent = 0
            while sent < n:
                sent += await dst.send(view[sent:n])
            self._touch(direction, n)


class _SpliceUnsupported(Exception):
    pass
