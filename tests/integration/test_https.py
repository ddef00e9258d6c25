"""HTTPS termination with SNI, certificate reload, TLS towards backends, a real WebSocket
echo, reloads under load and a 1 GB upload, all through a running edgelb."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
import trustme
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from ..helpers import EDGELB, Edgelb, free_port, http_listener, read_response, wait_for
from ..http_backend import HttpBackend


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert(ca: trustme.CA, tmp: Path, name: str, *hosts: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(*hosts)
    crt, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key))
    crt.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return crt, key


def tls_get(port: int, sni: str | None, ca: trustme.CA, path: str = "/",
            version: ssl.TLSVersion | None = None) -> tuple[str, bytes]:
    """(the certificate's first DNS name, the response) for one HTTPS request."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        names = [v for k, v in s.getpeercert()["subjectAltName"] if k == "DNS"]
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni or 'x'}\r\nConnection: close\r\n\r\n"
                  .encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return names[0], out


def https_config(port: int, backend: int, certs: list[tuple[list[str], Path, Path]]) -> str:
    tls = "\n".join(f"      - {{hosts: [{', '.join(repr(h) for h in hosts)}], "
                    f"cert: {crt}, key: {key}}}" for hosts, crt, key in certs)
    return f"""\
listeners:
  - name: secure
    bind: 127.0.0.1:{port}
    protocol: https
    backends: [127.0.0.1:{backend}]
    tls:
{tls}
"""


def test_sni_chooses_the_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    default = write_cert(ca, tmp_path, "default", "default.test")
    exact = write_cert(ca, tmp_path, "exact", "foo.example.com")
    wild = write_cert(ca, tmp_path, "wild", "*.example.com")
    port = free_port()
    with HttpBackend("web") as be:
        e = Edgelb(tmp_path, https_config(port, be.port, [
            (["default.test"], *default), (["foo.example.com"], *exact),
            (["*.example.com"], *wild)])).start(port)
        try:
            assert tls_get(port, "foo.example.com", ca)[0] == "foo.example.com"
            assert tls_get(port, "FOO.example.com", ca)[0] == "foo.example.com"
            assert tls_get(port, "bar.example.com", ca)[0] == "*.example.com"
            assert tls_get(port, "a.bar.example.com", ca)[0] == "default.test"
            assert tls_get(port, None, ca)[0] == "default.test"
            _, resp = tls_get(port, "foo.example.com", ca, "/hello")
            assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"web GET /hello\n")
            assert be.seen[-1].header("X-Forwarded-Proto") == "https"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1, on purpose
                with pytest.raises(ssl.SSLError):
                    tls_get(port, "foo.example.com", ca, version=ssl.TLSVersion.TLSv1_1)
        finally:
            e.stop()


