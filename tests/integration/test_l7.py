"""The L7 proxy for real: one ``edgelb run`` with HTTP listeners in front of recording
backends; requests as raw bytes over sockets (so that malformed ones are exactly what the
test says) and with curl."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.control.client import Client

from ..helpers import (
    Edgelb,
    Server,
    closed_port,
    free_port,
    http_listener,
    metrics,
    read_response,
    wait_for,
)
from ..http_backend import HttpBackend

POOLS = ("api", "auth", "wild", "web", "any")


@dataclass
class Rig:
    edgelb: Edgelb
    port: int  # routes with a default pool
    bare: int  # routes without a default pool
    trusting: int  # trusts 127.0.0.1 as a proxy
    broken: int  # a pool whose only backend refuses
    unhealthy: int  # a pool whose only backend fails its health check
    slow: int  # response timeout 0.5s
    metrics: int
    b: dict[str, HttpBackend]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("l7")
    with ExitStack() as stack:
        b = {name: stack.enter_context(HttpBackend(name)) for name in POOLS}
        ports = [free_port() for _ in range(7)]
        pools = "\n".join(f"      {n}: {{backends: [127.0.0.1:{b[n].port}]}}" for n in POOLS)
        routes = """    routes:
      - host: foo.example.com
        paths:
          - {path: /api, type: Prefix, pool: api}
          - {path: /login, type: Exact, pool: auth}
      - host: "*.wild.com"
        paths: [{path: /, type: Prefix, pool: wild}]
      - paths: [{path: /only, type: ImplementationSpecific, pool: any}]"""
        cfg = f"""\
metrics: {{bind: 127.0.0.1:{ports[6]}}}
listeners:
  - name: web
    bind: 127.0.0.1:{ports[0]}
    protocol: http
{routes}
    default_pool: web
    timeouts: {{request: 1s, body: 1s, keepalive: 5s}}
    pools:
{pools}
  - name: bare
    bind: 127.0.0.1:{ports[1]}
    protocol: http
{routes}
    pools:
{pools}
  - name: trusting
    bind: 127.0.0.1:{ports[2]}
    protocol: http
    trusted_proxies: [127.0.0.0/8]
    backends: [127.0.0.1:{b['web'].port}]
  - name: broken
    bind: 127.0.0.1:{ports[3]}
    protocol: http
    backends: [127.0.0.1:{closed_port()}]
    health: {{type: none}}
  - name: unhealthy
    bind: 127.0.0.1:{ports[4]}
    protocol: http
    backends: [127.0.0.1:{closed_port()}]
    health: {{interval: 100ms, fall: 1}}
  - name: slow
    bind: 127.0.0.1:{ports[5]}
    protocol: http
    timeouts: {{response: 500ms}}
    backends: [127.0.0.1:{b['web'].port}]
