"""The access log, off the request path (as nginx's ``buffer=``/``flush=`` and HAProxy's
syslog are): a request appends its preformatted line to a buffer, and a tick writes
the buffer out in one call from a thread, so that a slow or stuck target never holds
the event loop. Lines that do not fit while a write is under way are dropped and
counted (``edgelb_access_log_dropped_total``), never waited for. Through the logging
module each line cost about as much as the request it described.

The line is the one the log handlers wrote: ``TIME INFO edgelb.access[PID]: MESSAGE``,
or with ``--log-format json`` one JSON object with the request's fields."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import trio

from ..logs import Throttled, json_record, log_format
from ..model import AccessLogSpec, Listener
from ..views import ListenerStats

if TYPE_CHECKING:
    from .forward import Exchange
    from .http1 import Request

NO_FIELDS: dict[str, object] = {}  # the fields of a line, unused in text format

log = logging.getLogger("edgelb.access")
# syslog: facility local0, severity info (RFC 5424 6.2.1).
SYSLOG_PRI = b"<134>"
SYSLOG_SOCKET = "/dev/log"


class Sink:
    """Where the lines go: stderr, a file (opened for append, reopened on request, as
    logrotate needs) or syslog's socket (one datagram per line). ``write`` blocks: it
    runs in a thread."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.fd = -1
        self.sock: socket.socket | None = None
        self.reopen_wanted = False
        self.lock = threading.Lock()  # a write and a close never overlap

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.target == "stderr":
                _write_all(2, data)
            elif self.target == "syslog":
                self._syslog(data)
            else:
                if self.fd < 0 or self.reopen_wanted:
                    self._open()
                _write_all(self.fd, data)

    def _open(self) -> None:
        self.reopen_wanted = False
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o640)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def _syslog(self, data: bytes) -> None:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(SYSLOG_SOCKET)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        head = SYSLOG_PRI + b"edgelb[%d]: " % os.getpid()
        for line in data.splitlines():
            self.sock.send(head + line)

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            if self.sock is not None:
                self.sock.close()
                self.sock = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class AccessLog:
    """One process's access log: the buffer, the sink and the tick that writes."""

    def __init__(self, spec: AccessLogSpec | None = None, fmt: str | None = None) -> None:
        self.spec = spec or AccessLogSpec()
        self.json = (fmt or log_format()) == "json"
        self.pid = os.getpid()
        self.sink = Sink(self.spec.target)
        self.lines: list[str] = []
        self.owners: list[ListenerStats] = []  # whose line each is, to count what is lost
        self.size = 0
        self.writing = False
        self._second = -1
        self._stamp = ""
        self._failed = Throttled(log, 10.0)
        self.wake = trio.Event()

    def configure(self, spec: AccessLogSpec) -> None:
        """Take a new target, buffer size or tick (a new Snapshot)."""
        if spec.target != self.spec.target:
            old, self.sink = self.sink, Sink(spec.target)
            old.close()
        self.spec = spec
        self.wake.set()

    def reopen(self) -> None:
        """Open the file again before the next write (SIGHUP, SIGUSR1: logrotate)."""
        self.sink.reopen_wanted = True

    def add(self, stats: ListenerStats, msg: str, fields: dict[str, Any]) -> None:
        """One request's line, or one more dropped when the buffer is full."""
        if self.size >= self.spec.buffer:
            stats.access_log_dropped += 1
            return
        if self.json:
            line = self._json(msg, fields)
        else:
            line = f"{self._time()} INFO edgelb.access[{self.pid}]: {msg}\n"
        self.lines.append(line)
        self.owners.append(stats)
        self.size += len(line)

    def _time(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def _json(self, msg: str, fields: dict[str, Any]) -> str:
        return json.dumps(json_record(time.time(), "info", "edgelb.access", msg, self.pid,
                                      fields)) + "\n"

    async def run(self) -> None:
        """Write the buffer every ``flush`` seconds, for good."""
        while True:
            with trio.move_on_after(self.spec.flush):
                await self.wake.wait()
            self.wake = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered now (one write in a thread; lines keep coming in
        meanwhile, up to the buffer's size)."""
        if not self.lines or self.writing:
            return
        data = "".join(self.lines).encode("utf-8", "backslashreplace")
        owners = self.owners
        self.lines, self.owners, self.size = [], [], 0
        self.writing = True
        try:
            await trio.to_thread.run_sync(self.sink.write, data, abandon_on_cancel=True)
        except OSError as e:
            for st in owners:
                st.access_log_dropped += 1
            self._failed(logging.ERROR, "access log %s: cannot write (%s); lines dropped",
                         self.spec.target, e.strerror or e)
        finally:
            self.writing = False

    def close(self) -> None:
        self.sink.close()

    def request(self, listener: Listener, stats: ListenerStats, client_ip: str,
                req: Request, ex: Exchange, version: str = "") -> None:
        """The line of one request, when its listener logs them (HTTP/2 ones say so)."""
        if listener.http is None or not listener.http.access_log:
            return
        total = (time.monotonic() - ex.started) * 1000
        method, target = req.method.decode(), req.target.decode("latin-1")
        connect = f"{ex.connect_ms:.1f}ms" if ex.connect_ms >= 0 else "-"
        host = req.host or "-"
        proto = f" {version}" if version else ""
        msg = (f'{listener.name} {client_ip} "{method} {host}{target}{proto}" '
               f"{ex.status} in={ex.bytes_in} out={ex.bytes_out} backend={ex.backend} "
               f"connect={connect} total={total:.1f}ms")
        if not self.json:
            self.add(stats, msg, NO_FIELDS)
            return
        fields: dict[str, object] = {
            "listener": listener.name, "client": client_ip, "host": req.host,
            "method": method, "path": target, "status": ex.status,
            "bytes_in": ex.bytes_in, "bytes_out": ex.bytes_out, "backend": ex.backend,
            "connect_ms": round(ex.connect_ms, 3), "total_ms": round(total, 3)}
        if version:
            fields["protocol"] = version
        self.add(stats, msg, fields)
