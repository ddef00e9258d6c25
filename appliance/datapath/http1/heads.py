"""HTTP/1.1 message heads (RFC 9112), strictly: request and response heads, body framing,
and the heads edgelb sends on. Pure: bytes in, values or a ClientError/BackendError out.

Strict means that anything a request-smuggling attack leans on is refused with 400 rather
than repaired: Content-Length with Transfer-Encoding, conflicting or malformed lengths,
a Transfer-Encoding whose last coding is not chunked, obs-fold, whitespace before a colon,
CR, LF or NUL in a field, bad chunk sizes, two Host fields, and an absolute-form target
whose authority disagrees with Host. Lines must end in CRLF; a bare LF is refused.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate

from ...model import HttpLimits
from ..errors import BackendError, ClientError, HttpError


def normalize_host(host: str) -> str:
    """The host part of a Host header or SNI name, lowercased and without the port."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    colon = host.rfind(":")
    if colon >= 0 and host.count(":") == 1:
        host = host[:colon]
    return host.rstrip(".")


def refusal(status: int, reason: str) -> HttpError:
    """The error for a bad message: the client's fault below 500 (and for 501 and 505,
    which answer what the client asked for), the backend's (502) otherwise."""
    return BackendError(reason) if status == 502 else ClientError(status, reason)


REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 417: "Expectation Failed", 431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9]\d\d)(?: [\t\x20-\x7e\x80-\xff]*)?")
# A field line: no whitespace before the colon, optional whitespace around the value,
# and no CTL other than HTAB inside it (so no CR, LF or NUL).
_VCHARS = rb"[\x21-\x7e\x80-\xff]+"
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:" + _VCHARS + rb"(?:[ \t]+" + _VCHARS
                    + rb")*)?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")

# Hop-by-hop fields (RFC 9110 7.6.1) and the de-facto ones: never forwarded as they came.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization"})
# Connection may list fields to drop, but never these: dropping them would change framing.
_UNDROPPABLE = frozenset({b"host", b"content-length", b"transfer-encoding"})
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                         b"forwarded"})

NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3


