"""HTTP/2 and gRPC end to end (issue 16): curl and nghttp through h2 (TLS, ALPN) and
h2c listeners to HTTP/1.1 backends, grpcio through an Ingress of the simulated cluster
to a grpcio server, the HTTP/2 attack classes from a raw ``h2`` client with a
well-behaved client served meanwhile, and a drain with streams in flight."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)

from appliance.control.client import Client as ControlClient
from appliance.sim import objects as k8s
from appliance.sim.certs import self_signed
from appliance.sim.cluster import SimCluster

from ..grpc_peer import Client, server
from ..helpers import Edgelb, free_port, wait_for
from ..http_backend import HttpBackend

ENHANCE_YOUR_CALM = 11


@dataclass
class Rig:
    edgelb: Edgelb
    tls: int  # https, h2 by ALPN
    plain: int  # http with h2c
    grpc_port: int
    web: HttpBackend
    cert: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("h2")
    cert, key = self_signed(str(tmp), "h2", dns=("a.test", "g.test"))
    with ExitStack() as stack:
        web = stack.enter_context(HttpBackend("web"))
        grpc_port = free_port()
        g = server(f"127.0.0.1:{grpc_port}")
        stack.callback(g.stop, None)
        tls, plain = free_port(), free_port()
        routes = f"""    routes:
      - host: a.test
        paths: [{{path: /, type: Prefix, pool: web}}]
      - host: g.test
        paths: [{{path: /, type: Prefix, pool: grpc}}]
    pools:
      web: {{backends: [127.0.0.1:{web.port}]}}
      grpc: {{protocol: h2c, backends: [127.0.0.1:{grpc_port}]}}
    timeouts: {{body: 1s, response: 3s}}
    limits: {{max_resets: 50, max_control_frames: 50, max_concurrent_streams: 20}}
"""
        e = Edgelb(tmp, f"""\
