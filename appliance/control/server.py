"""The control socket: HTTP/1.1 on a Unix socket, one request per connection, parsed by
the same strict parser as the datapath. Streams are chunked JSON lines until the client
goes away."""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import socket
from typing import Any

import trio

from ..datapath.http1 import CHUNKED, LENGTH, HttpError, chunk, parse_request
from ..model import ControlSpec, HttpLimits
from .api import Plant, Reply, error, handle
from .roles import identify

log = logging.getLogger("edgelb.control")

_LIMITS = HttpLimits(max_request_line=4096, max_header_bytes=16384, max_headers=50)
MAX_BODY = 1 << 16
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 411: "Length Required",
            413: "Content Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def open_control_socket(spec: ControlSpec) -> socket.socket:
    """Bind the control socket: mode 0660 with group ``spec.group``, so that only members
    of that group (and root) can connect at all; the role check comes after. A socket
    file left by a crash is replaced; one that a live daemon answers on is an error."""
    path = spec.socket
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise OSError(errno.EADDRINUSE, f"control socket {path}: another edgelb is "
                                            "answering on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o660)
        try:
            gid = grp.getgrnam(spec.group).gr_gid
            if os.stat(path).st_gid != gid:  # as the service user, it already is
                os.chown(path, -1, gid)
        except KeyError:
            log.warning("control socket %s: no group %r, so only %s can connect", path,
                        spec.group, "root" if os.getuid() == 0 else "this user")
        except PermissionError:
            log.warning("control socket %s: cannot give it to group %r", path, spec.group)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_control(sock: socket.socket, spec: ControlSpec, plant: Plant,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Accept on the control socket until cancelled; the socket file is removed then."""
    listener = trio.socket.from_stdlib_socket(sock)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_connection, conn, spec, plant)
    finally:
        listener.close()
        try:
            os.unlink(spec.socket)
        except OSError:
            pass


async def _connection(conn: trio.socket.SocketType, spec: ControlSpec, plant: Plant) -> None:
    # Nothing a client sends, nor a fault of ours in one answer, may stop the daemon.
    try:
        await _answer(conn, spec, plant)
    except Exception:
        log.exception("control API: a connection failed")


async def _answer(conn: trio.socket.SocketType, spec: ControlSpec, plant: Plant) -> None:
    with conn:
        try:
            caller = identify(conn, spec)
            with trio.fail_after(10):
                method, target, body = await _read_request(conn)
        except HttpError as e:
            await _send_reply(conn, error(e.status, e.reason))
            return
        except (OSError, trio.TooSlowError, EOFError):
            return
        try:
            reply = await handle(plant, caller, method, target, body)
        except Exception as e:
            log.exception("control API: %s %s failed", method, target)
            reply = error(500, f"internal error: {type(e).__name__}")
        try:
            await _send_reply(conn, reply)
        except (OSError, trio.BrokenResourceError):
            return  # the client left before its answer was sent


async def _read_request(conn: trio.socket.SocketType) -> tuple[str, str, bytes]:
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > _LIMITS.max_header_bytes:
            raise HttpError(431, "request head too large")
        chunk = await conn.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    req = parse_request(bytes(buf[:end]), _LIMITS)
    body = bytes(buf[end + 4:])
    if req.framing.kind == CHUNKED:
        raise HttpError(411, "send the body with a Content-Length")
    length = req.framing.length if req.framing.kind == LENGTH else 0
    if length > MAX_BODY:
        raise HttpError(413, f"a body over {MAX_BODY} bytes")
    while len(body) < length:
        chunk = await conn.recv(65536)
        if not chunk:
            raise EOFError
        body += chunk
    return req.method.decode(), req.target.decode("latin-1"), body[:length]


def _head(status: int, extra: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             "Content-Type: application/json", "Connection: close", "Cache-Control: no-store"]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n").encode()


async def _send_reply(conn: trio.socket.SocketType, reply: Reply) -> None:
    out = trio.SocketStream(conn)
    if reply.stream is None:
        data = json.dumps(reply.body, default=_jsonable).encode() + b"\n"
        await out.send_all(_head(reply.status, reply.headers) +
                           f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return
    await out.send_all(_head(reply.status, reply.headers) +
                       b"Transfer-Encoding: chunked\r\n\r\n")
    stream = reply.stream
    async with trio.open_nursery() as nursery:
        async def gone() -> None:
            # A stream may wait long for its next item: notice a client that left.
            try:
                while await conn.recv(4096):
                    pass
            except OSError:
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(gone)
        try:
            async for item in stream:
                await out.send_all(chunk(json.dumps(item, default=_jsonable).encode() + b"\n"))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
        nursery.cancel_scope.cancel()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)
