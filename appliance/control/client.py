"""A client of the control socket, for ``edgelb ctl`` and ``edgelb tui``: blocking, one
connection per request (the daemon closes after each answer)."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
import stat
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

DEFAULT_SOCKET = "/run/edgelb/control.sock"


def socket_path(given: str | None = None) -> str:
    """The socket to talk to: as given, else ``EDGELB_SOCKET``, else the system one."""
    return given or os.environ.get("EDGELB_SOCKET") or DEFAULT_SOCKET


class ControlError(Exception):
    """The daemon refused (``status`` is its HTTP status) or could not be reached
    (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# The user a system daemon runs as (the Ansible role and the unit create it).
DAEMON_USER = "edgelb"


def check_socket(path: str) -> None:
    """Refuse (ControlError, status 0) a socket that no edgelb of ours would own: one
    owned by someone other than root, this user or the daemon's user, or a symbolic
    link. Whoever can write the socket's directory could otherwise put their own socket
    there and answer a root ``ctl`` (or collect what it sends)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # nothing to trust yet: the connect says it is missing
    except OSError:
        return  # not ours to read (its directory): the connect says what it can
    try:
        daemon = pwd.getpwnam(DAEMON_USER).pw_uid
    except KeyError:
        daemon = 0
    owner = st.st_uid
    if stat.S_ISLNK(st.st_mode) or owner not in (0, os.geteuid(), daemon):
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else f"owned by {name}"
        raise ControlError(0, f"refusing {path}: it is {what}, not an edgelb control socket "
                              f"(owned by root, {DAEMON_USER} or you)")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        check_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """Calls on the control API at ``path``."""

    def __init__(self, path: str | None = None, timeout: float = 10.0) -> None:
        self.path = socket_path(path)
        self.timeout = timeout

    def _open(self, method: str, target: str, body: bytes | None,
              timeout: float | None = None) -> tuple[_UnixConnection,
                                                     http.client.HTTPResponse]:
        conn = _UnixConnection(self.path, timeout if timeout is not None else self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
        except FileNotFoundError:
            conn.close()
            raise ControlError(0, f"no control socket at {self.path}: is edgelb running?"
                               ) from None
        except PermissionError:
            conn.close()
            raise ControlError(0, f"permission denied on {self.path}: the socket is for "
                                  "members of its group (see ls -l)") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ControlError(0, f"cannot talk to edgelb at {self.path}: {e}") from None
        if resp.status >= 400:
            try:
                msg = json.loads(resp.read()).get("error", resp.reason)
            except (ValueError, OSError, AttributeError):
                msg = resp.reason
            conn.close()
            raise ControlError(resp.status, msg)
        return conn, resp

    def get(self, path: str, /, **query: Any) -> Any:
        """GET an endpoint (``/v1/...``) with query parameters (None ones left out)."""
        q = {k: v for k, v in query.items() if v is not None and v is not False}
        conn, resp = self._open("GET", path + (f"?{urlencode(q)}" if q else ""), None)
        try:
            return json.loads(resp.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise ControlError(0, f"the answer was cut: {e}") from None
        finally:
            conn.close()

    def act(self, action: str, **args: Any) -> Any:
        """POST an action with its arguments."""
        conn, resp = self._open("POST", f"/v1/actions/{action}", json.dumps(args).encode(),
                                timeout=max(self.timeout, 60))
        try:
            return json.loads(resp.read())
        finally:
            conn.close()

    def stream(self, path: str, /, **query: Any) -> Iterator[Any]:
        """Follow a streaming endpoint: one object per JSON line, until the daemon goes."""
        q = {k: v for k, v in query.items() if v is not None and v is not False}
        q["follow"] = 1
        conn, resp = self._open("GET", f"{path}?{urlencode(q)}", None, timeout=3600)
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException):
                    return
                if not line:
                    return
                yield json.loads(line)
        finally:
            conn.close()
