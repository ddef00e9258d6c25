"""The strict HTTP/1.1 parser: what it accepts, what it refuses and with which status."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.datapath.http1 import (
    CHUNKED,
    LENGTH,
    NEED_DATA,
    NO_BODY,
    UNTIL_CLOSE,
    BackendConnection,
    ChunkedDecoder,
    HttpError,
    ServerConnection,
    downstream_head,
    error_response,
    parse_request,
    parse_response,
    upstream_head,
)
from appliance.model import HttpLimits

LIMITS = HttpLimits()


def req(head: bytes, limits: HttpLimits = LIMITS):  # type: ignore[no-untyped-def]
    return parse_request(head, limits)


def test_simple_get() -> None:
    r = req(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: Foo.COM:8080\r\nAccept: */*")
    assert (r.method, r.target, r.path, r.host) == (b"GET", b"/a/b?x=1&y=%20", "/a/b", "foo.com")
    assert r.keep_alive and r.framing.kind == NO_BODY


@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX\x00A: b", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
    (b"GET / HTTP/1.1", 400),
    (b"GET http://b.com/x HTTP/1.1\r\nHost: a.com", 400),
    (b"GET http://user@a.com/x HTTP/1.1\r\nHost: a.com", 400),
    (b"GET / HTTP/1.1\r\nHost: a b", 400),
    (b"GET  / HTTP/1.1\r\nHost: a", 400),
    (b"GET / HTTP/1.1 \r\nHost: a", 400),
    (b"G@T / HTTP/1.1\r\nHost: a", 400),
    (b"GET /\x7f HTTP/1.1\r\nHost: a", 400),
    (b"GET / HTTP/2.0\r\nHost: a", 505),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
    (b"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something", 417),
])
def test_refused(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as e:
        req(head)
    assert e.value.status == status


def test_limits() -> None:
    small = HttpLimits(max_request_line=20, max_header_bytes=60, max_headers=2)
    with pytest.raises(HttpError, match="414"):
        req(b"GET /" + b"a" * 30 + b" HTTP/1.1\r\nHost: a", small)
    with pytest.raises(HttpError, match="431"):
        req(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"b" * 60, small)
    with pytest.raises(HttpError, match="431"):
        req(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2", small)


def test_framing_and_connection() -> None:
    r = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5")
    assert (r.framing.kind, r.framing.length) == (LENGTH, 5)
    r = req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked")
    assert (r.framing.kind, r.framing.codings) == (CHUNKED, b"gzip")
    assert not req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close").keep_alive
    assert not req(b"GET / HTTP/1.0").keep_alive
    assert req(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive
    r = req(b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket")
    assert r.upgrade == b"websocket"
    assert req(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket").upgrade is None


def test_absolute_form_becomes_origin_form() -> None:
    r = req(b"GET http://A.com:80/x?y HTTP/1.1\r\nHost: a.com")
    assert r.target == b"/x?y"


def test_upstream_head_rewrites_forwarding_and_hop_by_hop() -> None:
    r = req(b"POST /p?q HTTP/1.1\r\nHost: a.com\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\n"
            b"Forwarded: for=6.6.6.6\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
            b"X-Keep: yes")
    head = upstream_head(r, "10.0.0.1", "https", trusted=False)
    assert head.startswith(b"POST /p?q HTTP/1.1\r\nHost: a.com\r\n")
    for gone in (b"X-Secret", b"Keep-Alive", b"6.6.6.6", b"Expect", b"Connection"):
        assert gone not in head
    assert b"X-Keep: yes\r\n" in head
    assert b"X-Forwarded-For: 10.0.0.1\r\n" in head
    assert b"X-Forwarded-Proto: https\r\n" in head
    assert b'Forwarded: for=10.0.0.1;proto=https;host="a.com"\r\n' in head
    assert head.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    trusted = upstream_head(r, "::1", "http", trusted=True)
    assert b"X-Forwarded-For: 6.6.6.6, ::1\r\n" in trusted
    assert b'Forwarded: for=6.6.6.6, for="[::1]";proto=http;host="a.com"\r\n' in trusted


def test_connection_cannot_drop_framing_fields() -> None:
    r = req(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host\r\n"
            b"Content-Length: 2")
    head = upstream_head(r, "1.2.3.4", "http", trusted=False)
    assert b"Content-Length: 2\r\n" in head and b"Host: a\r\n" in head


@pytest.mark.parametrize(("head", "method", "kind"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3", b"GET", LENGTH),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3", b"HEAD", NO_BODY),
    (b"HTTP/1.1 204 No Content", b"GET", NO_BODY),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9", b"GET", NO_BODY),
    (b"HTTP/1.1 100 Continue", b"POST", NO_BODY),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"GET", CHUNKED),
    (b"HTTP/1.1 200 OK", b"GET", UNTIL_CLOSE),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0", b"GET", NO_BODY),
])
def test_response_framing(head: bytes, method: bytes, kind: int) -> None:
    assert parse_response(head, method).framing.kind == kind


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4",
    b"HTTP/1.1 2000 OK",
    b"HTTP/1.1 200 OK\r\nX : y",
    b"garbage",
])
def test_bad_responses_are_502(head: bytes) -> None:
    with pytest.raises(HttpError) as e:
        parse_response(head, b"GET")
    assert e.value.status == 502


def test_downstream_head() -> None:
    resp = parse_response(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Int\r\nX-Int: 1\r\n"
                          b"Server: s\r\nTransfer-Encoding: chunked", b"GET")
    head = downstream_head(resp, chunked=True, close=True)
    assert head == (b"HTTP/1.1 200 OK\r\nServer: s\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n\r\n")


def test_error_response() -> None:
    raw = error_response(404, close=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\nDate: ")
    assert b"Content-Length: %d" % len(body) in head and b"Connection" not in head
    assert b"Connection: close" in error_response(400)


def test_chunked_decoder_byte_by_byte() -> None:
    wire = b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-T: 1\r\n\r\nNEXT"
    d = ChunkedDecoder()
    out = b"".join(b"".join(d.feed(wire[i:i + 1])) for i in range(len(wire)))
    assert out == b"hello" + b"x" * 26 and d.done and d.rest == b"NEXT"
    d = ChunkedDecoder()
    assert b"".join(d.feed(wire)) == out and d.rest == b"NEXT"


@pytest.mark.parametrize("wire", [
    b"g\r\n", b"-1\r\n", b"1 2\r\n", b"11111111111111111\r\n", b"5\r\nhelloXX",
    b"\r\n", b"5\nhello\r\n", b"0\r\nbad trailer\r\n\r\n", b"0x5\r\n",
    # A line ended by LF alone is refused at once, not waited on for its CRLF.
    b"5\n", b"5\nhello\n0\n\n", b"0\r\n\n", b"0\r\nX-T: 1\n", b"\n",
])
def test_chunked_decoder_refuses(wire: bytes) -> None:
    with pytest.raises(HttpError) as e:
        ChunkedDecoder().feed(wire)
    assert e.value.status == 400


def test_one_content_length_goes_upstream_and_downstream() -> None:
    for lengths in (b"Content-Length: 5\r\nContent-Length: 5", b"Content-Length: 5, 5"):
        r = req(b"POST / HTTP/1.1\r\nHost: a\r\n" + lengths)
        head = upstream_head(r, "10.0.0.1", "http", False)
        assert head.count(b"Content-Length") == 1 and b"Content-Length: 5\r\n" in head
        resp = parse_response(b"HTTP/1.1 200 OK\r\n" + lengths, b"GET")
        head = downstream_head(resp, chunked=False, close=False)
        assert head.count(b"Content-Length") == 1 and b"Content-Length: 5\r\n" in head
    zero = upstream_head(req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0"),
                         "10.0.0.1", "http", False)
    assert b"Content-Length: 0\r\n" in zero


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=/", max_size=20).map(str.strip)


@settings(max_examples=300)
@given(fields=st.lists(st.tuples(_TOKEN, _VALUE), max_size=6), chunks=st.lists(
    st.binary(min_size=1, max_size=20), max_size=3), which=st.integers(min_value=0))
def test_a_line_ended_by_lf_alone_is_answered_at_once(
        fields: list[tuple[str, str]], chunks: list[bytes], which: int) -> None:
    """The general rule: a request that cannot be parsed gets its answer as soon as the
    fault has arrived, never a wait for more. Any one CRLF of a chunked request (head or
    body) replaced by a bare LF: refused with 400 once the bytes so far are in."""
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n" + b"".join(
        b"X-%s: %s\r\n" % (k.encode(), v.encode()) for k, v in fields) + b"\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    wire = head + body
    crlfs = [i for i in range(len(wire) - 1) if wire[i:i + 2] == b"\r\n"]
    at = crlfs[which % len(crlfs)]
    wire = wire[:at] + wire[at + 1:]  # that CR gone: LF alone
    conn = ServerConnection(LIMITS)
    conn.receive_data(wire)
    with pytest.raises(HttpError) as e:
        _events_until_stuck(conn)
    assert e.value.status == 400


def _events_until_stuck(conn: ServerConnection) -> None:
    for _ in range(20):
        assert conn.next_event() is not NEED_DATA, "waited for more instead of answering"


def test_a_backend_head_with_bare_lf_is_refused_at_once() -> None:
    conn = BackendConnection()
    r = req(b"GET / HTTP/1.1\r\nHost: a")
    conn.send_request(r, "10.0.0.1", "http", False)
    conn.receive_data(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
    with pytest.raises(HttpError) as e:
        conn.next_event()
    assert e.value.status == 502
