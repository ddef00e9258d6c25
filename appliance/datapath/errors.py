"""What can go wrong on the datapath, as the I/O layer tells it apart. ``OSError`` never
leaves the byte-moving code: it is translated here, at the boundary, into what it means
for the flow.

    HttpError               a message edgelb will not pass on; ``status`` is the answer
    ├── ClientError         the client's request is refused: ``status`` (4xx, or 501/505)
    │                       to the client, then close; no backend ever sees it
    └── BackendError        the backend's response is refused: 502 to the client
    ClientGone              the client closed or reset: there is nobody to answer
    BackendGone             the backend closed or reset before its response was whole
    BackendUnreachable      no backend of the pool took the connection (``tried``: whether
                            any was tried, which makes the answer 502 rather than 503)
    Exhausted               this box is out of descriptors or memory: no backend is to
                            blame, the flow is refused (503) until flows close

The protocol errors carry the status to answer with, as h11's LocalProtocolError and
RemoteProtocolError carry ``error_status_hint``.
"""

from __future__ import annotations


class HttpError(Exception):
    """A message edgelb will not forward: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class ClientError(HttpError):
    """What the client sent is refused (RFC 9112 framing, limits, a bad head)."""


class BackendError(HttpError):
    """What the backend sent cannot be passed on: the client gets 502."""

    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


class ClientGone(Exception):
    """The client connection closed or failed: the flow ends without an answer."""


class BackendGone(Exception):
    """The backend connection closed or failed before its response was complete."""


class BackendUnreachable(Exception):
    """No backend of the pool accepted a connection; ``tried`` says whether any backend
    was usable at all (then the failure is the backends', 502; else there were none, 503)."""

    def __init__(self, tried: bool) -> None:
        super().__init__("no backend reachable" if tried else "no backend available")
        self.tried = tried


class Exhausted(Exception):
    """This box ran out of descriptors or memory for a new connection: not a backend's
    failure, and not to be counted against one."""
