"""The listening sockets of one worker: bound for each Snapshot, kept across Snapshots
while their protocol and address stay (so a reload loses no accept), closed when a
Snapshot drops them. Every worker binds its own with SO_REUSEPORT."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from ..logs import Throttled
from ..model import Listener
from . import wire

log = logging.getLogger("edgelb.datapath")

SocketKey = tuple[str, str, int]  # (protocol, host, port): Listener.socket_key

# Accepted in one go before yielding to the other tasks, as nginx's multi_accept: a burst
# of connects costs one wake-up, not one each, and never starves the flows.
ACCEPT_BATCH = 64
# How long accepting pauses when the box is out of descriptors.
EXHAUSTED_PAUSE = 0.1
_paused = Throttled(log)


@dataclass
class Bound:
    """A listening socket and the listener it serves (the newest Snapshot's)."""

    listener: Listener
    sock: socket.socket
    scope: trio.CancelScope


class Listeners:
    """Binds, keeps and closes the listening sockets; ``accept`` is called with each new
    TCP connection, ``serve_udp`` runs a UDP socket."""

    def __init__(self, nursery: trio.Nursery,
                 accept: Callable[[socket.socket, tuple[str, int], Listener], None],
                 serve_udp: Callable[[Bound], Awaitable[None]],
                 on_exhausted: Callable[[Listener], None] = lambda lst: None) -> None:
        self.nursery = nursery
        self.accept = accept
        self.serve_udp = serve_udp
        self.on_exhausted = on_exhausted  # counts an accept paused for want of descriptors
        self.bound: dict[SocketKey, Bound] = {}

    def apply(self, listeners: Iterable[Listener], strict: bool = False,
              all_or_nothing: bool = False) -> list[str]:
        """Bind what is new, keep what stays, close what went. Returns the errors of
        listeners that could not be bound: with ``strict`` the first is raised; with
        ``all_or_nothing`` nothing changes at all then (the sockets in use stay)."""
        wanted = {lst.socket_key: lst for lst in listeners}
        fresh: dict[SocketKey, Bound] = {}
        errors: list[str] = []
        for key, lst in wanted.items():
            if key in self.bound:
                continue
            try:
                sock = wire.listening_socket(lst.bind, lst.transport, lst.backlog)
            except OSError as e:
                msg = f"listener {lst.name}: cannot bind {lst.bind_text}: {e.strerror}"
                if strict:
                    self._close_all(fresh)
                    raise OSError(e.errno, msg) from e
                log.error("%s", msg)
                errors.append(msg)
                continue
            fresh[key] = Bound(lst, sock, trio.CancelScope())
        if errors and all_or_nothing:
            self._close_all(fresh)
            return errors
        for key, bound in list(self.bound.items()):
            if key not in wanted:
                self._close(bound)
                del self.bound[key]
            else:
                bound.listener = wanted[key]
        for key, bound in fresh.items():
            self.bound[key] = bound
            self.nursery.start_soon(self.serve_udp if bound.listener.transport == "udp"
                                    else self._accept_loop, bound)
        return errors

    def close_all(self) -> None:
        """Stop accepting on every socket (a drain)."""
        self._close_all(self.bound)

    def _close_all(self, bound: dict[SocketKey, Bound]) -> None:
        for b in bound.values():
            self._close(b)
        bound.clear()

    @staticmethod
    def _close(bound: Bound) -> None:
        bound.scope.cancel()
        wire.close(bound.sock)

    async def _accept_loop(self, bound: Bound) -> None:
        sock = bound.sock
        accepted = 0
        with bound.scope:
            while True:
                try:
                    got = wire.accept(sock)
                except OSError as e:
                    if wire.exhausted(e):
                        # Out of descriptors: pause accepting (the backlog holds the
                        # clients) instead of spinning, as HAProxy and nginx do.
                        self.on_exhausted(bound.listener)
                        _paused(logging.WARNING, "accept on %s paused: %s",
                                bound.listener.bind_text, e.strerror)
                        await trio.sleep(EXHAUSTED_PAUSE)
                        continue
                    if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue  # the client gave up before we accepted
                    raise
                if got is None:
                    accepted = 0
                    await trio.lowlevel.wait_readable(sock)
                    continue
                self.accept(*got, bound.listener)
                accepted += 1
                if accepted >= ACCEPT_BATCH:
                    accepted = 0
                    await trio.lowlevel.checkpoint()
