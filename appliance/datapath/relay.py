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

from .wire import send_all

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


# Reads below this size are copied through userspace: for a small request, one recv and
# one send beat three splices and a pipe. A read that fills the copy buffer means bulk
# data, and the direction switches to splice until a splice moves less than this.
COPY_CHUNK = 16384
# Batches moved without blocking before yielding to other flows (and to cancellation).
_YIELD_EVERY = 16


class Relay:
    """One TCP flow's two directions. ``on_bytes(direction, n)`` counts what moved:
    direction 0 is client->backend (bytes in), 1 is backend->client (bytes out).

    The loops call the non-blocking sockets directly and park in trio only on EAGAIN
    (see ``wire``)."""

    def __init__(self, client: socket.socket, backend: socket.socket,
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
        self._deadline_set = 0.0

    def cut_at(self, deadline: float) -> None:
        """End the flow at ``deadline`` at the latest (a removed backend draining)."""
        self.cut_deadline = min(self.cut_deadline, deadline)
        self.scope.deadline = min(self.scope.deadline, deadline)

    def uncut(self) -> None:
        """The backend is back: only the idle deadline ends the flow again."""
        self.cut_deadline = math.inf
        self.scope.deadline = self._deadline_set + self.idle

    async def run(self) -> None:
        """Relay until both directions saw EOF, one side fails, or the idle deadline hits."""
        self._push_deadline(trio.current_time())
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._direction, self.backend, self.client, 1, nursery)
                await self._direction(self.client, self.backend, 0, nursery)

    def _push_deadline(self, now: float) -> None:
        self._deadline_set = now
        self.scope.deadline = min(now + self.idle, self.cut_deadline)

    def _touch(self, direction: int, n: int) -> None:
        self.on_bytes(direction, n)
        now = trio.current_time()
        # Moving the deadline re-sorts trio's timer heap; a precision of 1/64 of the
        # idle timeout is plenty and saves that on nearly every batch.
        if now - self._deadline_set > self.idle / 64:
            self._push_deadline(now)

    async def _direction(self, src: socket.socket, dst: socket.socket, direction: int,
                         nursery: trio.Nursery) -> None:
        try:
            await self._pump(src, dst, direction)
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

    async def _pump(self, src: socket.socket, dst: socket.socket, direction: int) -> None:
        sfd, dfd = src.fileno(), dst.fileno()
        splicing = False
        can_splice = self.use_splice and not PIPES.unsupported
        batches = 0
        # A short read drained the socket: the next read would only say EAGAIN (a wasted
        # syscall and a Python exception per message), so wait for readiness first.
        drained = False
        while True:
            if drained:
                drained = False
                batches = 0
                await trio.lowlevel.wait_readable(src)
            if splicing:
                n = await self._splice_once(src, dst, sfd, dfd)
                if n < 0:  # splice unsupported here (or no pipe to be had): copy
                    splicing = can_splice = False
                    continue
                if n < COPY_CHUNK:
                    splicing = False
            else:
                try:
                    data = src.recv(COPY_CHUNK)
                except BlockingIOError:
                    # Park outside the except block: awaiting inside it would keep the
                    # exception and its traceback alive for as long as the flow idles.
                    drained = True
                    continue
                n = len(data)
                if n:
                    await send_all(dst, data)
                    if n == COPY_CHUNK:
                        splicing = can_splice
                    else:
                        drained = True
            if n == 0:
                return
            self._touch(direction, n)
            batches += 1
            if batches >= _YIELD_EVERY:
                batches = 0
                await trio.lowlevel.checkpoint()

    async def _splice_once(self, src: socket.socket, dst: socket.socket, sfd: int,
                           dfd: int) -> int:
        """Move one batch with splice: bytes moved, 0 at EOF, -1 if unsupported."""
        while True:
            try:
                pipe = PIPES.take()
            except OSError:
                return -1  # no descriptor for a pipe: this flow copies from now on
            rfd, wfd, size = pipe
            try:
                n = os.splice(sfd, wfd, size, flags=_FLAGS)
            except BlockingIOError:
                n = -1
            except OSError as e:
                PIPES.give(pipe)
                if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    PIPES.unsupported = True
                    return -1
                raise
            if n >= 0:
                break
            # The pipe is empty, so EAGAIN means the socket has nothing yet: give the
            # pipe back while we wait, an idle flow holds none.
            PIPES.give(pipe)
            await trio.lowlevel.wait_readable(src)
        left = n
        try:
            while left:
                try:
                    left -= os.splice(rfd, dfd, left, flags=_FLAGS)
                    continue
                except BlockingIOError:
                    pass
                await trio.lowlevel.wait_writable(dst)
        except BaseException:
            # Bytes may be left inside: this pipe cannot go back to the pool.
            PIPES.close(pipe)
            raise
        PIPES.give(pipe)
        return n