listeners:
  - name: tls
    bind: 127.0.0.1:{tls}
    protocol: https
    tls: [{{hosts: [a.test, g.test], cert: {cert}, key: {key}}}]
{routes}  - name: plain
    bind: 127.0.0.1:{plain}
    protocol: http
    h2c: true
{routes}""").start()
        stack.callback(e.stop)
        yield Rig(e, tls, plain, grpc_port, web, cert)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", "-m", "10", *args], capture_output=True, text=True,
                          timeout=30)


def tls_url(rig: Rig, host: str, path: str) -> list[str]:
    return ["--resolve", f"{host}:{rig.tls}:127.0.0.1", "--cacert", rig.cert,
            f"https://{host}:{rig.tls}{path}"]


def test_curl_and_nghttp_over_h2_and_h2c_reach_http1_backends(rig: Rig, tmp_path: Path) -> None:
    r = curl("--http2", "-w", "\n%{http_version}", *tls_url(rig, "a.test", "/status/200"))
    assert r.stdout.split() == ["web", "200", "2"], r.stderr
    r = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", "-H", "Host: a.test",
             f"http://127.0.0.1:{rig.plain}/status/201")
    assert r.stdout.split() == ["web", "201", "2"]
    # The same h2c listener still serves HTTP/1.1.
    r = curl("-w", "\n%{http_version}", "-H", "Host: a.test",
             f"http://127.0.0.1:{rig.plain}/status/200")
    assert r.stdout.split() == ["web", "200", "1.1"]
    # Routing by host: no rule for other.test.
    r = curl("--http2", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
             f"other.test:{rig.tls}:127.0.0.1", "-k", f"https://other.test:{rig.tls}/")
    assert r.stdout == "404"
    seen = rig.web.seen[-1]
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"

    # A big upload (no Content-Length: chunked to the backend) and a big download.
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 20000)
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    for args in (["--http2", "-H", "Transfer-Encoding: chunked", *tls_url(rig, "a.test", "/sha")],
                 ["--http2-prior-knowledge", "-H", "Host: a.test",
                  f"http://127.0.0.1:{rig.plain}/sha"]):
        r = curl("--data-binary", f"@{blob}", *args)
        assert r.stdout.split() == [str(20000 * 256), want], r.stderr
    r = curl("--http2", *tls_url(rig, "a.test", "/big/5000000"))
    assert len(r.stdout) == 5000000 and set(r.stdout) == {"x"}

    # nghttp: 20 concurrent streams on one connection.
    out = subprocess.run(["nghttp", "-n", "-s", "-m", "20", "-H", ":authority: a.test",
                          f"http://127.0.0.1:{rig.plain}/status/200"], capture_output=True,
                         text=True, timeout=30).stdout
    codes = [line.split()[4] for line in out.splitlines() if line.strip().endswith("/status/200")]
    assert codes == ["200"] * 20, out
    wait_for(lambda: 'HTTP/2" 200' in rig.edgelb.logs(), 5, "the access log's HTTP/2 line")


def grpc_client(rig: Rig) -> Client:
    return Client(f"127.0.0.1:{rig.plain}", "g.test")


def exercise_grpc(c: Client) -> None:
    assert c.unary(b"hi") == b"echo:hi"
    assert c.unary(b"x" * 2_000_000)[:5] == b"echo:"  # flow control both ways
    assert c.stream(50) == [b"msg %d" % i for i in range(50)]
    assert c.bidi([b"a", b"b", b"c"]) == [b"got:a", b"got:b", b"got:c"]
    with pytest.raises(grpc.RpcError) as e:
        c.slow(3, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as e:
        c.fail(b"x")
    # The status and message came in the backend's trailers, passed through.
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "no such thing: x"


def test_grpc_to_an_h2c_pool(rig: Rig) -> None:
    c = grpc_client(rig)
    try:
        exercise_grpc(c)
    finally:
        c.close()


def test_clients_leaving_with_calls_in_flight_leave_the_backend_connection_whole(
        rig: Rig, tmp_path: Path) -> None:
    """h2load stops with 100 gRPC calls in flight, again and again. Each abandoned
    stream is finished on the shared backend connection, with what it was sent
    acknowledged: before, a stream cancelled while its request went out was never
    finished, and after a few rounds the connection's window was gone and every call on
    it stalled."""
    body = tmp_path / "unary.bin"
    body.write_bytes(b"\x00\x00\x00\x00\x05hello")
    for _ in range(6):
        out = subprocess.run(["h2load", "-c10", "-m10", "-t1", "-D1", "-d", str(body),
                              "-H", ":authority: g.test",
                              "-H", "content-type: application/grpc", "-H", "te: trailers",
                              f"http://127.0.0.1:{rig.plain}/t.T/Unary"],
                             capture_output=True, text=True, timeout=60).stdout
        done = re.search(r"(\d+) succeeded", out)
        assert done is not None and int(done.group(1)) > 0, out
    c = grpc_client(rig)
    try:
        assert c.unary(b"after") == b"echo:after"
    finally:
        c.close()

    def active() -> int:
        detail = ControlClient(rig.edgelb.socket).get("/v1/listeners/plain")
        return sum(b["active"] for p in detail["pools"] for b in p["backends"])

    wait_for(lambda: active() == 0, 10, "no stream left counted at the backend")


def test_grpc_through_an_ingress_of_the_cluster(tmp_path: Path) -> None:
    """An Ingress whose Service port says appProtocol kubernetes.io/h2c: edgelb speaks
    h2c to it, and a grpcio client talks to a grpcio server through edgelb."""
    grpc_port, ingress = free_port(), free_port()
    g = server(f"127.0.0.1:{grpc_port}")
    try:
        with SimCluster(str(tmp_path)) as sim:
            sim.add_node("n1", "127.0.0.51")
            sim.api.apply(k8s.service("greeter", [(80, 30880)], kind="NodePort",
                                      app_protocol="kubernetes.io/h2c"))
            sim.api.apply(k8s.endpoint_slice("greeter", [("127.0.0.1", "n1", True)],
                                             port=grpc_port))
            sim.api.apply(k8s.ingress_class())
            sim.api.apply(k8s.ingress("greeter", [("g.test", "/", "Prefix", "greeter", 80)]))
            e = Edgelb(tmp_path, f"""\
