"""The relay in-process under trio, over real socketpairs: byte-exact in both modes
(splice and the copy fallback), half-close passed on, idle deadline and drain cut."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import pytest
import trio

from appliance.datapath.relay import HAVE_SPLICE, Relay

# The stdlib sockets under trio's wrappers, closed after each test (trio's own close
# needs a running loop, which the fixture's teardown does not have).
_open: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def _pair() -> tuple[trio.socket.SocketType, socket.socket]:
    """(the test's end, under trio's wrapper; the relay's end, a plain non-blocking
    socket as the datapath holds them)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    _open.extend((a, b))
    return trio.socket.from_stdlib_socket(a), b


def _rpair() -> tuple[socket.socket, trio.socket.SocketType]:
    """As ``_pair``, the relay's end first."""
    mine, theirs = _pair()
    return theirs, mine


async def _send(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]


async def _drain(sock: trio.socket.SocketType) -> bytes:
    out = bytearray()
    while chunk := await sock.recv(1 << 16):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("splice", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAVE_SPLICE, reason="os.splice needs Linux and Python >= 3.10"))])
async def test_relay_is_byte_exact_and_passes_half_close(splice: bool) -> None:
    client, edge_c = _pair()
    edge_b, backend = _rpair()
    counted = [0, 0]

    def on_bytes(direction: int, n: int) -> None:
        counted[direction] += n

    relay = Relay(edge_c, edge_b, idle=30, on_bytes=on_bytes, use_splice=splice)
    up = hashlib.sha256(b"up").digest() * 40_000      # 1.28 MB: large enough to splice
    down = b"small reply"
    got: dict[str, bytes] = {}

    async def client_side() -> None:
        await _send(client, up)
        client.shutdown(socket.SHUT_WR)
        got["client"] = await _drain(client)

    async def backend_side() -> None:
        got["backend"] = await _drain(backend)  # ends only if the half-close came through
        await _send(backend, down)
        backend.shutdown(socket.SHUT_WR)

    async with trio.open_nursery() as n:
        n.start_soon(relay.run)
        n.start_soon(client_side)
        n.start_soon(backend_side)
    assert got == {"backend": up, "client": down}
    assert counted == [len(up), len(down)]


async def test_idle_deadline_and_drain_cut(autojump_clock: trio.abc.Clock) -> None:
    _, edge_c = _pair()
    edge_b, _ = _rpair()
    relay = Relay(edge_c, edge_b, idle=10, on_bytes=lambda d, n: None)
    start = trio.current_time()
    await relay.run()  # nothing moves: the idle deadline ends it
    assert trio.current_time() - start == pytest.approx(10, abs=0.5)

    client, edge_c = _pair()
    edge_b, _backend = _rpair()
    relay = Relay(edge_c, edge_b, idle=100, on_bytes=lambda d, n: None)

    async def chatter() -> None:
        while True:  # traffic every second must not push a drain deadline back
            await _send(client, b"x")
            await trio.sleep(1)

    async with trio.open_nursery() as n:
        n.start_soon(chatter)
        start = trio.current_time()
        relay.cut_at(start + 5)
        await relay.run()
        n.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(5, abs=0.5)
