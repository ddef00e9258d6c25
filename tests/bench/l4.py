"""L4 benchmark, user space: edgelb's user-space datapath beside HAProxy (stock, and
tuned with splice-auto and a larger tune.bufsize) and a direct connection, in one run, on
loopback, against the same backends (the kernel datapath: tests/bench/kernel.py). Prints
a markdown table of figures and ratios and writes JSON to tests/bench/results/.

    python -m tests.bench.l4 [--seconds 5] [--idle 10000]

Only ratios within one run mean anything: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import EDGELB, can_connect, free_port, stop_process, wait_for

RESULTS = Path(__file__).parent / "results"


def save_results(kind: str, data: dict[str, Any]) -> Path:
    """Write a run's figures to results/KIND-STAMP.json (with ``when`` = STAMP)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{stamp}.json"
    out.write_text(json.dumps({"when": stamp, **data}, indent=2))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Proxy:
    """A proxy under test (or None for direct): name, pid, and ports it forwards."""

    name: str
    pid: int | None
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


def run_nginx(d: Path, servers: str, workers: int = 1,
              connections: int = 4096) -> subprocess.Popen[bytes]:
    """nginx in the foreground with everything under ``d`` and ``servers`` as the body
    of its http block."""
    (d / "nginx.conf").write_text(f"""
worker_processes {workers};
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  keepalive_requests 1000000;
{servers}
}}
""")
    return subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d),
                             "-g", "daemon off;"])


def start_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    return run_nginx(tmp, f"""  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
           location / {{ return 200 "ok\\n"; }} }}""", connections=20000)