def test_certificate_reload_keeps_open_connections(tmp_path: Path, ca: trustme.CA) -> None:
    old = write_cert(ca, tmp_path, "old", "old.test")
    port = free_port()
    with HttpBackend("web") as be:
        e = Edgelb(tmp_path, https_config(port, be.port, [(["a.test"], *old)])).start(port)
        try:
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            ctx.check_hostname = False
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                 server_hostname="a.test") as held:
                held.sendall(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
                assert read_response(held).endswith(b"web GET /1\n")
                # Same path, new content: the fingerprint changes, so the reload applies it.
                new = write_cert(ca, tmp_path, "new", "new.test")
                shutil.copy(new[0], old[0])
                shutil.copy(new[1], old[1])
                e.reload()
                wait_for(lambda: tls_get(port, "a.test", ca)[0] == "new.test", 10, "new cert")
                held.sendall(b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
                assert read_response(held).endswith(b"web GET /2\n")
        finally:
            e.stop()


@pytest.mark.parametrize("case", ["missing", "mismatched", "no tls"])
def test_bad_certificate_is_a_config_error_naming_the_file(tmp_path: Path, ca: trustme.CA,
                                                           case: str) -> None:
    crt, key = write_cert(ca, tmp_path, "one", "one.test")
    _, other_key = write_cert(ca, tmp_path, "two", "two.test")
    cfg = {
        "missing": https_config(8443, 9000, [(["a"], tmp_path / "nope.crt", key)]),
        "mismatched": https_config(8443, 9000, [(["a"], crt, other_key)]),
        "no tls": https_config(8443, 9000, []).replace("    tls:\n", ""),
    }[case]
    path = tmp_path / "c.yaml"
    path.write_text(cfg)
    out = subprocess.run([*EDGELB, "check-config", "-c", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0
    expect = {"missing": "nope.crt", "mismatched": "two.key", "no tls": "listeners[0].tls"}
    assert expect[case] in out.stderr + out.stdout
    assert "line " in out.stderr + out.stdout
    assert "PRIVATE KEY" not in out.stderr + out.stdout


def test_tls_to_backends(tmp_path: Path, ca: trustme.CA) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("backend.internal").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    with HttpBackend("tlsweb", tls=server_ctx) as be:
        e = Edgelb(tmp_path, f"""\
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    protocol: http
    default_pool: secure
    pools:
      secure:
        backends: [127.0.0.1:{be.port}]
        tls: {{ca: {ca_file}, server_name: backend.internal}}
""").start(port)
        try:
            out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/over-tls"],
                                 capture_output=True, text=True, timeout=10)
            assert out.stdout == "tlsweb GET /over-tls\n", out.stderr
        finally:
            e.stop()


def test_websocket_echo(tmp_path: Path) -> None:
    def echo(ws) -> None:  # type: ignore[no-untyped-def]
        for message in ws:
            ws.send(message)

    with ws_serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ws_port = server.socket.getsockname()[1]
        port = free_port()
        e = Edgelb(tmp_path, http_listener(port, ws_port, name="ws")).start(port)
        try:
            with ws_connect(f"ws://127.0.0.1:{port}/chat") as ws:
                for i in range(20):
                    ws.send(f"hello {i}")
                    assert ws.recv(timeout=5) == f"hello {i}"
                big = os.urandom(1 << 19)
                ws.send(big)
                assert ws.recv(timeout=10) == big
        finally:
            e.stop()
            server.shutdown()


def test_wrk_through_reloads_has_no_errors(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make deb-deps)")
    port = free_port()
    with HttpBackend("a") as a, HttpBackend("b") as b:
        cfg = f"""\
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    protocol: http
    access_log: false
    routes:
      - paths: [{{path: /, type: Prefix, pool: {{pool}}}}]
    pools:
      a: {{backends: [127.0.0.1:{a.port}]}}
      b: {{backends: [127.0.0.1:{b.port}]}}
"""
        e = Edgelb(tmp_path, cfg.replace("{pool}", "a")).start(port)
        try:
            wrk = subprocess.Popen(["wrk", "-t1", "-c8", "-d4s", f"http://127.0.0.1:{port}/"],
                                   stdout=subprocess.PIPE, text=True)
            for i in range(3):
                time.sleep(0.8)
                e.rewrite(cfg.replace("{pool}", "ab"[(i + 1) % 2]))
                e.signal(signal.SIGHUP)
            out, _ = wrk.communicate(timeout=30)
            assert "requests in" in out, out
            assert "Socket errors" not in out and "Non-2xx" not in out, out
            assert len(a.seen) > 0 and len(b.seen) > 0
        finally:
            e.stop()


def test_1gb_upload_streams_with_bounded_memory(tmp_path: Path) -> None:
    port = free_port()
    with HttpBackend("sink") as be:
        e = Edgelb(tmp_path, http_listener(port, be.port, name="up")).start(port)
        try:
            assert e.proc is not None
            size = 1 << 30
            block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
            digest = hashlib.sha256()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(b"POST /sha HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                          b"Connection: close\r\n\r\n" % size)
                for _ in range(size // len(block)):
                    s.sendall(block)
                    digest.update(block)
                resp = b""
                while chunk := s.recv(4096):
                    resp += chunk
            assert resp.endswith(f"{size} {digest.hexdigest()}\n".encode()), resp
            status = Path(f"/proc/{e.proc.pid}/status").read_text()
            peak_kb = int(next(ln for ln in status.splitlines()
                               if ln.startswith("VmHWM")).split()[1])
            assert peak_kb < 120 * 1024, f"peak RSS {peak_kb} kB for a 1 GB upload"
        finally:
            e.stop()
