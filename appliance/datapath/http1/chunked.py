"""The chunked transfer coding (RFC 9112 7.1), strictly, in both directions. Pure."""

from __future__ import annotations

import re

from .heads import _FIELD, _why_bad_field, refusal

LAST_CHUNK = b"0\r\n\r\n"

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    """One chunk of the chunked coding."""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """Incremental strict decoder of the chunked coding: ``feed`` returns the data it
    decoded; ``done`` is set after the last chunk and trailer, and ``rest`` holds the bytes
    after the body (the next pipelined message). Trailer fields are validated and dropped.
    ``status`` is what a framing error answers: 400 for a request, 502 for a response.
    """

    def __init__(self, status: int = 400, max_line: int = 4096,
                 max_trailer: int = 16384) -> None:
        self.status = status
        self.max_line = max_line
        self.max_trailer = max_trailer
        self.state = _SIZE
        self.remaining = 0
        self.trailer_bytes = 0
        self.buf = bytearray()
        self.rest = b""

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Decode ``data``; raise ClientError (or BackendError) on a framing error."""
        if self.state == _DONE:
            self.rest += bytes(data)
            return []
        if self.state == _DATA and not self.buf and len(data) <= self.remaining:
            # The common bulk case: the whole read is chunk data, no copying into buf.
            self.remaining -= len(data)
            if not self.remaining:
                self.state = _DATA_END
            return [bytes(data)]
        buf = self.buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while True:
            state = self.state
            if state == _SIZE:
                moved = self._size(buf, pos, out)
            elif state == _DATA:
                moved = self._data(buf, pos, out)
            elif state == _DATA_END:
                moved = self._data_end(buf, pos, out)
            elif state == _TRAILER:
                moved = self._trailer(buf, pos, out)
            else:
                moved = -1  # done: the rest waits in ``rest``
            if moved < 0:
                break
            pos = moved
        del buf[:pos]
        return out

    # Each step consumes from ``pos`` and returns the new position, or -1 when it needs
    # more bytes (having consumed nothing).

    def _data(self, buf: bytearray, pos: int, out: list[bytes]) -> int:
        n = min(len(buf) - pos, self.remaining)
        if n == 0:
            return -1
        out.append(bytes(buf[pos:pos + n]))
        self.remaining -= n
        if not self.remaining:
            self.state = _DATA_END
        return pos + n

    def _data_end(self, buf: bytearray, pos: int, out: list[bytes]) -> int:
        if len(buf) - pos < 2:
            return -1
        if buf[pos:pos + 2] != b"\r\n":
            raise refusal(self.status, "chunk data not followed by CRLF")
        self.state = _SIZE
        return pos + 2

    def _line_end(self, buf: bytearray, pos: int) -> int:
        """Where the line at ``pos`` ends (its CR), or -1 until its LF has come. A line
        ended by LF alone is refused at once: waiting for a CRLF held it until a
        timeout."""
        lf = buf.find(b"\n", pos)
        if lf < 0:
            return -1
        if lf == pos or buf[lf - 1] != 0x0D:
            raise refusal(self.status, "a chunk line ended by LF alone, not CRLF")
        return lf - 1

    def _size(self, buf: bytearray, pos: int, out: list[bytes]) -> int:
        eol = self._line_end(buf, pos)
        if eol < 0:
            if len(buf) - pos > self.max_line:
                raise refusal(self.status, "chunk size line too long")
            return -1
        m = _CHUNK_SIZE.fullmatch(buf, pos, eol)
        if m is None:
            raise refusal(self.status, "bad chunk size")
        size = int(m.group(1), 16)
        if size:
            self.remaining = size
            self.state = _DATA
        else:
            self.state = _TRAILER
        return eol + 2

    def _trailer(self, buf: bytearray, pos: int, out: list[bytes]) -> int:
        eol = self._line_end(buf, pos)
        if eol < 0:
            if self.trailer_bytes + len(buf) - pos > self.max_trailer:
                raise refusal(self.status, "trailer too large")
            return -1
        line = bytes(buf[pos:eol])
        if not line:
            # The blank line ends the body: what follows is the next message's.
            self.state = _DONE
            self.rest = bytes(buf[eol + 2:])
            return len(buf)
        self.trailer_bytes += len(line) + 2
        if self.trailer_bytes > self.max_trailer:
            raise refusal(self.status, "trailer too large")
        if _FIELD.fullmatch(line) is None:
            raise refusal(self.status, _why_bad_field(line))
        return eol + 2

