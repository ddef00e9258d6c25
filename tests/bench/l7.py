"""L7 benchmark: edgelb beside HAProxy and nginx as HTTP reverse proxies, in one run, on
loopback, in front of the same nginx ``return 200`` backend, keep-alive, wrk -c50.

    python -m tests.bench.l7 [--seconds 5]

For each of plain HTTP and HTTPS (TLS terminated by the proxy): requests/s, p50/p99
latency, and the proxy's CPU microseconds per request (utime+stime of all its processes
over the run, divided by the requests served); edgelb again with its access log on
(plain and TLS). Then, with two each, plain and TLS: edgelb ``workers: 2``, HAProxy
``nbthread 2`` and nginx ``worker_processes 2``. Last, paced load: each proxy at
half of HAProxy's peak rate over plain HTTP (h2load ``--h1 --rps``, 50 connections),
p50/p99 from h2load's per-request log, since a saturating load measures queueing, not
the proxy. Prints a markdown table with ratios and writes JSON to tests/bench/results/.
Only ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trustme

from tests.bench.l4 import cpu_seconds, run_nginx, save_results, wrk
from tests.helpers import EDGELB, can_connect, free_port, stop_process, wait_for

T = TypeVar("T")


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (nginx and edgelb workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return cpu_seconds(pid) + sum(cpu_seconds(int(c)) for c in out.split())


def backend_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    d = tmp / "backend"
    d.mkdir()
    return run_nginx(d, f"""  server {{ listen 127.0.0.1:{port} backlog=4096;
           location / {{ return 200 "ok\\n"; }} }}""")


def proxy_nginx(tmp: Path, workers: int, http: int, https: int, backend: int,
                crt: Path, key: Path) -> subprocess.Popen[bytes]:
    d = tmp / f"nginx{workers}"
    d.mkdir(exist_ok=True)  # started again for the paced load
    return nginx_in_front(d, f"""listen 127.0.0.1:{http} reuseport backlog=4096;
    listen 127.0.0.1:{https} ssl reuseport backlog=4096;""", backend, crt, key, workers)


def nginx_in_front(d: Path, listens: str, backend: int, crt: Path, key: Path,
                   workers: int = 1) -> subprocess.Popen[bytes]:
    """nginx as a proxy on ``listens`` (its listen lines and any server-level
    directives) in front of ``backend``, keep-alive both ways."""
    return run_nginx(d, f"""  upstream be {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    {listens}
    ssl_certificate {crt}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}""", workers=workers)


def proxy_haproxy(tmp: Path, http: int, https: int, backend: int,
                  pem: Path, threads: int = 1) -> subprocess.Popen[bytes]:
    return haproxy_in_front(tmp / f"haproxy{threads}.cfg", f"""bind 127.0.0.1:{http}
  bind 127.0.0.1:{https} ssl crt {pem} alpn http/1.1""", backend, threads)


def haproxy_in_front(cfg: Path, binds: str, backend: int,
                     threads: int = 1) -> subprocess.Popen[bytes]:
    """HAProxy, ``threads`` threads, ``mode http`` on ``binds`` (its frontend's bind
    lines) in front of ``backend``, reusing backend connections."""
    cfg.write_text(f"""
global
  nbthread {threads}
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 1s
  timeout client 60s
  timeout server 60s
frontend fe
  {binds}
  default_backend be
backend be
  server s1 127.0.0.1:{backend}
""")
    return subprocess.Popen(["haproxy", "-db", "-f", str(cfg)])


def proxy_edgelb(tmp: Path, workers: int, http: int, https: int, backend: int,
                 crt: Path, key: Path, access_log: bool = False) -> subprocess.Popen[bytes]:
    cfg = tmp / f"edgelb{workers}{'-log' if access_log else ''}.yaml"
    cfg.write_text(f"""
workers: {workers}
listeners:
  - name: web
    bind: 127.0.0.1:{http}
    protocol: http
    access_log: {'true' if access_log else 'false'}
    health: {{type: none}}
    backends: [127.0.0.1:{backend}]
  - name: secure
    bind: 127.0.0.1:{https}
    protocol: https
    access_log: false
    health: {{type: none}}
    backends: [127.0.0.1:{backend}]
    tls: [{{hosts: [bench.test], cert: {crt}, key: {key}}}]