def _why_bad_field(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "a header line without a colon"
    if name != name.rstrip(b" \t"):
        return "whitespace between a header name and the colon"
    if b"\r" in line or b"\n" in line or b"\x00" in line:
        return "CR, LF or NUL inside a header"
    return "an invalid header name or value"


def bare_lf(buf: bytes | bytearray) -> bool:
    """Whether a line in ``buf`` ends with LF alone. Refused (RFC 9112 2.2 allows that):
    waiting for a CRLF that never comes held such a message until a timeout."""
    return buf.count(b"\n") != buf.count(b"\r\n")


def _split_fields(block: bytes, status: int) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    if not block:
        return fields
    for line in block.split(b"\r\n"):
        m = _FIELD.fullmatch(line)
        if m is None:
            raise refusal(status, _why_bad_field(line))
        fields.append((m.group(1), m.group(2)))
    return fields


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


@dataclass(slots=True)
class Framing:
    """How a message body is delimited: ``kind`` NO_BODY, LENGTH (``length`` bytes),
    CHUNKED, or UNTIL_CLOSE; ``codings`` are the transfer codings before chunked."""

    kind: int
    length: int = 0
    codings: bytes = b""


class _Control:
    """The fields that decide framing, routing and connection handling, gathered in one
    pass over a head (requests and responses alike). Most heads have none but Host:
    each kind starts as a shared empty tuple, made anew only when it occurs."""

    __slots__ = ("connection", "expects", "hosts", "lengths", "te", "upgrade")

    def __init__(self) -> None:
        self.hosts: tuple[bytes, ...] = ()
        self.lengths: tuple[bytes, ...] = ()
        self.te: tuple[bytes, ...] = ()
        self.connection: frozenset[bytes] = _NO_TOKENS
        self.upgrade: bytes | None = None
        self.expects: tuple[bytes, ...] = ()


_NO_TOKENS: frozenset[bytes] = frozenset()
_HOST_F, _LENGTH_F, _TE_F, _CONNECTION_F, _UPGRADE_F, _EXPECT_F = range(6)
_CONTROL_FIELDS = {b"host": _HOST_F, b"content-length": _LENGTH_F,
                   b"transfer-encoding": _TE_F, b"connection": _CONNECTION_F,
                   b"upgrade": _UPGRADE_F, b"expect": _EXPECT_F}


def _control(fields: list[tuple[bytes, bytes]]) -> _Control:
    c = _Control()
    which = _CONTROL_FIELDS.get
    for name, value in fields:
        kind = which(name.lower())
        if kind is None:
            continue
        if kind == _HOST_F:
            c.hosts += (value,)
        elif kind == _LENGTH_F:
            c.lengths += (value,)
        elif kind == _TE_F:
            c.te += (value,)
        elif kind == _CONNECTION_F:
            c.connection = c.connection.union(_tokens(value))
        elif kind == _UPGRADE_F:
            c.upgrade = value
        else:
            c.expects += (value,)
    return c


_BODILESS = Framing(NO_BODY)  # never changed once made: shared
_TO_CLOSE = Framing(UNTIL_CLOSE)


def _framing(lengths: tuple[bytes, ...], te: tuple[bytes, ...], status: int,
             request: bool) -> Framing:
    if not te and not lengths:
        return _BODILESS if request else _TO_CLOSE
    if len(lengths) == 1 and not te and lengths[0].isdigit() and len(lengths[0]) <= 18:
        n = int(lengths[0])  # the common case: one plain length
        return Framing(LENGTH, n) if n else _BODILESS
    if te and lengths:
        raise refusal(status, "both Content-Length and Transfer-Encoding")
    if te:
        codings = [c for v in te for c in _tokens(v)]
        if not codings or codings[-1] != b"chunked":
            if request:
                raise refusal(status, "Transfer-Encoding does not end in chunked")
            return _TO_CLOSE
        if b"chunked" in codings[:-1]:
            raise refusal(status, "chunked applied more than once")
        return Framing(CHUNKED, codings=b", ".join(codings[:-1]))
    if lengths:
        values = {v.strip(b" \t") for raw in lengths for v in raw.split(b",")}
        if len(values) != 1:
            raise refusal(status, "conflicting Content-Length values")
        value = values.pop()
        if not _DIGITS.fullmatch(value):
            raise refusal(status, "malformed Content-Length")
        n = int(value)
        return Framing(LENGTH, n) if n else _BODILESS
    return _BODILESS if request else _TO_CLOSE


@dataclass(slots=True)
class Request:
    """A parsed, validated request head."""

    method: bytes
    target: bytes  # origin-form, as sent on to the backend
    minor: int  # HTTP/1.<minor>
    fields: list[tuple[bytes, bytes]]
    host: str  # normalized for routing ("" without a Host)
    raw_host: bytes
    path: str  # the path without the query, for routing
    framing: Framing
    keep_alive: bool
    upgrade: bytes | None = None
    expect_continue: bool = False
    connection_drop: frozenset[bytes] = field(default_factory=frozenset)

    @property
    def idempotent(self) -> bool:
        return self.method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE")


def request_line_end(buf: bytes | bytearray, limits: HttpLimits) -> None:
    """Raise 414 when no request line ends within the limit (called before the head is
    complete, so that an endless line is refused early)."""
    if buf.find(b"\r\n", 0, limits.max_request_line + 2) < 0 and \
            len(buf) > limits.max_request_line:
        raise ClientError(414, "request line too long")


def parse_request(head: bytes, limits: HttpLimits) -> Request:
    """Parse a request head (up to, not including, the blank line) or raise HttpError."""
    line, _, block = head.partition(b"\r\n")
    if len(line) > limits.max_request_line:
        raise ClientError(414, "request line too long")
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise ClientError(400, "malformed request line")
    method, target, major, minor = m.group(1), m.group(2), m.group(3), m.group(4)
    if major != b"1" or minor not in (b"0", b"1"):
        raise ClientError(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if len(head) > limits.max_header_bytes:
        raise ClientError(431, "request header too large")
    fields = _split_fields(block, 400)
    if len(fields) > limits.max_headers:
        raise ClientError(431, "too many header fields")

    c = _control(fields)
    if any(v.lower() != b"100-continue" for v in c.expects):
        raise ClientError(417, "only Expect: 100-continue is understood")
    if len(c.hosts) > 1:
        raise ClientError(400, "more than one Host")
    one_one = minor == b"1"
    if one_one and not c.hosts:
        raise ClientError(400, "HTTP/1.1 request without Host")
    raw_host = c.hosts[0] if c.hosts else b""
    if not _HOST.fullmatch(raw_host):
        raise ClientError(400, "malformed Host")
    if c.te and not one_one:
        raise ClientError(400, "Transfer-Encoding in an HTTP/1.0 request")
    framing = _framing(c.lengths, c.te, 400, True)

    if target[:1] == b"/":
        pass
    elif target == b"*":
        if method != b"OPTIONS":
            raise ClientError(400, "asterisk-form target is only for OPTIONS")
    elif method == b"CONNECT":
        raise ClientError(501, "CONNECT is not served")
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise ClientError(400, "malformed request target")
        slash = rest.find(b"/")
        authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        if b"@" in authority or normalize_host(authority.decode("latin-1")) != \
                normalize_host(raw_host.decode("latin-1")):
            raise ClientError(400, "absolute-form target disagrees with Host")
    if b"#" in target:
        raise ClientError(400, "fragment in request target")

    tokens = c.connection
    keep = (b"close" not in tokens) if one_one else (b"keep-alive" in tokens)
    # Upgrade without Connection: upgrade is not a request to switch.
    upgrade = c.upgrade if b"upgrade" in tokens else None
    q = target.find(b"?")
    path = (target if q < 0 else target[:q]).decode("latin-1")
    return Request(method, target, int(minor), fields,
                   normalize_host(raw_host.decode("latin-1")), raw_host, path, framing, keep,
                   upgrade, bool(c.expects), tokens - _UNDROPPABLE if tokens else _NO_TOKENS)


@dataclass(slots=True)
class Response:
    """A parsed, validated response head from a backend."""

    status: int
    minor: int
    status_line: bytes
    fields: list[tuple[bytes, bytes]]
    framing: Framing
    keep_alive: bool
    connection_drop: frozenset[bytes]


def parse_response(head: bytes, method: bytes) -> Response:
    """Parse a backend's response head; raise HttpError(502) for one not to pass on."""
    line, _, block = head.partition(b"\r\n")
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        raise BackendError("malformed status line from the backend")
    minor, status = int(m.group(1)), int(m.group(2))
    fields = _split_fields(block, 502)
    c = _control(fields)
    if c.te and c.lengths:
        raise BackendError("backend sent both Content-Length and Transfer-Encoding")
    if method == b"HEAD" or status < 200 or status in (204, 304):
        framing = _BODILESS
    else:
        framing = _framing(c.lengths, c.te, 502, False)
    tokens = c.connection
    keep = (b"close" not in tokens) if minor == 1 else (b"keep-alive" in tokens)
    if framing.kind == UNTIL_CLOSE:
        keep = False
    return Response(status, minor, line, fields, framing, keep,
                    tokens - _UNDROPPABLE if tokens else _NO_TOKENS)


def _format_addr(ip: str, quoted: bool) -> str:
    if ":" in ip:
        return f'"[{ip}]"' if quoted else ip
    return ip


def upstream_head(req: Request, client_ip: str, proto: str, trusted: bool) -> bytes:
    """The request head sent to a backend: origin-form target, HTTP/1.1, hop-by-hop fields
    removed, X-Forwarded-For/-Proto/-Host and Forwarded set (appended to when the client
    is a trusted proxy, replaced otherwise), framing stated anew."""
    out = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    for name, value in upstream_fields(req, client_ip, proto, trusted):
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def upstream_fields(req: Request, client_ip: str, proto: str, trusted: bool,
                    framing: bool = True) -> list[tuple[bytes, bytes]]:
    """The fields of the request as a backend gets it (see ``upstream_head``); without
    ``framing``, no Content-Length or Transfer-Encoding (HTTP/2 frames the body)."""
    out: list[tuple[bytes, bytes]] = []
    drop = req.connection_drop
    xff = fwd = b""
    xproto = xhost = b""
    has_host = has_length = False
    for name, value in req.fields:
        low = name.lower()
        if low in HOP_BY_HOP or low in drop or low == b"expect":
            continue
        if low == b"content-length":
            # Stated once, below: two equal fields or a list of equal values were passed
            # on as they came, for a backend that reads them otherwise to desync on.
            has_length = True
            continue
        if low in _FORWARDING:
            if trusted:
                if low == b"x-forwarded-for":
                    xff = xff + b", " + value if xff else value
                elif low == b"forwarded":
                    fwd = fwd + b", " + value if fwd else value
                elif low == b"x-forwarded-proto":
                    xproto = value
                else:
                    xhost = value
            continue
        if low == b"host":
            has_host = True
        out.append((name, value))
    if not has_host:
        out.append((b"Host", b""))
    ip = client_ip.encode()
    host = req.raw_host
    out += [(b"X-Forwarded-For", xff + b", " + ip if xff else ip),
            (b"X-Forwarded-Proto", xproto or proto.encode()),
            (b"X-Forwarded-Host", xhost or host)]
    this = b"for=" + _format_addr(client_ip, True).encode() + b";proto=" + proto.encode()
    if host:
        this += b';host="' + host + b'"'
    out.append((b"Forwarded", fwd + b", " + this if fwd else this))
    if has_length and framing:
        out.append((b"Content-Length", b"%d" % req.framing.length))
    if req.framing.kind == CHUNKED and framing:
        codings = req.framing.codings
        out.append((b"Transfer-Encoding", codings + b", chunked" if codings else b"chunked"))
    if req.upgrade is not None:
        out += [(b"Connection", b"upgrade"), (b"Upgrade", req.upgrade)]
    return out


def downstream_head(resp: Response, chunked: bool, close: bool, keep_alive_10: bool = False,
                    switching: bool = False) -> bytes:
    """The response head sent to the client: the backend's status line and end-to-end
    fields; framing and connection fields as edgelb will actually send the body."""
    out = [resp.status_line, b"\r\n"]
    drop = resp.connection_drop
    has_length = False
    for name, value in resp.fields:
        low = name.lower()
        if switching and low in (b"connection", b"upgrade"):
            out += (name, b": ", value, b"\r\n")
            continue
        if low in HOP_BY_HOP or low in drop:
            continue
        if low == b"content-length":
            if has_length:
                continue  # once, as for requests (the values were found equal)
            has_length = True
            value = value.split(b",")[0].strip(b" \t")
        out += (name, b": ", value, b"\r\n")
    if chunked:
        codings = resp.framing.codings if resp.framing.kind == CHUNKED else b""
        out += (b"Transfer-Encoding: ", codings + b", chunked" if codings else b"chunked",
                b"\r\n")
    if close and not switching:
        out.append(b"Connection: close\r\n")
    elif keep_alive_10:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date field value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def error_response(status: int, close: bool = True, detail: str = "") -> bytes:
    """A response edgelb makes itself: Date, Content-Length, a short text body, and
    ``Connection: close`` when the connection closes after it."""
    reason = REASONS.get(status, "Error")
    body = f"{status} {reason}\n".encode() if not detail else \
        f"{status} {reason}: {detail}\n".encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nDate: ").encode() + http_date() + (
        f"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    return head + body