cluster:
  kubeconfig: {sim.kubeconfig_path}
  ingress: {{http: "127.0.0.52:{ingress}", h2c: true}}
  direct_endpoints: true
  tls_dir: {tmp_path}/tls
  debounce: 50ms
listeners: []
allow_no_listeners: true
""").start()
            try:
                c = Client(f"127.0.0.52:{ingress}", "g.test")

                def served() -> bool:
                    try:
                        return c.unary(b"up", timeout=1) == b"echo:up"
                    except grpc.RpcError:
                        return False

                wait_for(served, 15, "the Ingress's route")
                exercise_grpc(c)
                c.close()
            finally:
                e.stop()
    finally:
        g.stop(None)


# -- the attack classes ----------------------------------------------------------------


class RawH2:
    """An HTTP/2 client over a plain socket, free to misbehave."""

    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.events: list[h2.events.Event] = []

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def headers(self, path: str, end: bool = True, method: bytes = b"GET") -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", method), (b":scheme", b"http"),
                                     (b":authority", b"a.test"), (b":path", path.encode())],
                               end_stream=end)
        return sid

    def read_until(self, done: type, timeout: float = 10) -> h2.events.Event | None:
        """Events until one of type ``done`` (returned) or the server closes (None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if isinstance(ev, done):
                    return ev
            try:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                return None
            if not data:
                return None
            try:
                self.events += self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                pass
        return None

    def goaway_code(self, timeout: float = 10) -> int | None:
        ev = self.read_until(h2.events.ConnectionTerminated, timeout)
        return ev.error_code if isinstance(ev, h2.events.ConnectionTerminated) else None

    def close(self) -> None:
        self.sock.close()


def well_behaved(rig: Rig) -> str:
    return curl("--http2-prior-knowledge", "-H", "Host: a.test",
                f"http://127.0.0.1:{rig.plain}/status/200").stdout.strip()


def attacked(rig: Rig, attack: RawH2) -> None:
    """While ``attack``'s connection is open, another client is served."""
    assert well_behaved(rig) == "web 200"
    attack.close()
    assert well_behaved(rig) == "web 200"


def test_rapid_reset_is_sent_away(rig: Rig) -> None:
    a = RawH2(rig.plain)
    for _ in range(80):
        sid = a.headers("/slow/1")
        a.conn.reset_stream(sid)
    a.flush()
    assert a.goaway_code() == ENHANCE_YOUR_CALM
    attacked(rig, a)


def test_settings_and_ping_floods_are_sent_away(rig: Rig) -> None:
    for frame in (SettingsFrame(0, settings={4: 65535}), PingFrame(0, opaque_data=b"12345678")):
        a = RawH2(rig.plain)
        a.sock.sendall(frame.serialize() * 80)
        assert a.goaway_code() == ENHANCE_YOUR_CALM
        attacked(rig, a)


def test_a_continuation_flood_is_sent_away(rig: Rig) -> None:
    a = RawH2(rig.plain)
    block = a.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                   (b":authority", b"a.test"), (b":path", b"/")])
    first = HeadersFrame(1, data=block[:4])  # no END_HEADERS: the block goes on ...
    more = ContinuationFrame(1, data=b"\x40\x01a\x01b")  # ... and on, never ending
    a.sock.sendall(first.serialize() + more.serialize() * 200)
    assert a.goaway_code() is not None
    attacked(rig, a)


def test_an_hpack_bomb_is_refused_by_its_decoded_size(rig: Rig) -> None:
    a = RawH2(rig.plain)
    sid = a.conn.get_next_available_stream_id()
    # 4 KiB in the dynamic table, then referenced again and again: a small frame that
    # decodes to 80 KiB, over the 32 KiB list the listener takes.
    a.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                              (b":authority", b"a.test"), (b":path", b"/")] +
                        [(b"x-bomb", b"b" * 4000)] * 20, end_stream=True)
    a.flush()
    assert a.goaway_code() == ENHANCE_YOUR_CALM
    attacked(rig, a)


