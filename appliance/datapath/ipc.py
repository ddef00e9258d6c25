"""Messages between the control process and worker processes: length-prefixed pickles
over a Unix socketpair that only these two processes hold (pickle is safe here because
the peer is our own child, started with the socket inherited, never a network peer)."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import trio

_LEN = struct.Struct("!I")


class Channel:
    """One end of a control<->worker socketpair."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, kind: str, payload: Any = None) -> None:
        data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        msg = _LEN.pack(len(data)) + data
        async with self._send_lock:
            view = memoryview(msg)
            while view:
                n = await self.sock.send(view)
                view = view[n:]

    async def receive(self) -> tuple[str, Any]:
        """The next message; raises EOFError when the peer closed."""
        while True:
            if len(self._buf) >= 4:
                (n,) = _LEN.unpack_from(self._buf)
                if len(self._buf) >= 4 + n:
                    data = bytes(self._buf[4:4 + n])
                    del self._buf[:4 + n]
                    kind, payload = pickle.loads(data)
                    return kind, payload
            chunk = await self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self._buf += chunk
