"""A recording HTTP/1.1 backend for the L7 tests, built on the standard library's
http.server (an implementation independent of edgelb's parser). It records every request
it receives and every connection it accepts, so a test can assert that a refused request
never reached it. Paths select behaviours:

    /status/N        answer status N          /big/N       N bytes of body
    /chunked/N       N chunks, chunked         /close       body ended by closing
    /slow/S          wait S seconds first      /cut         Content-Length 100, 10 bytes, close
    /clte            Content-Length and Transfer-Encoding together
    /sha             read the body in blocks, answer its length and sha256
    /ws              101 Switching Protocols, then echo bytes
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        got = [v for k, v in self.headers if k.lower() == name.lower()]
        return got[0] if got else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in separate writes; without this, Nagle holds the body.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self, sink: list[bytes] | None, digest: hashlib._Hash | None) -> int:
        n = 0

        def take(left: int) -> int:
            """Read ``left`` bytes into the sink and digest; how many came."""
            got = 0
            while left:
                block = self.rfile.read(min(left, 1 << 20))
                if not block:
                    break
                left -= len(block)
                got += len(block)
                if sink is not None:
                    sink.append(block)
                if digest is not None:
                    digest.update(block)
            return got

        te = self.headers.get("Transfer-Encoding", "")
        if te.lower().endswith("chunked"):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return n
                n += take(size)
                self.rfile.readline()
        return take(int(self.headers.get("Content-Length", "0")))

    def _handle(self) -> None:
        path = self.path
        if path.startswith("/sha"):
            digest = hashlib.sha256()
            n = self._read_body(None, digest)
            self.server.record(Seen(self.command, path, list(self.headers.items()), b""))
            self._reply(200, f"{n} {digest.hexdigest()}\n".encode())
            return
        parts: list[bytes] = []
        self._read_body(parts, None)
        self.server.record(Seen(self.command, path, list(self.headers.items()),
                                b"".join(parts)))
        name = self.server.name
        if path.startswith("/status/"):
            status = int(path.split("/")[2])
            self._reply(status, b"" if status in (204, 304) else f"{name} {status}\n".encode())
        elif path.startswith("/big/"):
            self._reply(200, b"x" * int(path.split("/")[2]))
        elif path.startswith("/chunked/"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Backend", name)
            self.end_headers()
            for i in range(int(path.split("/")[2])):
                data = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/close":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 5000)
            self.close_connection = True
        elif path.startswith("/slow/"):
            time.sleep(float(path.split("/")[2]))
            self._reply(200, b"slow\n")
        elif path == "/cut":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 10)
            self.close_connection = True
        elif path == "/clte":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            self.close_connection = True
        elif path == "/ws":
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self._reply(200, f"{name} {self.command} {path}\n".encode())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("X-Backend", self.server.name)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default of 5 drops connects under load

    def __init__(self, port: int, name: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.name = name
        self.seen: list[Seen] = []
        self.connections = 0
        self.lock = threading.Lock()

    def record(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)

    def get_request(self):  # type: ignore[no-untyped-def]
        conn, addr = super().get_request()
        with self.lock:
            self.connections += 1
        return conn, addr


class HttpBackend:
    """A backend on 127.0.0.1:``port`` (any free port when 0) named ``name``; with
    ``tls`` (an ssl.SSLContext) it serves HTTPS."""

    def __init__(self, name: str, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.server = _Server(port, name)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def seen(self) -> list[Seen]:
        with self.server.lock:
            return list(self.server.seen)

    @property
    def connections(self) -> int:
        with self.server.lock:
            return self.server.connections

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