def test_data_beyond_the_content_length_never_reaches_the_backend(rig: Rig) -> None:
    """A stream that says Content-Length 5 and sends more: what follows the five bytes
    would reach the HTTP/1.1 backend as another request (smuggled). The stream is reset
    and the backend sees neither."""
    a = RawH2(rig.plain)
    sid = a.conn.get_next_available_stream_id()
    a.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                              (b":authority", b"a.test"), (b":path", b"/sha"),
                              (b"content-length", b"5")])
    a.conn.send_data(sid, b"hello")
    a.flush()
    frame = DataFrame(sid, data=b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
                      flags=["END_STREAM"])
    a.sock.sendall(frame.serialize())  # h2 as a client would refuse to send it
    # h2 itself counts the body against Content-Length: a connection error (edgelb's own
    # check before forwarding would reset the stream).
    ev = a.read_until(h2.events.StreamReset | h2.events.ConnectionTerminated)
    assert ev is not None and ev.error_code == 1  # PROTOCOL_ERROR
    attacked(rig, a)
    assert not any(seen.target == "/smuggled" for seen in rig.web.seen)


def test_streams_beyond_the_limit_are_refused(rig: Rig) -> None:
    a = RawH2(rig.plain)
    a.read_until(h2.events.RemoteSettingsChanged)
    assert a.conn.remote_settings.max_concurrent_streams == 20
    for _ in range(20):
        a.headers("/slow/2", end=False, method=b"POST")
    a.flush()
    # A 21st, which h2 as a client would not send: written as a frame of our own.
    block = a.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                   (b":authority", b"a.test"), (b":path", b"/status/200")])
    a.sock.sendall(HeadersFrame(41, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    ev = a.read_until(h2.events.StreamReset | h2.events.ConnectionTerminated)
    assert ev is not None  # the 21st stream is refused (or the connection sent away)
    attacked(rig, a)


def test_a_zero_window_reader_holds_only_its_own_streams(rig: Rig) -> None:
    """Clients that open no window for what they asked for: edgelb reads no more of the
    backend than the window allows, resets the streams after timeouts.body, and its
    memory does not grow with what they asked for (10 x 20 MB)."""
    rss0 = rss(rig.edgelb)
    a = RawH2(rig.plain, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for _ in range(10):
        a.headers("/big/20000000")
    a.flush()
    resets = 0
    deadline = time.monotonic() + 10
    while resets < 10 and time.monotonic() < deadline:
        ev = a.read_until(h2.events.StreamReset, 3)
        if ev is None:
            break
        a.events.remove(ev)
        resets += 1
    assert resets == 10
    assert rss(rig.edgelb) - rss0 < 50_000_000
    attacked(rig, a)


def rss(e: Edgelb) -> int:
    """The resident memory of the daemon and its workers, in bytes."""
    assert e.proc is not None
    pids = [e.proc.pid, *e.workers()]
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * 4096
    return total


# -- drain -----------------------------------------------------------------------------


GRPC_LISTENER = """\
  - name: plain
    bind: 127.0.0.1:{plain}
    protocol: http
    h2c: true
    backend_protocol: h2c
    backends: [127.0.0.1:{grpc}]
"""
KEEP_LISTENER = """\
  - name: keep
    bind: 127.0.0.1:{keep}
    protocol: tcp
    backends: [127.0.0.1:{grpc}]
"""


def slow_call(c: Client, seconds: float) -> tuple[threading.Thread, list[bytes | str]]:
    """A gRPC call in flight for ``seconds``, on a thread; its outcome lands in the list."""
    got: list[bytes | str] = []

    def call() -> None:
        try:
            got.append(c.slow(seconds, timeout=10))
        except grpc.RpcError as err:
            got.append(str(err.code()))

    t = threading.Thread(target=call)
    t.start()
    return t, got


def test_a_drain_and_a_reload_let_streams_in_flight_finish(tmp_path: Path) -> None:
    """SIGHUP that removes the listener, then SIGTERM: each time the connection gets
    GOAWAY, the stream in flight finishes, and no new one is taken. Meanwhile the flow
    table shows the connection's protocol and its open streams."""
    grpc_port, plain, keep = free_port(), free_port(), free_port()
    g = server(f"127.0.0.1:{grpc_port}")
    listeners = {"plain": plain, "grpc": grpc_port, "keep": keep}
    e = Edgelb(tmp_path, "drain_timeout: 10s\nlisteners:\n" +
               GRPC_LISTENER.format(**listeners) + KEEP_LISTENER.format(**listeners)).start()
    try:
        c = Client(f"127.0.0.1:{plain}")
        assert c.unary(b"warm") == b"echo:warm"
        t, got = slow_call(c, 1.5)

        def flows() -> list[tuple[str, str]]:
            page = ControlClient(e.socket).get("/v1/flows")
            return [(f["protocol"], f["state"]) for f in page["flows"]
                    if f["listener"] == "plain"]

        wait_for(lambda: flows() == [("h2c", "1 stream")], 5, "the flow's protocol, streams")
        e.rewrite("drain_timeout: 10s\nlisteners:\n" + KEEP_LISTENER.format(**listeners))
        e.reload()
        t.join(15)
        assert got == [b"late"]
        with pytest.raises(grpc.RpcError):
            c.unary(b"after", timeout=2)  # the listener is gone
        c.close()

        e.rewrite("drain_timeout: 10s\nlisteners:\n" + GRPC_LISTENER.format(**listeners) +
                  KEEP_LISTENER.format(**listeners))
        e.reload()
        c = Client(f"127.0.0.1:{plain}")
        wait_for(lambda: answers(c), 10, "the listener back")
        t, got = slow_call(c, 1.5)
        time.sleep(0.5)
        e.signal(signal.SIGTERM)
        t.join(15)
        assert got == [b"late"]
        assert e.proc is not None
        assert e.proc.wait(15) == 0
        c.close()
    finally:
        e.stop()
        g.stop(None)


def answers(c: Client) -> bool:
    try:
        return c.unary(b"x", timeout=1) == b"echo:x"
    except grpc.RpcError:
        return False


def test_a_backend_lost_mid_stream_fails_only_its_streams(tmp_path: Path) -> None:
    """The gRPC server dies with a call in flight: that call gets UNAVAILABLE, a call to
    the other backend of the pool goes on."""
    lost, kept, plain = free_port(), free_port(), free_port()
    g_lost, g_kept = server(f"127.0.0.1:{lost}"), server(f"127.0.0.1:{kept}")
    e = Edgelb(tmp_path, f"""\
workers: 1
listeners:
  - name: plain
    bind: 127.0.0.1:{plain}
    protocol: http
    h2c: true
    routes:
      - paths: [{{path: /, type: Prefix, pool: lost}}]
      - host: kept.test
        paths: [{{path: /, type: Prefix, pool: kept}}]
    pools:
      lost: {{protocol: h2c, backends: [127.0.0.1:{lost}]}}
      kept: {{protocol: h2c, backends: [127.0.0.1:{kept}]}}
""").start()
    try:
        c = Client(f"127.0.0.1:{plain}")
        k = Client(f"127.0.0.1:{plain}", "kept.test")
        assert c.unary(b"a") == b"echo:a" and k.unary(b"b") == b"echo:b"
        t_lost, got_lost = slow_call(c, 3)
        t_kept, got_kept = slow_call(k, 1.5)
        time.sleep(0.5)
        g_lost.stop(None)
        t_lost.join(15)
        t_kept.join(15)
        assert got_lost == ["StatusCode.UNAVAILABLE"]
        assert got_kept == [b"late"]
        c.close()
        k.close()
    finally:
        e.stop()
        g_lost.stop(None)
        g_kept.stop(None)


def test_a_slow_backend_gets_its_stream_a_504_and_the_others_go_on(rig: Rig) -> None:
    out = subprocess.run(["nghttp", "-n", "-s", "-H", ":authority: a.test",
                          f"http://127.0.0.1:{rig.plain}/slow/5",
                          f"http://127.0.0.1:{rig.plain}/status/200"], capture_output=True,
                         text=True, timeout=30).stdout
    codes = {line.split()[-1]: line.split()[4] for line in out.splitlines()
             if line.strip().endswith(("/slow/5", "/status/200"))}
    assert codes == {"/slow/5": "504", "/status/200": "200"}, out


# -- HTTP/1.1 clients, HTTP/2 backends -------------------------------------------------


def nginx_h2(d: Path, h2c: int, h2: int, cert: str, key: str,
             backend: int) -> subprocess.Popen[bytes]:
    """nginx as an HTTP/2 backend: h2c on ``h2c``, h2 over TLS on ``h2``, both proxying
    to an HTTP/1.1 ``backend`` unbuffered."""
    where = f"""location / {{ proxy_pass http://127.0.0.1:{backend};
        proxy_http_version 1.1; proxy_request_buffering off; proxy_buffering off;
        client_max_body_size 0; }}"""
    (d / "nginx.conf").write_text(f"""
user root;
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{h2c} http2; {where} }}
  server {{ listen 127.0.0.1:{h2} ssl http2; ssl_certificate {cert};
           ssl_certificate_key {key}; {where} }}
}}
""")
    return subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d),
                             "-g", "daemon off;"])


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_http1_clients_reach_h2c_and_h2_backends(tmp_path: Path) -> None:
    cert, key = self_signed(str(tmp_path), "ngx", dns=("ngx.test",))
    h2c, h2tls, plain = free_port(), free_port(), free_port()
    with HttpBackend("deep") as deep:
        ngx = nginx_h2(tmp_path, h2c, h2tls, cert, key, deep.port)
        e = Edgelb(tmp_path, f"""\
workers: 1
listeners:
  - name: plain
    bind: 127.0.0.1:{plain}
    protocol: http
    routes:
      - host: c.test
        paths: [{{path: /, type: Prefix, pool: cleartext}}]
      - host: t.test
        paths: [{{path: /, type: Prefix, pool: tls}}]
    pools:
      cleartext: {{protocol: h2c, backends: [127.0.0.1:{h2c}]}}
      tls:
        protocol: h2
        backends: [127.0.0.1:{h2tls}]
        tls: {{ca: {cert}, server_name: ngx.test}}
""")
        try:
            wait_for(lambda: socket_open(h2c) and socket_open(h2tls), 10, "nginx")
            e.start()
            blob = tmp_path / "blob"
            blob.write_bytes(bytes(range(256)) * 8000)
            want = hashlib.sha256(blob.read_bytes()).hexdigest()
            for host in ("c.test", "t.test"):
                url = f"http://127.0.0.1:{plain}"
                r = curl("-H", f"Host: {host}", "-w", " %{http_version}", f"{url}/status/200")
                assert r.stdout.split() == ["deep", "200", "1.1"], r.stdout + r.stderr
                r = curl("-H", f"Host: {host}", "--data-binary", f"@{blob}", f"{url}/sha")
                assert r.stdout.split() == [str(8000 * 256), want]
                r = curl("-H", f"Host: {host}", f"{url}/big/3000000")
                assert len(r.stdout) == 3000000
                # gRPC's status is in trailers, which HTTP/1.1 cannot carry back.
                r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}", "-H",
                         "Content-Type: application/grpc", "--data-binary", "x",
                         f"{url}/t.T/Unary")
                assert r.stdout == "502"
            assert "gRPC over HTTP/1.1" in e.logs()
            # One shared connection to each backend (per worker) carried its requests.

            def counts() -> list[tuple[int, int]]:
                detail = ControlClient(e.socket).get("/v1/listeners/plain")
                return [(b["connections"], b["requests"]) for p in detail["pools"]
                        for b in p["backends"]]

            wait_for(lambda: counts() == [(1, 3), (1, 3)], 5, "the counters")
        finally:
            e.stop()
            ngx.terminate()
            ngx.wait(10)


def socket_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