""")
    # The log goes to a file (so does the access log, on stderr, where it is on): a
    # daemon that does not come up says why there.
    with open(tmp / f"edgelb{workers}{'-log' if access_log else ''}.log", "wb") as log:
        return subprocess.Popen([*EDGELB, "run", "-c", str(cfg)], stdout=log, stderr=log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)


def measured(name: str, proc: subprocess.Popen[bytes],
             measure: Callable[[subprocess.Popen[bytes]], T]) -> T:
    """``measure(proc)``, said on stderr as it comes; then the proxy is stopped, with a
    pause for its sockets to go before the next one starts."""
    try:
        figures = measure(proc)
        print(f"{name}: {json.dumps(figures)}", file=sys.stderr)
        return figures
    finally:
        stop(proc)
        time.sleep(0.5)


def with_cpu(proc: subprocess.Popen[bytes],
             load: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The figures of ``load`` run against ``proc``, with the CPU microseconds per
    request of ``proc`` and its children over it."""
    c0 = tree_cpu(proc.pid)
    figures = load()
    cpu = tree_cpu(proc.pid) - c0
    figures["cpu_us_per_req"] = cpu / figures["requests"] * 1e6 if figures["requests"] \
        else 0.0
    return figures


@contextmanager
def behind_nginx(prefix: str) -> Iterator[tuple[Path, Path, Path, Path, int]]:
    """A scratch directory, a certificate (chain, key, both in one file) and an nginx
    ``return 200`` backend on a free port, for the proxies under test to stand in front
    of: (directory, chain, key, both, port)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as t:
        tmp = Path(t)
        crt, key, pem = certificate(tmp)
        port = free_port()
        backend = backend_nginx(tmp, port)
        try:
            wait_for(lambda: can_connect(port), 10, "backend")
            yield tmp, crt, key, pem, port
        finally:
            stop(backend)


def arguments(doc: str | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    return ap.parse_args()


def missing(*tools: str) -> bool:
    """Whether a tool the bench needs is not installed (said on stderr)."""
    gone = [t for t in tools if shutil.which(t) is None]
    for tool in gone:
        print(f"{tool} is not installed (make deb-deps)", file=sys.stderr)
    return bool(gone)


def certificate(tmp: Path) -> tuple[Path, Path, Path]:
    """A certificate for bench.test from a throwaway CA: its chain, its key, and both
    in one file (HAProxy's form)."""
    cert = trustme.CA().issue_cert("bench.test")
    crt, key, pem = tmp / "c.crt", tmp / "c.key", tmp / "c.pem"
    cert.private_key_pem.write_to_path(str(key))
    crt.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    return crt, key, pem


def paced(port: int, rate: float, seconds: int, tmp: Path) -> dict[str, float]:
    """p50/p99 (ms) and the rate reached with ``rate`` requests/s over 50 keep-alive
    connections (h2load paces each client at rate/50)."""
    log = tmp / f"paced-{port}.log"
    per_client = max(1, round(rate / 50))
    out = subprocess.run(["h2load", "--h1", "-c50", "-t1", f"--rps={per_client}",
                          f"-D{seconds}", "--warm-up-time=1", f"--log-file={log}",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    times = sorted(int(line.split()[2]) for line in log.read_text().splitlines()
                   if len(line.split()) == 3)
    log.unlink()
    done = re.search(r"(\d+) succeeded", out)
    if not times:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "rps": 0.0, "requests": 0.0}
    return {"p50_ms": times[len(times) // 2] / 1000,
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] / 1000,
            "rps": (int(done.group(1)) if done else len(times)) / seconds,
            "requests": float(len(times))}


def run_one(name: str, proc: subprocess.Popen[bytes], http: int, https: int,
            seconds: int, schemes: tuple[str, ...]) -> dict[str, Any]:
    wait_for(lambda: can_connect(http) and can_connect(https), 20, f"{name} listening")
    out: dict[str, Any] = {}
    for scheme in schemes:
        port = http if scheme == "http" else https
        wrk(port, 1, 50, scheme=scheme)  # warm up: connections, pools, TLS sessions
        out[scheme] = with_cpu(proc, functools.partial(wrk, port, seconds, 50, scheme=scheme))
    return out


def main() -> int:
    args = arguments(__doc__)
    if missing("haproxy", "nginx", "wrk"):
        return 2
    results: dict[str, Any] = {"seconds": args.seconds, "cpus": os.cpu_count()}
    with behind_nginx("edgelb-bench7-") as (tmp, crt, key, pem, bport):
        runs: list[tuple[str, Any]] = [
            ("edgelb", lambda h, s: proxy_edgelb(tmp, 1, h, s, bport, crt, key)),
            ("edgelb-log", lambda h, s: proxy_edgelb(tmp, 1, h, s, bport, crt, key,
                                                     access_log=True)),
            ("haproxy", lambda h, s: proxy_haproxy(tmp, h, s, bport, pem)),
            ("nginx", lambda h, s: proxy_nginx(tmp, 1, h, s, bport, crt, key)),
            ("edgelb-2", lambda h, s: proxy_edgelb(tmp, 2, h, s, bport, crt, key)),
            ("haproxy-2", lambda h, s: proxy_haproxy(tmp, h, s, bport, pem, threads=2)),
            ("nginx-2", lambda h, s: proxy_nginx(tmp, 2, h, s, bport, crt, key)),
        ]
        for name, start in runs:
            http, https = free_port(), free_port()
            results[name] = measured(name, start(http, https), functools.partial(
                run_one, name, http=http, https=https, seconds=args.seconds,
                schemes=("http", "https")))
        if shutil.which("h2load"):
            half = results["haproxy"]["http"]["rps"] / 2
            results["paced_rate"] = half

            def at_half(name: str, port: int, _: subprocess.Popen[bytes]) -> dict[str, float]:
                wait_for(lambda: can_connect(port), 20, f"{name} listening")
                wrk(port, 1, 50)  # warm up
                return paced(port, half, args.seconds, tmp)

            for name, start in [x for x in runs if x[0] in ("edgelb", "haproxy", "nginx")]:
                http, https = free_port(), free_port()
                results[f"{name}-paced"] = measured(f"{name} paced", start(http, https),
                                                    functools.partial(at_half, name, http))
    out = save_results("l7", results)
    report(results, args.seconds)
    print(f"\nraw figures: {out}")
    return 0


def report(r: dict[str, Any], seconds: int) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    print(f"\nL7, one run, wrk -t1 -c50 -d{seconds}s keep-alive, nginx `return 200` backend\n")
    print("| load | figure | edgelb | HAProxy | nginx | edgelb/HAProxy | edgelb/nginx |")
    print("|---|---|---|---|---|---|---|")
    for scheme in ("http", "https"):
        e, h, n = (r[x][scheme] for x in ("edgelb", "haproxy", "nginx"))
        for label, key, fmt in (("req/s", "rps", "{:.0f}"), ("p50 ms", "p50_ms", "{:.2f}"),
                                ("p99 ms", "p99_ms", "{:.2f}"),
                                ("CPU µs/req", "cpu_us_per_req", "{:.1f}")):
            print(f"| {scheme}, 1 process | {label} | {fmt.format(e[key])} | "
                  f"{fmt.format(h[key])} | {fmt.format(n[key])} | {ratio(e[key], h[key])} | "
                  f"{ratio(e[key], n[key])} |")
    for scheme in ("http", "https"):
        lg, e1 = r["edgelb-log"][scheme], r["edgelb"][scheme]
        print(f"| {scheme}, 1 process, access log on (a file) | CPU µs/req | "
              f"{lg['cpu_us_per_req']:.1f} | - | - | - | - |")
        on_off = ratio(lg["cpu_us_per_req"], e1["cpu_us_per_req"])
        print(f"| ... against the access log off | CPU | {on_off} | | | | |")
    if "paced_rate" in r:
        e, h, n = (r[f"{x}-paced"] for x in ("edgelb", "haproxy", "nginx"))
        for label, k in (("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("req/s", "rps")):
            print(f"| http at {r['paced_rate']:.0f} req/s (half of HAProxy's peak) | {label} | "
                  f"{e[k]:.2f} | {h[k]:.2f} | {n[k]:.2f} | {ratio(e[k], h[k])} | "
                  f"{ratio(e[k], n[k])} |")
    for scheme in ("http", "https"):
        e, h, n = (r[x][scheme] for x in ("edgelb-2", "haproxy-2", "nginx-2"))
        for label, key, fmt in (("req/s", "rps", "{:.0f}"),
                                ("CPU µs/req", "cpu_us_per_req", "{:.1f}")):
            print(f"| {scheme}, 2 processes (HAProxy: 2 threads) | {label} | "
                  f"{fmt.format(e[key])} | {fmt.format(h[key])} | {fmt.format(n[key])} | "
                  f"{ratio(e[key], h[key])} | {ratio(e[key], n[key])} |")
    errs = {k: v[s]["errors"] + v[s]["non2xx"] for k, v in r.items()
            if isinstance(v, dict) and not k.endswith("-paced") for s in v}
    print(f"\nerrors (socket + non-2xx) per run: {errs}")


if __name__ == "__main__":
    sys.exit(main())
