"""HTTP/2 messages (RFC 9113) as the rest of the proxy sees them, and back. Pure.

A request's header list becomes the ``http1.Request`` that routing, the access log and
an HTTP/1.1 backend already know: it is written as the HTTP/1.1 head it stands for and
parsed by the same strict parser, so an HTTP/2 request meets every check an HTTP/1.1
one does (field syntax, lengths, limits). A response, from either kind of backend,
becomes a header list for the client's stream.
"""

from __future__ import annotations

import re

from ...model import HttpLimits
from ..errors import ClientError
from ..http1 import HOP_BY_HOP, LENGTH, REASONS, Request, Response, parse_request
from ..http1.heads import upstream_fields

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Headers = list[tuple[bytes, bytes]]

_PSEUDO = (b":method", b":scheme", b":authority", b":path")
# A field name as HTTP/2 has it: a token in lowercase, or a pseudo-header's.
_NAME = re.compile(rb":?[!#$%&'*+.^_`|~0-9a-z-]+")
# Fields HTTP/2 forbids (RFC 9113 8.2.2): an HTTP/1.1 backend's are dropped on the way.
CONNECTION_SPECIFIC = HOP_BY_HOP - {b"te", b"trailer"}


def request_of(headers: Headers, end_stream: bool, limits: HttpLimits) -> Request:
    """The request a stream's header list stands for; ClientError (400, 431, 501) when
    it is malformed or not served. A body of unknown length is chunked for an HTTP/1.1
    backend."""
    pseudo: dict[bytes, bytes] = {}
    fields: Headers = []
    cookies: list[bytes] = []
    host: bytes | None = None
    for name, value in headers:
        if not _sendable(name, value):
            raise ClientError(400, "a malformed field")
        if name[:1] == b":":
            if fields or cookies or name in pseudo or name not in _PSEUDO:
                raise ClientError(400, f"bad pseudo-header {name.decode('latin-1')}")
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(value)  # split for compression; one field again (8.2.3)
        elif name == b"host":
            if host is not None:
                raise ClientError(400, "two Host fields")
            host = value
        elif name in CONNECTION_SPECIFIC and name != b"te":
            raise ClientError(400, f"{name.decode()} is not allowed in HTTP/2")
        else:
            fields.append((name, value))
    method = pseudo.get(b":method")
    if method == b"CONNECT":
        raise ClientError(501, "CONNECT is not served")
    path, scheme = pseudo.get(b":path"), pseudo.get(b":scheme")
    if not method or not path or not scheme:
        raise ClientError(400, "a request needs :method, :scheme and :path")
    authority = pseudo.get(b":authority")
    if authority is not None and host is not None and host != authority:
        raise ClientError(400, "Host differs from :authority")
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    head = [method, b" ", path, b" HTTP/1.1\r\n"]
    target_host = authority if authority is not None else host
    if target_host is not None:
        head += (b"host: ", target_host, b"\r\n")
    for name, value in fields:
        if name == b"te":
            if value.lower() != b"trailers":
                raise ClientError(400, "TE other than trailers")
            continue  # HTTP/1.1 hop-by-hop; an HTTP/2 backend gets it again
        head += (name, b": ", value, b"\r\n")
    length = any(name == b"content-length" for name, _ in fields)
    if not end_stream and not length:
        head.append(b"transfer-encoding: chunked\r\n")
    return parse_request(b"".join(head)[:-2], limits)


def wants_trailers(headers: Headers) -> bool:
    """The client asked for trailers (gRPC does: ``te: trailers``)."""
    return any(name == b"te" and value.lower() == b"trailers" for name, value in headers)


def response_headers(resp: Response) -> Headers:
    """An HTTP/1.1 backend's response head as HTTP/2 headers: the status, its end-to-end
    fields in lowercase, no connection-specific ones."""
    out: Headers = [(b":status", b"%d" % resp.status)]
    for name, value in resp.fields:
        low = name.lower()
        if low in HOP_BY_HOP or low in resp.connection_drop:
            continue
        if low == b"content-length" and resp.framing.kind != LENGTH:
            continue
        out.append((low, value))
    return out


def error_response(status: int) -> tuple[Headers, bytes]:
    """A response edgelb makes itself: its headers and a short text body."""
    body = f"{status} {REASONS.get(status, '')}\n".encode()
    return [(b":status", b"%d" % status), (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(body))], body


def backend_request(req: Request, client_ip: str, proto: str, trusted: bool, scheme: bytes,
                    trailers: bool) -> Headers:
    """The request as an HTTP/2 backend gets it: pseudo-headers, then the fields an
    HTTP/1.1 backend would get (X-Forwarded-*, Forwarded), without framing and
    connection fields, and ``te: trailers`` when the client asked for them."""
    out: Headers = [(b":method", req.method), (b":scheme", scheme),
                    (b":authority", req.raw_host), (b":path", req.target)]
    for name, value in upstream_fields(req, client_ip, proto, trusted, framing=False):
        low = name.lower()
        if low == b"host" or low in CONNECTION_SPECIFIC:
            continue
        out.append((low, value))
    if trailers:
        out.append((b"te", b"trailers"))
    return out


def relayed(headers: Headers) -> Headers:
    """An HTTP/2 backend's response headers (or trailers) as the client gets them: no
    connection-specific fields, and none that could not be sent on (a backend's field
    with CR, LF or NUL, or a name that is not lowercase)."""
    return [(n, v) for n, v in headers if n not in CONNECTION_SPECIFIC and _sendable(n, v)]


def _sendable(name: bytes, value: bytes) -> bool:
    """A field HTTP/2 may carry and an HTTP/1.1 head may hold: a lowercase token name (or
    a pseudo-header's) and a value without CR, LF or NUL."""
    return bool(_NAME.fullmatch(name)) and b"\r" not in value and b"\n" not in value and \
        b"\0" not in value


def status_of(headers: Headers) -> int:
    for name, value in headers:
        if name == b":status":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
