"""The control socket: HTTP/1.1 on a Unix socket, one request per connection (h11, see
``http``). Streams are chunked JSON lines until the client goes away."""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import trio

from ..files import trusted_dir
from ..model import ControlSpec
from .api import Plant, Reply, error, handle
from .http import Exchange, Refusal, accept_forever
from .roles import identify

log = logging.getLogger("edgelb.control")

MAX_HEAD = 16384
MAX_BODY = 1 << 16
# A client gets this long to send its whole request.
REQUEST_PATIENCE = 10.0


def open_control_socket(spec: ControlSpec) -> socket.socket:
    """Bind the control socket: mode 0660 with group ``spec.group``, so that only members
    of that group (and root) can connect at all; the role check comes after. A socket
    file left by a crash is replaced; one that a live daemon answers on is an error, and
    so is a directory that others could write into (``files.trusted_dir``)."""
    path = spec.socket
    trusted_dir(os.path.dirname(path))
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
    # Made ready under another name and renamed into place: a client that finds the
    # path can connect at once (a client that came between bind and listen was refused).
    ready = f"{path}.{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.lexists(ready):
            os.unlink(ready)
        sock.bind(ready)
        os.chmod(ready, 0o660)
        try:
            gid = grp.getgrnam(spec.group).gr_gid
            if os.stat(ready).st_gid != gid:  # as the service user, it already is
                os.chown(ready, -1, gid)
        except KeyError:
            log.warning("control socket %s: no group %r, so only %s can connect", path,
                        spec.group, "root" if os.getuid() == 0 else "this user")
        except PermissionError:
            log.warning("control socket %s: cannot give it to group %r", path, spec.group)
        sock.listen(64)
        os.rename(ready, path)
    except BaseException:
        sock.close()
        if os.path.lexists(ready):
            os.unlink(ready)
        raise
    return sock


async def serve_control(sock: socket.socket, spec: ControlSpec, plant: Plant,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Accept on the control socket until cancelled; the socket file is removed then."""
    listener = trio.socket.from_stdlib_socket(sock)
    task_status.started()
    try:
        await accept_forever(listener, lambda conn: _connection(conn, spec, plant))
    finally:
        listener.close()
        try:
            os.unlink(spec.socket)
        except OSError:
            pass


async def _connection(conn: trio.socket.SocketType, spec: ControlSpec, plant: Plant) -> None:
    # Nothing a client sends, nor a fault of ours in one answer, may stop the daemon.
    try:
        async with trio.SocketStream(conn) as stream:
            await _answer(conn, Exchange(stream, MAX_HEAD), spec, plant)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client left
    except Exception:
        log.exception("control API: a connection failed")


async def _answer(conn: trio.socket.SocketType, ex: Exchange, spec: ControlSpec,
                  plant: Plant) -> None:
    caller = identify(conn, spec)
    try:
        with trio.fail_after(REQUEST_PATIENCE):
            req = await ex.request(MAX_BODY)
    except Refusal as e:
        await _send_reply(ex, error(e.status, e.message))
        return
    except trio.TooSlowError:
        return
    if req is None:
        return
    try:
        reply = await handle(plant, caller, req.method, req.target, req.body)
    except Exception as e:
        log.exception("control API: %s %s failed", req.method, req.target)
        reply = error(500, f"internal error: {type(e).__name__}")
    await _send_reply(ex, reply)


_JSON = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


async def _send_reply(ex: Exchange, reply: Reply) -> None:
    if reply.stream is None:
        await ex.answer(reply.status, _dump(reply.body), [*_JSON, *reply.headers])
        return
    stream = reply.stream

    async def lines() -> AsyncIterator[bytes]:
        async for item in stream:
            yield _dump(item)

    async with trio.open_nursery() as nursery:
        async def gone() -> None:
            # A stream may wait long for its next item: notice a client that left.
            try:
                while await ex.stream.receive_some(4096):
                    pass
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(gone)
        try:
            await ex.answer_stream(reply.status, lines(), [*_JSON, *reply.headers])
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
        nursery.cancel_scope.cancel()


def _dump(value: Any) -> bytes:
    return json.dumps(value, default=_jsonable).encode() + b"\n"


def _jsonable(v: Any) -> Any:
    if isinstance(v, set | frozenset | tuple):
        return list(v)
    return str(v)