"""
        e = Edgelb(tmp, cfg).start(ports[0])
        stack.callback(e.stop)
        yield Rig(e, *ports[:7], b)


def raw(port: int, data: bytes, wait: float = 3.0, half_close: bool = False) -> bytes:
    """Send ``data`` and read until the server closes or ``wait`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


def status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def get(port: int, path: str, host: str = "foo.example.com", extra: str = "") -> bytes:
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n"
    return raw(port, req.encode())


def body(resp: bytes) -> bytes:
    return resp.partition(b"\r\n\r\n")[2]


# -- routing ------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "path", "pool"), [
    ("foo.example.com", "/api", "api"),
    ("FOO.example.COM:80", "/api/v1/x?q=1", "api"),
    ("foo.example.com", "/api/", "api"),
    ("foo.example.com", "/apix", "web"),
    ("foo.example.com", "/login", "auth"),
    ("foo.example.com", "/login/", "web"),
    ("foo.example.com", "/Login", "web"),
    ("a.wild.com", "/anything", "wild"),
    ("a.b.wild.com", "/anything", "web"),
    ("wild.com", "/anything", "web"),
    ("other.org", "/only/x", "any"),
    ("foo.example.com", "/only", "web"),  # a host rule matched: the hostless rules do not
])
def test_routes(rig: Rig, host: str, path: str, pool: str) -> None:
    resp = get(rig.port, path, host)
    assert status(resp) == 200, resp
    assert body(resp) == f"{pool} GET {path}\n".encode()


def test_no_route_and_no_default_is_404(rig: Rig) -> None:
    resp = get(rig.bare, "/nowhere", "foo.example.com")
    assert status(resp) == 404 and b"Connection: close" in resp
    assert status(get(rig.bare, "/api/x")) == 200


def test_target_passes_byte_for_byte(rig: Rig) -> None:
    path = "/api/%7Efoo/./a%2Fb/../c;p=1?x=%20y&z=/..//&&#"[:-1]
    assert body(get(rig.port, path)) == f"api GET {path}\n".encode()
    assert rig.b["api"].seen[-1].target == path


def test_absolute_form(rig: Rig) -> None:
    resp = raw(rig.port, b"GET http://foo.example.com/api/abs HTTP/1.1\r\n"
                         b"Host: foo.example.com\r\nConnection: close\r\n\r\n")
    assert body(resp) == b"api GET /api/abs\n"


# -- strict parsing -----------------------------------------------------------------------

BAD = {
    "cl+te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    "bad cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
    "te not chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "te chunked then identity": b"POST / HTTP/1.1\r\nHost: a\r\n"
                                b"Transfer-Encoding: chunked, identity\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "cr in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    "lf in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc\r\n\r\n",
    "nul in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "nul in name": b"GET / HTTP/1.1\r\nHost: a\r\nX\x00A: b\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nhello\r\n0\r\n\r\n",
    "overflowing chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "absolute vs host": b"GET http://evil.com/ HTTP/1.1\r\nHost: foo.example.com\r\n\r\n",
    "bad request line": b"GET /\r\nHost: a\r\n\r\n",
    "bare lf": b"GET / HTTP/1.1\nHost: a\n\n\r\n\r\n",
    # Nothing but bare LFs: the head never "ended", and the request was held, unanswered,
    # until the request timeout.
    "bare lf head": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare lf header line": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\n\n",
    "bare lf chunk lines": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\nhello\n0\n\n",
    "bare lf after last chunk": b"POST / HTTP/1.1\r\nHost: a\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_request_is_400_and_never_reaches_a_backend(rig: Rig, case: str) -> None:
    web = rig.b["web"]
    before = (len(web.seen), web.connections)
    # The answer comes at once (the request timeout here is longer than this wait).
    resp = raw(rig.port, BAD[case], wait=2.0)
    assert status(resp) == 400, resp
    assert b"Connection: close" in resp and b"Date: " in resp
    assert int(resp.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body(resp))
    assert (len(web.seen), web.connections) == before


def test_bad_chunk_mid_body_closes_without_forwarding_a_complete_body(rig: Rig) -> None:
    # The head is fine, so the request starts towards the backend; the broken chunk must
    # not let it finish as if complete.
    resp = raw(rig.port, b"POST /sha HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\nXYZ\r\n")
    assert status(resp) == 400
    assert not any(s.target == "/sha" for s in rig.b["web"].seen[-1:])


def test_limits(rig: Rig) -> None:
    assert status(raw(rig.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")) == 414
    # An endless request line is refused before it ends.
    assert status(raw(rig.port, b"GET /" + b"a" * 9000)) == 414
    big = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n"
    assert status(raw(rig.port, big)) == 431
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(
        b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n"
    assert status(raw(rig.port, many)) == 431


def test_slowloris_gets_408(rig: Rig) -> None:
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        t0 = time.monotonic()
        for _ in range(10):  # a header line now and then, never the end
            time.sleep(0.2)
            try:
                s.sendall(b"X-A: b\r\n")
            except OSError:
                break
        resp = s.recv(4096)
        assert status(resp) == 408 and b"Connection: close" in resp
        assert time.monotonic() - t0 < 3


def test_stalled_body_gets_408(rig: Rig) -> None:
    resp = raw(rig.port, b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    assert status(resp) == 408


# -- proxying -----------------------------------------------------------------------------

def test_keep_alive_and_pipelining_in_order(rig: Rig) -> None:
    reqs = b"".join(b"GET /api/%d HTTP/1.1\r\nHost: foo.example.com\r\n\r\n" % i
                    for i in range(5))
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as s:
        s.sendall(reqs)
        f = s.makefile("rb")
        for i in range(5):
            assert f.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := f.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert f.read(length) == b"api GET /api/%d\n" % i
        # And the connection stays open for more.
        s.sendall(b"GET /login HTTP/1.1\r\nHost: foo.example.com\r\nConnection: close\r\n\r\n")
        assert b"auth GET /login" in f.read()


def test_pipelined_requests_with_bodies(rig: Rig) -> None:
    reqs = (b"POST /api/a HTTP/1.1\r\nHost: foo.example.com\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /api/b HTTP/1.1\r\nHost: foo.example.com\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /api/c HTTP/1.1\r\nHost: foo.example.com\r\nConnection: close\r\n\r\n")
    resp = raw(rig.port, reqs)
    assert resp.count(b"HTTP/1.1 200") == 3
    assert resp.index(b"api POST /api/a") < resp.index(b"api POST /api/b") < resp.index(
        b"api GET /api/c")
    bodies = {s.target: s.body for s in rig.b["api"].seen[-3:]}
    assert bodies == {"/api/a": b"abc", "/api/b": b"de", "/api/c": b""}


def test_backend_connections_are_reused(rig: Rig) -> None:
    """Ten requests in a row, each on a new client connection, reuse backend
    connections: at most one new one per worker (each worker has its own, and the
    kernel spreads client connections over the workers, so a worker the warm-up missed,
    or whose connection outlived the keep-alive timeout, opens one)."""
    api = rig.b["api"]
    for i in range(5):
        get(rig.port, f"/api/warm{i}")
    before = api.connections
    for i in range(10):
        assert status(get(rig.port, f"/api/reuse{i}")) == 200
    assert api.connections - before <= len(rig.edgelb.workers())  # 0 for workers: 1


def test_chunked_both_ways(rig: Rig) -> None:
    resp = raw(rig.port, b"POST /api/up HTTP/1.1\r\nHost: foo.example.com\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                         b"3;x=y\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert status(resp) == 200
    assert rig.b["api"].seen[-1].body == b"abcdefg"
    resp = get(rig.port, "/chunked/3", "x")
    assert b"Transfer-Encoding: chunked" in resp
    assert body(resp) == b"".join(b"8\r\nchunk %d\n\r\n" % i for i in range(3)) + b"0\r\n\r\n"


def test_until_close_body_is_rechunked_for_http11(rig: Rig) -> None:
    resp = get(rig.port, "/close", "x")
    assert b"Transfer-Encoding: chunked" in resp
    assert body(resp).endswith(b"0\r\n\r\n") and b"y" * 100 in resp
    resp10 = raw(rig.port, b"GET /close HTTP/1.0\r\n\r\n")
    assert b"Transfer-Encoding" not in resp10 and body(resp10) == b"y" * 5000


def test_head_204_304(rig: Rig) -> None:
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as s:
        s.sendall(b"HEAD /big/1000 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /big/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    heads = out.split(b"\r\n\r\n")
    assert heads[0].startswith(b"HTTP/1.1 200") and b"Content-Length: 1000" in heads[0]
    assert heads[1].startswith(b"HTTP/1.1 204")
    assert heads[2].startswith(b"HTTP/1.1 304")
    assert heads[3].startswith(b"HTTP/1.1 200") and heads[4] == b"xxx"


def test_expect_100_continue(rig: Rig) -> None:
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as s:
        s.sendall(b"POST /api/e HTTP/1.1\r\nHost: foo.example.com\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        resp = s.makefile("rb").read()
    assert status(resp) == 200
    seen = rig.b["api"].seen[-1]
    assert seen.body == b"hello" and seen.header("Expect") is None


@pytest.mark.parametrize("lengths", ["Content-Length: 5\r\nContent-Length: 5\r\n",
                                     "Content-Length: 5, 5\r\n"])
def test_equal_content_lengths_reach_the_backend_as_one(rig: Rig, lengths: str) -> None:
    """RFC 9110 8.6: equal Content-Length values may be forwarded as one field; passing
    them on as they came invites a desync with a backend that reads them otherwise."""
    resp = raw(rig.port, b"POST /api/cl HTTP/1.1\r\nHost: foo.example.com\r\n" +
               lengths.encode() + b"Connection: close\r\n\r\nhello")
    assert status(resp) == 200, resp
    seen = rig.b["api"].seen[-1]
    assert [v for k, v in seen.headers if k.lower() == "content-length"] == ["5"]
    assert seen.body == b"hello"


def test_forwarded_headers(rig: Rig) -> None:
    spoof = "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
    get(rig.port, "/api/fwd", extra=spoof)
    seen = rig.b["api"].seen[-1]
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == "foo.example.com"
    assert seen.header("Forwarded") == 'for=127.0.0.1;proto=http;host="foo.example.com"'
    get(rig.trusting, "/t", extra=spoof)
    seen = rig.b["web"].seen[-1]
    assert seen.header("X-Forwarded-For") == "6.6.6.6, 127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("Forwarded").startswith("for=6.6.6.6, for=127.0.0.1;")


def test_hop_by_hop_removed(rig: Rig) -> None:
    get(rig.port, "/api/hop", extra="Connection: X-Private\r\nX-Private: 1\r\nKeep-Alive: 9\r\n"
                                    "Proxy-Connection: x\r\nTE: trailers\r\nX-End: e\r\n")
    names = {k.lower() for k, _ in rig.b["api"].seen[-1].headers}
    assert not names & {"x-private", "keep-alive", "proxy-connection", "te", "connection"}
    assert "x-end" in names


def test_websocket_upgrade_becomes_a_byte_relay(rig: Rig) -> None:
    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101") and b"Upgrade: websocket" in head
        for i in range(3):
            msg = b"frame %d " % i * 1000
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg
    seen = rig.b["web"].seen[-1]
    assert seen.header("Upgrade") == "websocket" and seen.header("Connection") == "upgrade"


# -- failures -----------------------------------------------------------------------------

def test_backend_refusing_gives_502_and_no_healthy_backend_503(rig: Rig) -> None:
    assert status(get(rig.broken, "/", "x")) == 502
    resp = raw(rig.broken, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert status(resp) == 502
    wait_for(lambda: status(get(rig.unhealthy, "/", "x")) == 503, 10, "503")


def test_slow_backend_gives_504(rig: Rig) -> None:
    resp = get(rig.slow, "/slow/2", "x")
    assert status(resp) == 504 and b"Connection: close" in resp


def test_response_cut_mid_body_is_not_passed_on_as_complete(rig: Rig) -> None:
    resp = get(rig.port, "/cut", "x")
    assert status(resp) == 200 and b"Content-Length: 100" in resp
    assert len(body(resp)) == 10  # short: the client can tell


def test_response_with_cl_and_te_is_502(rig: Rig) -> None:
    resp = get(rig.port, "/clte", "x")
    assert status(resp) == 502 and b"hello" not in resp


def test_connection_limit(tmp_path: Path) -> None:
    port = free_port()
    with HttpBackend("one") as be:
        e = Edgelb(tmp_path, http_listener(port, be.port, options="max_connections: 2",
                                           top="workers: 1")).start(port)
        try:
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            for s in held:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            resp = get(port, "/", "x")
            assert status(resp) == 503
            for s in held:
                s.close()
            wait_for(lambda: status(get(port, "/", "x")) == 200, 5, "a free slot")
        finally:
            e.stop()


def test_access_log_and_counters(rig: Rig) -> None:
    get(rig.port, "/api/logged?x=1")
    wait_for(lambda: "/api/logged?x=1" in rig.edgelb.logs(), 5, "access log line")
    line = next(ln for ln in rig.edgelb.logs().splitlines() if "/api/logged?x=1" in ln)
    assert "edgelb.access" in line and " 200 " in line and "api/127.0.0.1:" in line
    m = metrics(rig.metrics)
    assert m['edgelb_http_requests_total{listener="web"}'] > 10
    assert m['edgelb_http_responses_total{class="4xx",listener="web"}'] >= len(BAD)
    route = 'route="foo.example.com/api Prefix"'
    assert m[f'edgelb_http_route_requests_total{{listener="web",{route}}}'] >= 1


def test_backends_and_listeners_count_http_bytes(rig: Rig) -> None:
    """Issue 17, item 4: HTTP traffic showed 0 bytes per backend and listener while the
    access log had them. Bytes are bodies, as in the access log."""
    c = Client(rig.edgelb.socket)

    def counted() -> tuple[int, int]:
        (b,) = c.get("/v1/listeners/trusting")["pools"][0]["backends"]
        return b["bytes_in"], b["bytes_out"]

    in0, out0 = counted()
    resp = raw(rig.trusting, b"POST /big/1000 HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
                             b"Connection: close\r\n\r\nabcdefg")
    assert status(resp) == 200 and len(body(resp)) == 1000
    wait_for(lambda: counted() == (in0 + 7, out0 + 1000), 5, "backend bytes counted")
    summary = next(x for x in c.get("/v1/listeners")["listeners"] if x["name"] == "trusting")
    assert summary["bytes_out"] >= 1000 and summary["bytes_in"] >= 7


def test_curl_sees_a_well_formed_proxy(rig: Rig) -> None:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-o", "/dev/null",
                          "-w", "%{http_code}",
                          "-H", "Host: foo.example.com", f"http://127.0.0.1:{rig.port}/api/c",
                          f"http://127.0.0.1:{rig.port}/login"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout == "200200", out.stderr


def test_connect_failure_retries_idempotent_requests_on_another_backend(tmp_path: Path) -> None:
    port = free_port()
    with HttpBackend("alive") as be:
        e = Edgelb(tmp_path, http_listener(port, closed_port(), be.port, options="""
health: {type: none}
passive: {failures: 0}""")).start(port)
        try:
            # Round robin sends every other new connection to the dead backend first.
            for i in range(6):
                resp = raw(port, b"GET /r%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
                assert status(resp) == 200, resp
            posts = [status(raw(port, b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                      b"Connection: close\r\n\r\nx")) for _ in range(6)]
            # A POST is not retried: the ones that met the dead backend got 502.
            assert sorted(set(posts)) == [200, 502]
        finally:
            e.stop()


class QuietCloser:
    """A backend that answers one request per connection as if it kept the connection
    (no ``Connection: close``), then closes it a moment later: a kept-alive connection
    that goes stale while edgelb holds it idle, as one whose backend timed it out."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        break
                    data += more
                if b"\r\n\r\n" in data:
                    self.requests.append(data.split(b"\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    time.sleep(0.05)

    def close(self) -> None:
        self.sock.close()


def test_a_request_meeting_a_kept_alive_connection_the_backend_closed_is_served(
        tmp_path: Path) -> None:
    """A backend that closes its kept-alive connections behind edgelb's back: every
    request, GET or with a body (which could not go twice), is served, each reaching
    the backend once on a connection of its own: edgelb looks at a kept-alive
    connection before it sends on it, and never sends on the closed one."""
    port = free_port()
    be = QuietCloser()
    e = Edgelb(tmp_path, http_listener(port, be.port, top="workers: 1",
                                       options="health: {type: none}")).start(port)
    try:
        for i, method in enumerate([b"GET", b"GET", b"POST", b"GET", b"PUT", b"POST"]):
            time.sleep(0.2)  # the backend has closed the connection edgelb keeps
            extra = b"Content-Length: 1\r\n" if method != b"GET" else b""
            resp = raw(port, method + b" /s%d HTTP/1.1\r\nHost: x\r\n" % i + extra
                       + b"Connection: close\r\n\r\n" + (b"x" if extra else b""))
            assert status(resp) == 200, resp
        # Each request reached the backend once, on a connection of its own.
        assert [r.split(b" ")[1] for r in be.requests] == [b"/s%d" % i for i in range(6)]
        assert be.connections == 6
    finally:
        e.stop()
        be.close()


def test_sigterm_closes_idle_keep_alive_and_finishes_busy_requests(tmp_path: Path) -> None:
    port = free_port()
    with HttpBackend("one") as be:
        e = Edgelb(tmp_path, http_listener(port, be.port, top="drain_timeout: 10s")).start(port)
        try:
            idle = socket.create_connection(("127.0.0.1", port), timeout=5)
            idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(idle).startswith(b"HTTP/1.1 200")
            busy = socket.create_connection(("127.0.0.1", port), timeout=5)
            busy.sendall(b"GET /slow/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            t0 = time.monotonic()
            e.signal(signal.SIGTERM)
            assert idle.recv(4096) == b""  # closed between requests, at once
            resp = b""
            while chunk := busy.recv(4096):
                resp += chunk
            assert resp.startswith(b"HTTP/1.1 200") and b"Connection: close" in resp
            assert resp.endswith(b"slow\n")
            assert e.proc is not None and e.proc.wait(10) == 0
            assert time.monotonic() - t0 < 5
            idle.close()
            busy.close()
        finally:
            e.stop()


def test_chunked_response_cut_mid_body_has_no_last_chunk(tmp_path: Path) -> None:
    def cut_chunked(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.2)

    port = free_port()
    with Server(cut_chunked) as be:
        e = Edgelb(tmp_path, http_listener(port, be.port, options="health: {type: none}")
                   ).start(port)
        try:
            resp = get(port, "/", "x")
            assert status(resp) == 200 and body(resp) == b"5\r\nhello\r\n"
        finally:
            e.stop()


def test_json_access_log(tmp_path: Path) -> None:
    port = free_port()
    with HttpBackend("one") as be:
        e = Edgelb(tmp_path, http_listener(port, be.port))
        e.start_args = ["--log-format", "json"]
        e.start(port)
        try:
            get(port, "/json?q=1", "Example.com")
            wait_for(lambda: "/json?q=1" in e.logs(), 5, "access line")
            line = next(ln for ln in e.logs().splitlines() if "/json?q=1" in ln)
            rec = json.loads(line)
            assert rec["logger"] == "edgelb.access" and rec["status"] == 200
            assert rec["host"] == "example.com" and rec["path"] == "/json?q=1"
            assert rec["backend"] == f"default/127.0.0.1:{be.port}"
            assert rec["bytes_out"] == len("one GET /json?q=1\n") and rec["total_ms"] > 0
        finally:
            e.stop()


def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
        tmp_path: Path) -> None:
    port = free_port()
    with HttpBackend("one") as be:
        e = Edgelb(tmp_path, http_listener(port, be.port,
                                           options="timeouts: {keepalive: 500ms}")).start(port)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(s).startswith(b"HTTP/1.1 200")
                t0 = time.monotonic()
                assert s.recv(4096) == b""  # closed quietly, no 408 between requests
                assert 0.4 < time.monotonic() - t0 < 3
        finally:
            e.stop()


def test_backend_that_stalls_after_an_interim_response_gets_504(tmp_path: Path) -> None:
    # Each response head the backend owes is timed, interim ones included: a 100
    # Continue followed by silence must not hold the client for ever.
    def continue_then_stall(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(4)

    port = free_port()
    with Server(continue_then_stall) as be:
        e = Edgelb(tmp_path, http_listener(port, be.port, options="health: {type: none}\n"
                                           "timeouts: {response: 500ms}")).start(port)
        try:
            t0 = time.monotonic()
            resp = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait=3.0)
            assert b"HTTP/1.1 504" in resp, resp
            assert time.monotonic() - t0 < 2.5
        finally:
            e.stop()


def test_access_log_file_is_reopened_on_sigusr1_across_workers(tmp_path: Path) -> None:
    """logrotate: the file is renamed, SIGUSR1 (or SIGHUP) makes every worker open the
    path again; no line is lost on the way."""
    port = free_port()
    path = tmp_path / "access.log"
    with HttpBackend("one") as be:
        e = Edgelb(tmp_path, http_listener(
            port, be.port, top=f"workers: 2\naccess_log: {{target: {path}, flush: 100ms}}"))
        e.start(port)
        try:
            for i in range(20):
                assert status(get(port, f"/before/{i}", "example.com")) == 200
            wait_for(lambda: path.exists() and path.read_text().count("/before/") == 20, 5,
                     "20 lines in the file")
            path.rename(tmp_path / "access.log.1")
            e.signal(signal.SIGUSR1)
            time.sleep(0.5)  # the workers heard it
            for i in range(20):
                assert status(get(port, f"/after/{i}", "example.com")) == 200
            wait_for(lambda: path.exists() and path.read_text().count("/after/") == 20, 5,
                     "20 lines in the new file")
            assert "/after/" not in (tmp_path / "access.log.1").read_text()
            assert e.proc is not None and e.proc.poll() is None
        finally:
            e.stop()


def test_a_stuck_access_log_never_holds_a_request(tmp_path: Path) -> None:
    """A target that takes nothing (a FIFO nobody reads: even opening it waits): every
    request is served, and the lines that found the buffer full are counted."""
    port, mport = free_port(), free_port()
    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    with HttpBackend("one") as be:
        e = Edgelb(tmp_path, http_listener(port, be.port, top=(
            f"metrics: {{bind: 127.0.0.1:{mport}}}\n"
            f"access_log: {{target: {fifo}, buffer: 4KiB, flush: 50ms}}")))
        e.start(port)
        try:
            for i in range(300):
                assert status(get(port, f"/r/{i}", "example.com")) == 200
            key = 'edgelb_access_log_dropped_total{listener="web"}'
            wait_for(lambda: metrics(mport).get(key, 0) > 100, 5, "drops counted")
        finally:
            # Let the stuck open finish, so the daemon can exit.
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            e.stop()
            os.close(reader)
