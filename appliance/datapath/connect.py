"""Connecting a flow to a backend of its pool, for L4 and L7 alike: pick, connect within
``timeouts.connect``, and on a failure count it (passive ejection) and try the next
backend, so that no client sees a refusal while any backend accepts."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from . import wire
from .backends import BackendRuntime, BackendSet
from .errors import BackendUnreachable, Exhausted

W = TypeVar("W")


@dataclass(slots=True)
class Upstream(Generic[W]):
    """A connection to a backend: ``reused`` when it is a kept-alive one."""

    backend: BackendRuntime
    conn: W
    reused: bool = False


async def connect_to_pool(
        pool: BackendSet, client: bytes, setup: Callable[[socket.socket, BackendRuntime],
                                                         Awaitable[W]],
        *, tried: set[int] | None = None, retry: bool = True,
        reuse: Callable[[BackendRuntime, float], W | None] | None = None) -> Upstream[W]:
    """A backend of ``pool`` for a flow from ``client``, connected and made ready by
    ``setup`` (a PROXY header, a TLS handshake) within the listener's connect timeout;
    ``reuse`` may offer a kept-alive connection to a picked backend instead. Without
    ``retry`` (a request that must not be sent twice) the first failure ends the search.
    Raises BackendUnreachable, whose ``tried`` says whether any backend was tried, or
    Exhausted when this box has no descriptor or memory left for the connection."""
    lst = pool.listener
    timeout = lst.timeouts.connect
    tried = set() if tried is None else tried
    failed = False
    while True:
        now = trio.current_time()
        i = pool.pick(client, tried, now)
        if i is None:
            raise BackendUnreachable(failed)
        br = pool.runtime(i)
        if reuse is not None:
            kept = reuse(br, now)
            if kept is not None:
                return Upstream(br, kept, True)
        tried.add(i)
        sock: socket.socket | None = None
        why = "timeout"
        with trio.move_on_after(timeout):
            try:
                sock = await wire.connect(br.address)
                conn = await setup(sock, br)
            except OSError as e:
                if sock is not None:
                    wire.close(sock)
                if wire.exhausted(e):
                    raise Exhausted(e.strerror) from None
                why = e.strerror or type(e).__name__
            else:
                br.passive.success()
                return Upstream(br, conn)
        if sock is not None and sock.fileno() >= 0:
            wire.close(sock)
        br.connect_failed(lst.name, now, why)
        failed = True
        if not retry:
            raise BackendUnreachable(True)
