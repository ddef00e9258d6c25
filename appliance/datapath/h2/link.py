"""An ``h2`` connection machine over a wire: what the machine has to send goes out one
sender at a time, and a stream's data waits for its flow-control window. The client's
side (``session``) and the backend's (``upstream``) are both one of these."""

from __future__ import annotations

import h2.config
import h2.connection
import trio
from h2.settings import SettingCodes

from ..wire import Wire


def machine(client_side: bool) -> h2.connection.H2Connection:
    """An ``h2`` machine with header names and values kept as bytes."""
    return h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=client_side, header_encoding=None))


class H2Link:
    """``conn`` over ``wire``."""

    def __init__(self, conn: h2.connection.H2Connection, wire: Wire) -> None:
        self.conn = conn
        self.wire = wire
        self.lock = trio.Lock()
        self.window = trio.Event()  # set (and replaced) whenever a window may have grown

    async def flush(self, extra: bytes = b"") -> None:
        """Send what the machine has queued (and ``extra``, whole frames of our own).
        A peer that does not read holds every sender here: nothing queues without
        bound behind it."""
        async with self.lock:
            data = self.conn.data_to_send() + extra
            if data:
                await self.wire.send(data)

    def opened(self) -> None:
        """A WINDOW_UPDATE or new SETTINGS came: wake the senders waiting for room."""
        self.window.set()
        self.window = trio.Event()

    async def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        """``data`` on ``stream_id`` as its window allows, waiting for room (the caller
        bounds the wait); StreamClosedError when the stream went away meanwhile."""
        conn = self.conn
        view = memoryview(data)
        while True:
            waiter = self.window
            room = min(len(view), conn.local_flow_control_window(stream_id),
                       conn.max_outbound_frame_size)
            if room <= 0 and view:
                await waiter.wait()
                continue
            chunk, view = view[:room], view[room:]
            conn.send_data(stream_id, bytes(chunk), end_stream=end and not view)
            await self.flush()
            if not view:
                return


def settings(max_streams: int, max_header_bytes: int) -> dict[SettingCodes | int, int]:
    """A server's SETTINGS: streams at once and the decoded header list it takes."""
    return {SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_bytes}