def start_iperf3(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class HoldServer:
    """Accepts connections and holds them open, silent: the idle-connection backend."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stop:
            for _ in sel.select(0.2):
                while True:
                    try:
                        c, _ = self.sock.accept()
                    except OSError:
                        break
                    self.held.append(c)

    def release(self) -> None:
        for c in self.held:
            c.close()
        self.held.clear()

    def close(self) -> None:
        self._stop = True
        self.release()
        self.sock.close()


def haproxy_config(tmp: Path, name: str, routes: dict[int, int], tuned: bool) -> Path:
    fronts = "\n".join(f"""
frontend f{lp}
  bind 127.0.0.1:{lp} backlog 4096
  default_backend b{lp}
backend b{lp}
  server s1 127.0.0.1:{bp}""" for lp, bp in routes.items())
    conf = tmp / f"{name}.cfg"
    conf.write_text(f"""
global
  nbthread 1
  # 20,000 descriptors is this sandbox's hard limit: 2 per connection plus 2 per
  # splice pipe must fit, and the idle test holds 8,000 connections.
  maxconn 8200
  maxpipes 800
  {"tune.bufsize 65536" if tuned else ""}
defaults
  mode tcp
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  {"option splice-auto" if tuned else ""}
{fronts}
""")
    return conf


def edgelb_config(tmp: Path, routes: dict[int, int]) -> Path:
    lst = "\n".join(f"""  - name: l{lp}
    bind: 127.0.0.1:{lp}
    datapath: user
    backends: [127.0.0.1:{bp}]
    health: {{type: none}}""" for lp, bp in routes.items())
    conf = tmp / "edgelb.yaml"
    conf.write_text(f"workers: 1\nlisteners:\n{lst}\n")
    return conf


def iperf(port: int, streams: int, seconds: int) -> float:
    """Gbit/s received, client -> server, through ``port``."""
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", str(streams),
                          "-t", str(seconds), "-J"], capture_output=True, text=True,
                         timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(port: int, seconds: int, conns: int, close: bool = False,
        scheme: str = "http") -> dict[str, float]:
    """rps and latency percentiles (ms) of wrk through ``port``."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run([*cmd, f"{scheme}://127.0.0.1:{port}/"], capture_output=True,
                         text=True, timeout=seconds + 30).stdout
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        res[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = float(sum(int(x) for x in m.groups())) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    return res


def idle_rss(pid: int, port: int, hold: HoldServer, count: int) -> float:
    """KiB of proxy RSS per 10,000 idle connections held through ``port``."""
    time.sleep(0.5)
    before = rss_kib(pid)
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
        wait_for(lambda: len(hold.held) >= count, 60, "idle connections held")
        time.sleep(1.0)
        after = rss_kib(pid)
    finally:
        for s in socks:
            s.close()
        hold.release()
    time.sleep(1.0)
    return (after - before) * 10000 / count


def measure(proxy: Proxy, seconds: int, idle: int, hold: HoldServer,
            log: Callable[[str], None]) -> None:
    r = proxy.results
    pid = proxy.pid
    for streams in (1, 8):
        cpu0 = cpu_seconds(pid) if pid else 0.0
        gbps = iperf(proxy.ports["iperf"], streams, seconds)
        cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
        r[f"bulk_{streams}_gbps"] = round(gbps, 2)
        gb = gbps * seconds / 8
        r[f"bulk_{streams}_cpu_s_per_gb"] = round(cpu / gb, 3) if pid and gb else None
        log(f"{proxy.name}: bulk x{streams} {gbps:.2f} Gbit/s")
    cpu0 = cpu_seconds(pid) if pid else 0.0
    w = wrk(proxy.ports["http"], seconds, 50)
    cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    r.update({"rps": round(w["rps"]), "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
              "wrk_errors": w["errors"]})
    r["cpu_s_per_1k_req"] = round(cpu / (w["requests"] / 1000), 4) if pid and w[
        "requests"] else None
    log(f"{proxy.name}: {w['rps']:.0f} req/s p50 {w['p50_ms']}ms p99 {w['p99_ms']}ms")
    w = wrk(proxy.ports["http"], seconds, 20, close=True)
    r["new_conn_per_s"] = round(w["rps"])
    log(f"{proxy.name}: {w['rps']:.0f} new connections/s")
    if pid and idle:
        r["rss_kib_per_10k_idle"] = round(idle_rss(pid, proxy.ports["hold"], hold, idle))
        log(f"{proxy.name}: {r['rss_kib_per_10k_idle']} KiB RSS per 10k idle connections")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=8000,
                    help="idle connections, reported per 10,000 (0: skip); 8,000 fits a "
                    "20,000 descriptor limit: each costs 2 in the proxy")
    args = ap.parse_args()
    for tool in ("haproxy", "nginx", "iperf3", "wrk"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (run `make deb-deps` as root)",
                  file=sys.stderr)
            return 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 1 << 18), max(hard, 1 << 18)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="edgelb-bench-"))
    nginx_port, iperf_port = free_port(), free_port()
    nginx = start_nginx(tmp, nginx_port)
    iperf_srv = start_iperf3(iperf_port)
    hold = HoldServer()
    proxies: list[Proxy] = []
    try:
        wait_for(lambda: can_connect(nginx_port) and can_connect(iperf_port), 10, "backends")
        proxies.append(Proxy("direct", None, {"iperf": iperf_port, "http": nginx_port,
                                              "hold": hold.port}))
        for name in ("edgelb", "haproxy", "haproxy-splice"):
            ports = {"iperf": free_port(), "http": free_port(), "hold": free_port()}
            routes = {ports["iperf"]: iperf_port, ports["http"]: nginx_port,
                      ports["hold"]: hold.port}
            if name == "edgelb":
                cmd = [*EDGELB, "run", "-c", str(edgelb_config(tmp, routes))]
            else:
                cmd = ["haproxy", "-db", "-f",
                       str(haproxy_config(tmp, name, routes, name.endswith("splice")))]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            proxies.append(Proxy(name, proc.pid, ports, proc))
        for p in proxies:
            wait_for(lambda p=p: all(can_connect(x) for x in p.ports.values()), 20, p.name)
        # iperf3's server takes one test at a time; run the proxies one after another.
        for p in proxies:
            measure(p, args.seconds, args.idle if p.pid else 0, hold, log)
    finally:
        for p in proxies:
            p.stop()
        hold.close()
        for proc in (nginx, iperf_srv):
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    report(proxies, args)
    return 0


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def report(proxies: list[Proxy], args: argparse.Namespace) -> None:
    by = {p.name: p.results for p in proxies}
    e = by["edgelb"]
    hp = by["haproxy"]
    hs = by["haproxy-splice"]

    def best(key: str, higher: bool = True) -> float | None:
        vals = [v for v in (hp.get(key), hs.get(key)) if v]
        if not vals:
            return None
        return max(vals) if higher else min(vals)

    rows = [
        ("bulk 1 stream, Gbit/s", "bulk_1_gbps", True),
        ("bulk 8 streams, Gbit/s", "bulk_8_gbps", True),
        ("CPU s per GB (8 streams)", "bulk_8_cpu_s_per_gb", False),
        ("small requests, req/s (wrk -c50)", "rps", True),
        ("p50 latency, ms", "p50_ms", False),
        ("p99 latency, ms", "p99_ms", False),
        ("CPU s per 1,000 requests", "cpu_s_per_1k_req", False),
        ("new connections/s (wrk -c20, close)", "new_conn_per_s", True),
        ("RSS KiB per 10,000 idle conns", "rss_kib_per_10k_idle", False),
    ]
    lines = ["| measure | direct | edgelb | HAProxy | HAProxy splice | edgelb / best HAProxy |",
             "|---|---|---|---|---|---|"]
    for label, key, higher in rows:
        b = best(key, higher)
        lines.append(f"| {label} | {by['direct'].get(key, '-') or '-'} | {e.get(key)} | "
                     f"{hp.get(key)} | {hs.get(key)} | {_ratio(e.get(key), b)} |")
    table = "\n".join(lines)
    print(table)
    out = save_results("l4", {"seconds": args.seconds, "idle": args.idle,
                              "cores": os.cpu_count(), "results": by, "table": table})
    print(f"\nwritten to {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
