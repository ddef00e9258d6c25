"""HTTP/2 benchmark: edgelb beside HAProxy and nginx serving h2 (TLS, ALPN) to clients
in front of the same HTTP/1.1 nginx ``return 200`` backend, in one run, on loopback,
h2load -c50 -m10; then gRPC unary calls through edgelb (h2c to a grpcio server) against
the same calls made to the server directly.

    python -m tests.bench.h2 [--seconds 5]

For each proxy: requests/s and CPU microseconds per request (utime+stime of all its
processes over the run, divided by the requests served). Prints a markdown table with
ratios and writes JSON to tests/bench/results/. Only ratios within one run mean anything.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.l4 import save_results
from tests.bench.l7 import (
    arguments,
    behind_nginx,
    haproxy_in_front,
    measured,
    missing,
    nginx_in_front,
    stop,
    with_cpu,
)
from tests.helpers import EDGELB, ROOT, can_connect, free_port, wait_for


def h2load(url: str, seconds: int, clients: int, streams: int,
           extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Requests per second and the 2xx answered, from h2load over ``seconds``."""
    out = subprocess.run(["h2load", f"-c{clients}", f"-m{streams}", "-t1", f"-D{seconds}",
                          "--warm-up-time=1", *extra, url], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    done = re.search(r"(\d+) succeeded", out)
    if not done or done.group(1) == "0":
        print(out[-1500:], file=sys.stderr)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    requests = int(done.group(1)) if done else 0
    return {"rps": requests / seconds, "requests": float(requests),
            "ok": float(ok.group(1)) if ok else 0.0}


def proxy_edgelb(tmp: Path, port: int, backend: int, crt: Path, key: Path,
                 grpc: int = 0) -> subprocess.Popen[bytes]:
    cfg = tmp / f"edgelb-{port}.yaml"
    listener = f"""  - name: grpc
    bind: 127.0.0.1:{port}
    protocol: http
    h2c: true
    backend_protocol: h2c
    access_log: false
    health: {{type: none}}
    backends: [127.0.0.1:{grpc}]
""" if grpc else f"""  - name: secure
    bind: 127.0.0.1:{port}
    protocol: https
    access_log: false
    health: {{type: none}}
    backends: [127.0.0.1:{backend}]
    tls: [{{hosts: [bench.test], cert: {crt}, key: {key}}}]
"""
    cfg.write_text(f"workers: 1\nlisteners:\n{listener}")
    with open(tmp / f"edgelb-{port}.log", "wb") as log:
        return subprocess.Popen([*EDGELB, "run", "-c", str(cfg)], stdout=log, stderr=log)


def proxy_haproxy(tmp: Path, port: int, backend: int, pem: Path) -> subprocess.Popen[bytes]:
    return haproxy_in_front(tmp / "haproxy-h2.cfg",
                            f"bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1", backend)


def proxy_nginx(tmp: Path, port: int, backend: int, crt: Path,
                key: Path) -> subprocess.Popen[bytes]:
    d = tmp / "nginx-h2"
    d.mkdir(exist_ok=True)
    return nginx_in_front(d, f"""listen 127.0.0.1:{port} ssl http2 backlog=4096;
    http2_max_concurrent_streams 128;""", backend, crt, key)


def h2_floor(requests: int = 20000) -> float:
    """CPU microseconds the ``h2`` machine alone spends on one request on the server's
    side (the request's headers decoded, the response's headers and body encoded), with
    its own header checks off as edgelb runs it: a floor for any proxy built on it."""
    import h2.config
    import h2.connection

    def machine(client: bool) -> h2.connection.H2Connection:
        return h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False,
            normalize_outbound_headers=False))

    client, server = machine(True), machine(False)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    req = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"bench.test"),
           (b":path", b"/"), (b"user-agent", b"h2load nghttp2/1.52.0")]
    resp = [(b":status", b"200"), (b"server", b"nginx/1.22.1"),
            (b"date", b"Wed, 02 Dec 2026 01:10:00 GMT"), (b"content-type", b"text/plain"),
            (b"content-length", b"3")]
    spent = 0.0
    for _ in range(requests):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, req, end_stream=True)
        data = client.data_to_send()
        t0 = time.process_time()
        server.receive_data(data)
        server.send_headers(sid, resp)
        server.send_data(sid, b"ok\n", end_stream=True)
        out = server.data_to_send()
        spent += time.process_time() - t0
        client.receive_data(out)
    return spent / requests * 1e6


