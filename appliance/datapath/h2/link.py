"""An ``h2`` connection machine over a wire: what the machine has to send goes out one
sender at a time, and a stream's data waits for its flow-control window. The client's
side (``session``) and the backend's (``upstream``) are both one of these."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import trio
from h2.settings import SettingCodes

from ..wire import Wire


def machine(client_side: bool) -> h2.connection.H2Connection:
    """An ``h2`` machine with header names and values kept as bytes. Its own header
    checks are off: they took a third of a request's time, and ours
    (``messages.request_of``, ``messages.relayed``) cover what they did for what we
    receive, and we send only fields we built or checked."""
    return h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=client_side, header_encoding=None, validate_inbound_headers=False,
        normalize_inbound_headers=False, validate_outbound_headers=False,
        normalize_outbound_headers=False))


class H2Link:
    """``conn`` over ``wire``. One writer task (``write``) sends what the machine queued:
    what several streams queue between two writes goes out in one, and a sender that
    is cancelled (its stream reset, its timeout up) loses nothing of what it queued,
    which would break the connection's framing and HPACK state for every stream."""

    def __init__(self, conn: h2.connection.H2Connection, wire: Wire) -> None:
        self.conn = conn
        self.wire = wire
        self.out = bytearray()  # taken from the machine, for the writer
        self.wake = trio.Event()  # the writer has something to send
        self.sent = trio.Event()  # set (and replaced) each time the writer caught up
        self.sending = False
        self.failed = False
        self.window = trio.Event()  # set (and replaced) whenever a window may have grown

    def queue(self, extra: bytes = b"") -> None:
        """Hand what the machine has to send (and ``extra``, whole frames of our own) to
        the writer."""
        self.out += self.conn.data_to_send()
        self.out += extra
        if self.out:
            self.wake.set()

    async def flush(self, extra: bytes = b"") -> None:
        """Queue, and wait until the writer sent it: a peer that does not read holds
        every sender here, and nothing queues without bound behind it. ConnectionError
        once the connection failed."""
        self.queue(extra)
        while (self.out or self.sending) and not self.failed:
            await self.sent.wait()
        if self.failed:
            raise ConnectionResetError("the HTTP/2 connection failed")

    async def write(self) -> None:
        """The writer: run it for the connection's life, beside its reader."""
        try:
            while True:
                await self.wake.wait()
                self.wake = trio.Event()
                while self.out:
                    data = bytes(self.out)
                    self.out.clear()
                    self.sending = True
                    await self.wire.send(data)
                    self.sending = False
                sent, self.sent = self.sent, trio.Event()
                sent.set()
        except (OSError, trio.ClosedResourceError):
            self.failed = True
            self.sent.set()

    def ack(self, stream_id: int, length: int) -> None:
        """``length`` received bytes of ``stream_id`` were taken: the peer may send as
        much again (on the connection, also when the stream has closed meanwhile)."""
        try:
            self.conn.acknowledge_received_data(length, stream_id)
        except h2.exceptions.ProtocolError:
            pass

    def opened(self) -> None:
        """A WINDOW_UPDATE or new SETTINGS came: wake the senders waiting for room."""
        self.window.set()
        self.window = trio.Event()

    def fits(self, stream_id: int, size: int) -> bool:
        """Whether ``size`` bytes go out on ``stream_id`` at once, as one frame."""
        try:
            conn = self.conn
            return size <= min(conn.local_flow_control_window(stream_id),
                               conn.max_outbound_frame_size)
        except h2.exceptions.ProtocolError:
            return True  # sending says so

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
