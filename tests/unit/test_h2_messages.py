"""HTTP/2 messages as the proxy sees them (pure): a stream's header list as the request
routing and an HTTP/1.1 backend know, what is refused, what a backend's headers become,
and the flood limits."""

from __future__ import annotations

import pytest

from appliance.datapath.errors import ClientError
from appliance.datapath.h2.bridge import response_of
from appliance.datapath.h2.guard import WINDOW, FloodGuard
from appliance.datapath.h2.messages import (
    backend_request,
    relayed,
    request_of,
    response_headers,
    wants_trailers,
)
from appliance.datapath.http1 import CHUNKED, LENGTH, NO_BODY, parse_response
from appliance.model import HttpLimits

LIMITS = HttpLimits()
BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"Shop.Test:443"),
        (b":path", b"/api/items?x=1")]


def test_a_request_is_the_http1_request_it_stands_for() -> None:
    req = request_of([*BASE, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")],
                     True, LIMITS)
    assert (req.method, req.target, req.host, req.path) == (b"GET", b"/api/items?x=1",
                                                            "shop.test", "/api/items")
    assert req.framing.kind == NO_BODY
    assert (b"cookie", b"a=1; b=2") in req.fields  # split cookies joined again (8.2.3)
    post = [(b":method", b"POST"), *BASE[1:]]
    assert request_of(post, False, LIMITS).framing.kind == CHUNKED  # length unknown
    sized = request_of([*post, (b"content-length", b"5")], False, LIMITS)
    assert (sized.framing.kind, sized.framing.length) == (LENGTH, 5)


@pytest.mark.parametrize(("headers", "status"), [
    ([*BASE, (b"X-Upper", b"v")], 400),  # names are lowercase in HTTP/2
    ([*BASE, (b"x-a", b"v\r\nx-injected: 1")], 400),  # would become a second field
    ([*BASE, (b"x-a", b"v\x00")], 400),
    ([*BASE, (b"connection", b"close")], 400),  # connection-specific (8.2.2)
    ([*BASE, (b"transfer-encoding", b"chunked")], 400),
    ([*BASE, (b"te", b"gzip")], 400),  # only "trailers"
    ([*BASE, (b"host", b"other.test")], 400),  # Host differs from :authority
    ([*BASE, (b"host", b"a"), (b"host", b"a")], 400),
    ([(b"accept", b"*/*"), *BASE], 400),  # a pseudo-header after a field
    ([*BASE, (b":method", b"GET")], 400),  # twice
    ([*BASE, (b":protocol", b"websocket")], 400),  # not one we serve
    (BASE[1:], 400),  # no :method
    ([(b":method", b"CONNECT"), (b":authority", b"a.test:443")], 501),
    ([*BASE, *[(b"x-%d" % i, b"v") for i in range(200)]], 431),  # the HTTP/1.1 limits
])
def test_malformed_requests_are_refused(headers: list[tuple[bytes, bytes]],
                                        status: int) -> None:
    with pytest.raises(ClientError) as e:
        request_of(headers, True, LIMITS)
    assert e.value.status == status


def test_what_backends_get_and_send_back() -> None:
    req = request_of([*BASE, (b"te", b"trailers"), (b"content-type", b"application/grpc")],
                     False, LIMITS)
    assert wants_trailers([(b"te", b"Trailers")])
    out = backend_request(req, "198.51.100.7", "https", False, b"http", True)
    assert out[:4] == [(b":method", b"GET"), (b":scheme", b"http"),
                       (b":authority", b"Shop.Test:443"), (b":path", b"/api/items?x=1")]
    names = [n for n, _ in out]
    assert b"transfer-encoding" not in names and b"host" not in names
    assert (b"x-forwarded-for", b"198.51.100.7") in out and out[-1] == (b"te", b"trailers")
    # An HTTP/1.1 backend's response: lowercase, no connection-specific fields, and a
    # Content-Length only where it frames the body.
    resp = parse_response(b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\n"
                          b"Transfer-Encoding: chunked", b"GET")
    assert response_headers(resp) == [(b":status", b"200"), (b"server", b"x")]
    # An HTTP/2 backend's headers relayed: what cannot be sent on is dropped.
    assert relayed([(b":status", b"200"), (b"connection", b"x"), (b"Bad", b"v"),
                    (b"x-ok", b"v"), (b"x-cr", b"a\rb"), (b"grpc-status", b"0")]) == \
        [(b":status", b"200"), (b"x-ok", b"v"), (b"grpc-status", b"0")]


def test_an_http2_response_reframed_for_an_http1_client() -> None:
    sized = response_of([(b":status", b"200"), (b"content-length", b"3")], False, b"GET")
    assert (sized.framing.kind, sized.framing.length, sized.status_line) == \
        (LENGTH, 3, b"HTTP/1.1 200 OK")
    unknown = response_of([(b":status", b"200"), (b"x", b"y")], False, b"GET")
    assert unknown.framing.kind == CHUNKED
    assert response_of([(b":status", b"204")], True, b"GET").framing.kind == NO_BODY
    head = response_of([(b":status", b"200"), (b"content-length", b"9")], False, b"HEAD")
    assert (head.framing.kind, head.framing.length) == (LENGTH, 9)


def test_the_flood_guard_counts_each_kind_over_its_window() -> None:
    g = FloodGuard({"reset": 3, "control": 1}, start=0.0)
    assert [g.note("reset", 1.0) for _ in range(4)] == [False, False, False, True]
    assert not g.note("control", 2.0) and g.note("control", 2.0)
    # A new window starts the counts again.
    assert not g.note("reset", WINDOW + 0.5)