def grpc_frame(tmp: Path) -> Path:
    """One gRPC message (a 5-byte prefix, then the bytes) for h2load to send."""
    body = tmp / "unary.bin"
    body.write_bytes(b"\x00" + struct.pack(">I", 5) + b"hello")
    return body


def main() -> int:
    args = arguments(__doc__)
    if missing("haproxy", "nginx", "h2load"):
        return 2
    results: dict[str, Any] = {"seconds": args.seconds, "cpus": os.cpu_count()}
    with behind_nginx("edgelb-bench-h2-") as (tmp, crt, key, pem, bport):
        runs: list[tuple[str, Callable[[int], subprocess.Popen[bytes]]]] = [
            ("edgelb", lambda p: proxy_edgelb(tmp, p, bport, crt, key)),
            ("haproxy", lambda p: proxy_haproxy(tmp, p, bport, pem)),
            ("nginx", lambda p: proxy_nginx(tmp, p, bport, crt, key))]
        def over_h2(name: str, port: int, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
            wait_for(lambda: can_connect(port), 20, f"{name} listening")
            url = f"https://127.0.0.1:{port}/"
            h2load(url, 1, 50, 10)  # warm up
            return with_cpu(proc, functools.partial(h2load, url, args.seconds, 50, 10))

        for name, start in runs:
            port = free_port()
            results[name] = measured(name, start(port), functools.partial(over_h2, name, port))
        results.update(grpc_rates(tmp, args.seconds))
    results["h2_floor_us"] = h2_floor()
    out = save_results("h2", results)
    report(results, args.seconds)
    print(f"\nraw figures: {out}")
    return 0


def grpc_rates(tmp: Path, seconds: int) -> dict[str, Any]:
    """gRPC unary calls per second straight to a grpcio server and through edgelb."""
    gport, eport = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.grpc_peer", f"127.0.0.1:{gport}"],
                              cwd=ROOT)
    proc = None
    out: dict[str, Any] = {}
    try:
        wait_for(lambda: can_connect(gport), 20, "the gRPC server")
        proc = proxy_edgelb(tmp, eport, 0, tmp / "c.crt", tmp / "c.key", grpc=gport)
        wait_for(lambda: can_connect(eport), 20, "edgelb listening")
        call = ("-d", str(grpc_frame(tmp)), "-H", "content-type: application/grpc",
                "-H", "te: trailers")
        for name, port in (("grpc-direct", gport), ("grpc-edgelb", eport)):
            url = f"http://127.0.0.1:{port}/t.T/Unary"
            h2load(url, 1, 10, 10, call)
            out[name] = h2load(url, seconds, 10, 10, call)
            print(f"{name}: {json.dumps(out[name])}", file=sys.stderr)
            if not out[name]["ok"]:
                log = tmp / f"edgelb-{eport}.log"
                print(log.read_text()[-3000:] if log.exists() else "no log", file=sys.stderr)
    finally:
        if proc is not None:
            stop(proc)
        stop(server)
    return out


def report(r: dict[str, Any], seconds: int) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    print(f"\nHTTP/2, one run, h2load -c50 -m10 -D{seconds}s over TLS (ALPN h2), "
          "HTTP/1.1 nginx `return 200` backend\n")
    print("| figure | edgelb | HAProxy | nginx | edgelb/HAProxy | edgelb/nginx |")
    print("|---|---|---|---|---|---|")
    e, h, n = r["edgelb"], r["haproxy"], r["nginx"]
    for label, k, fmt in (("req/s", "rps", "{:.0f}"), ("CPU µs/req", "cpu_us_per_req",
                                                         "{:.1f}")):
        print(f"| {label} | {fmt.format(e[k])} | {fmt.format(h[k])} | {fmt.format(n[k])} | "
              f"{ratio(e[k], h[k])} | {ratio(e[k], n[k])} |")
    floor = r["h2_floor_us"]
    print(f"| the h2 machine alone, CPU µs/req | {floor:.1f} | - | - | "
          f"{ratio(floor, h['cpu_us_per_req'])} | {ratio(floor, n['cpu_us_per_req'])} |")
    d, g = r["grpc-direct"], r["grpc-edgelb"]
    print(f"\ngRPC unary (grpcio server, h2load -c10 -m10): {g['rps']:.0f} calls/s through "
          f"edgelb, {d['rps']:.0f} direct ({ratio(g['rps'], d['rps'])})")
    print("answered 2xx: " + ", ".join(f"{k} {v['ok']:.0f}/{v['requests']:.0f}"
                                        for k, v in r.items() if isinstance(v, dict)))


if __name__ == "__main__":
    sys.exit(main())
