"""L4 benchmark through a real box: edgelb's kernel datapath, its user-space datapath and
HAProxy (nbthread 1) in one run, on the same load, as root in network namespaces
(tests/netlab.py: client -> box -> servers, nginx `return 200`, iperf3, a holding server).

    python -m tests.bench.kernel [--seconds 5] [--idle 8000] [--services 5000]
                                 [--failovers 3] [--adverts 100 50]

For each path (and the direct route through the box, without a proxy):
* small requests (wrk -c50 keep-alive): req/s, p99; new connections/s (wrk -c20 close);
* bulk (iperf3, 1 and 8 streams), Gbit/s;
* CPU per request for the whole machine from /proc/stat, softirq included (kernel
  forwarding shows up in no process), and the proxy's share: less the direct route's;
* memory per 10,000 idle flows: conntrack entries (the nf_conntrack slab) for the
  kernel, the process's RSS for user space and HAProxy.
Then, with --services listeners in the kernel: the time from a Snapshot to its rules in
force (edgelb_kernel_rules_seconds) for the whole set and for single changes; and the
stall of a hitless failover (two boxes, conntrackd) under a stream, with VRRP adverts
every 100 ms and every 50 ms (--adverts).

This machine is shared: compare within a run. Prints a markdown table, writes JSON to
tests/bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.control.client import Client
from tests.bench.l4 import cpu_seconds, rss_kib, save_results
from tests.helpers import Edgelb, wait_for
from tests.netlab import Routed, sh

HOLD = r"""
import selectors, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8192); s.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_READ); held = []
while True:
    for _ in sel.select():
        while True:
            try:
                held.append(s.accept()[0])
            except OSError:
                break
"""

# Opens N connections to ADDR:PORT, says so, holds them until stdin closes.
HOLDER = r"""
import socket, sys
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
         for _ in range(int(sys.argv[3]))]
print("held", flush=True)
sys.stdin.read()
"""

PATHS = ("direct", "kernel", "user", "haproxy")


def machine_busy() -> int:
    """Busy jiffies of the whole machine (everything but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4]


def conntrack_slab_bytes() -> int:
    """Bytes held by the nf_conntrack slab (active objects x object size)."""
    for line in Path("/proc/slabinfo").read_text().splitlines():
        if line.startswith("nf_conntrack "):
            f = line.split()
            return int(f[1]) * int(f[3])
    return 0


def wrk(lab: Routed, url: str, seconds: int, conns: int, close: bool = False
        ) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(lab.in_ns(lab.client, *cmd, url), capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)
    res["p99_ms"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] \
        if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = float(sum(int(x) for x in m.groups())) if m else 0.0
    return res


def iperf(lab: Routed, addr: str, port: int, streams: int, seconds: int) -> float:
    out = subprocess.run(lab.in_ns(lab.client, "iperf3", "-c", addr, "-p", str(port), "-P",
                                   str(streams), "-t", str(seconds), "-J"),
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    data = json.loads(out)
    if "error" in data:
        raise RuntimeError(data["error"])
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def haproxy_config(tmp: Path, vip: str, routes: dict[int, tuple[str, int]]) -> Path:
    fronts = "".join(f"""
frontend f{p}
  bind {vip}:{p} backlog 4096
  default_backend b{p}
backend b{p}
  server s1 {a}:{bp}
""" for p, (a, bp) in routes.items())
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 1
  maxconn 9000
defaults
  mode tcp
  timeout connect 1s
  timeout client 300s
  timeout server 300s
{fronts}""")
    return conf


class Bench:
    def __init__(self, lab: Routed, tmp: Path, args: argparse.Namespace) -> None:
        self.lab, self.tmp, self.args = lab, tmp, args
        self.server = f"10.{lab.t}.2.2"
        self.vip = lab.vip()
        # path -> (address, http port, iperf port, hold port)
        self.targets = {"direct": (self.server, 8081, 5201, 9000),
                        "kernel": (self.vip, 80, 5301, 9100),
                        "user": (self.vip, 81, 5302, 9101),
                        "haproxy": (self.vip, 82, 5303, 9102)}
        self.results: dict[str, dict[str, Any]] = {p: {} for p in PATHS}
        self.edgelb: Edgelb | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def start(self) -> None:
        lab, s = self.lab, self.server
        # Every path opens ~100,000 connections in a run: the ports of the clients (and
        # of the proxies towards the servers) must not run out in TIME_WAIT and starve
        # whichever path is measured last.
        for ns in (lab.client, lab.box):
            sh(*lab.in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000",
                          "net.ipv4.tcp_tw_reuse=1"))
        d = self.tmp / "nginx"
        d.mkdir()
        (d / "nginx.conf").write_text(f"""
worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen {s}:8081 reuseport backlog=4096; location / {{ return 200 "ok\\n"; }} }}
}}""")
        lab.procs.append(subprocess.Popen(lab.in_ns(
            lab.servers, "nginx", "-c", str(d / "nginx.conf"), "-p", str(d), "-g",
            "daemon off;")))
        lab.procs.append(subprocess.Popen(
            lab.in_ns(lab.servers, "iperf3", "-s", "-B", s, "-p", "5201"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        lab.procs.append(subprocess.Popen(lab.in_ns(lab.servers, sys.executable, "-c", HOLD,
                                                    s, "9000")))
        routes = {"http": 8081, "iperf": 5201, "hold": 9000}
        listeners = []
        for path in ("kernel", "user"):
            _, hp, ip, hdp = self.targets[path]
            for name, port, bport in (("http", hp, routes["http"]),
                                      ("iperf", ip, routes["iperf"]),
                                      ("hold", hdp, routes["hold"])):
                listeners.append(f"  - {{name: {path}-{name}, bind: '{self.vip}:{port}', "
                                 f"datapath: {path}, backends: ['{s}:{bport}'], "
                                 "health: {type: none}}")
        self.edgelb = Edgelb(self.tmp, "workers: 1\nlisteners:\n" + "\n".join(listeners) +
                             "\n")
        self.edgelb.prefix = lab.in_ns(lab.box)
        self.edgelb.start()
        _, hp, ip, hdp = self.targets["haproxy"]
        conf = haproxy_config(self.tmp, self.vip, {hp: (s, 8081), ip: (s, 5201),
                                                   hdp: (s, 9000)})
        self.haproxy = subprocess.Popen(lab.in_ns(lab.box, "haproxy", "-db", "-f",
                                                  str(conf)),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for path in PATHS:
            addr, hp, _, _ = self.targets[path]
            wait_for(lambda a=addr, p=hp: subprocess.run(  # type: ignore[misc]
                lab.in_ns(lab.client, "curl", "-s", "-m", "1", f"http://{a}:{p}/"),
                capture_output=True, text=True).stdout == "ok\n", 20, f"{path} serving")

    def pid(self, path: str) -> int | None:
        if path == "user" and self.edgelb is not None and self.edgelb.proc is not None:
            return self.edgelb.proc.pid
        if path == "haproxy" and self.haproxy is not None:
            return self.haproxy.pid
        return None

    def measure(self, path: str) -> None:
        r, lab, secs = self.results[path], self.lab, self.args.seconds
        # The box tracks every connection (edgelb's table needs conntrack), HAProxy's
        # too, and each path leaves ~100,000 entries in TIME_WAIT for two minutes: the
        # path measured last found the table full and its SYNs dropped (HAProxy: 1,000
        # new connections/s). Each path starts with the box's table empty.
        sh(*lab.in_ns(lab.box, "conntrack", "-F"))
        addr, hp, ip, hdp = self.targets[path]
        pid = self.pid(path)
        for streams in (1, 8):
            r[f"bulk_{streams}_gbps"] = round(iperf(lab, addr, ip, streams, secs), 2)
        busy0, cpu0, t0 = machine_busy(), cpu_seconds(pid) if pid else 0.0, time.monotonic()
        w = wrk(lab, f"http://{addr}:{hp}/", secs, 50)
        busy, took = machine_busy() - busy0, time.monotonic() - t0
        ticks = os.sysconf("SC_CLK_TCK")
        r["rps"], r["p99_ms"], r["wrk_errors"] = round(w["rps"]), w["p99_ms"], w["errors"]
        if w["requests"]:
            r["machine_us_per_req"] = round(busy / ticks / w["requests"] * 1e6, 2)
            if pid:
                r["process_us_per_req"] = round(
                    (cpu_seconds(pid) - cpu0) / w["requests"] * 1e6, 2)
        r["machine_cores_busy"] = round(busy / ticks / took, 2)
        r["new_conn_per_s"] = round(wrk(lab, f"http://{addr}:{hp}/", secs, 20, True)["rps"])
        if path != "direct" and self.args.idle:
            r["kib_per_10k_idle"] = round(self.idle(path, addr, hdp))
        self.log(f"{path}: {r}")

    def idle(self, path: str, addr: str, port: int) -> float:
        """KiB per 10,000 idle flows: conntrack entries for the kernel, RSS otherwise."""
        n: int = self.args.idle
        lab = self.lab
        time.sleep(1)
        pid = self.pid(path)
        before = rss_kib(pid) * 1024 if pid else conntrack_slab_bytes()
        holder = subprocess.Popen(lab.in_ns(lab.client, sys.executable, "-c", HOLDER, addr,
                                            str(port), str(n)),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "held":
                return 0.0
            time.sleep(1.5)
            after = rss_kib(pid) * 1024 if pid else conntrack_slab_bytes()
        finally:
            holder.communicate()
        time.sleep(1)
        return (after - before) / 1024 * 10000 / n

    def rules_in_force(self) -> dict[str, float]:
        """The edgelb of the box reloaded to --services kernel listeners; then single
        changes. Seconds from each Snapshot to its rules in force."""
        assert self.edgelb is not None
        n, s, vip2 = self.args.services, self.server, self.lab.vip(2)

        def config(changed: int) -> str:
            # Each change moves one Service to another backend: one chain and one map.
            return "workers: 1\nlisteners:\n" + "".join(
                f"  - {{name: s{i}, bind: '{vip2}:{20000 + i}', backends: "
                f"['{s}:{8082 + changed if i == changed else 8081}'], "
                "health: {type: none}}\n" for i in range(n))

        def rules() -> tuple[int, float]:
            dp = Client(self.edgelb.socket).get("/v1/status")["datapath"]  # type: ignore
            return int(dp["rules_changes"]), float(dp["rules_seconds"])

        out: dict[str, float] = {}
        times = []
        for k in range(-1, 20):
            before = rules()[0]
            self.edgelb.rewrite(config(k))
            self.edgelb.signal(signal.SIGHUP)
            wait_for(lambda b=before: rules()[0] > b, 120, "rules in force")  # type: ignore
            took = rules()[1]
            if k < 0:
                out["all_s"] = round(took, 3)
            else:
                times.append(took)
        times.sort()
        out["change_p50_ms"] = round(statistics.median(times) * 1000, 1)
        out["change_p99_ms"] = round(times[-1] * 1000, 1)
        return out

    def stop(self) -> None:
        if self.edgelb is not None:
            self.edgelb.stop()
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait()


def failover_stall(trials: int, advert_ms: int) -> list[tuple[float, float]]:
    """(the VIPs' takeover by the backup, the longest gap of a stream through the VIP)
    in seconds, when the master is cut off; VRRP adverts every ``advert_ms``."""
    from tests.integration import test_kernel_failover as fo
    from tests.netlab import Lan

    stalls = []
    for _ in range(trials):
        with tempfile.TemporaryDirectory(prefix="edgelb-bench-fo-") as t:
            lan = Lan(Path(t))
            boxes = []
            try:
                for name, addr in (("a", "10.77.0.1"), ("b", "10.77.0.2"), ("c", "10.77.0.10"),
                                   ("s", fo.SERVER)):
                    lan.host(name, addr)
                lan.procs.append(subprocess.Popen(lan_exec(lan, "s", sys.executable, "-c",
                                                           fo.STREAM)))
                boxes = [fo._box(lan, Path(t), "a", 200, f"{advert_ms}ms"),
                         fo._box(lan, Path(t), "b", 100, f"{advert_ms}ms")]
                a_ns = lan.hosts["a"]
                wait_for(lambda: f"inet {fo.VIP}/24" in sh("ip", "-n", a_ns, "addr", "show",  # noqa: B023
                                                           "eth0"), 10, "a master")
                time.sleep(1)
                client = subprocess.Popen(lan_exec(lan, "c", sys.executable, "-c",
                                                   fo.CLIENT), stdout=subprocess.PIPE,
                                          text=True)
                time.sleep(1.5)
                sh("ip", "-n", lan.lan, "link", "set", lan.port("a"), "down")
                cut, b_ns = time.monotonic(), lan.hosts["b"]
                while f"inet {fo.VIP}/24" not in sh("ip", "-n", b_ns, "addr", "show", "eth0"):
                    time.sleep(0.01)
                takeover = time.monotonic() - cut
                out, _ = client.communicate(timeout=90)
                r = json.loads(out)
                if r["error"] or not r["clean"]:
                    raise RuntimeError(f"the stream broke: {r}")
                stalls.append((takeover, r["gap"]))
            finally:
                for b in boxes:
                    b.stop()
                lan.close()
    return stalls


def lan_exec(lan: Any, host: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", lan.hosts[host], *cmd]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=8000)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--adverts", type=int, nargs="+", default=[100, 50],
                    help="VRRP advert intervals (ms) to fail over with")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: the kernel datapath needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("haproxy", "nginx", "iperf3", "wrk", "nft", "conntrack", "conntrackd"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make deb-deps)", file=sys.stderr)
            return 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="edgelb-bench-kernel-") as t:
        lab = Routed(Path(t))
        bench = Bench(lab, Path(t), args)
        try:
            bench.start()
            for path in PATHS:
                bench.measure(path)
            rules = bench.rules_in_force()
            bench.log(f"rules in force: {rules}")
        finally:
            bench.stop()
            lab.close()
    stalls = {a: failover_stall(args.failovers, a) for a in args.adverts} \
        if args.failovers else {}
    report(bench.results, rules, stalls, args)
    return 0


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def report(res: dict[str, dict[str, Any]], rules: dict[str, float],
           stalls: dict[int, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    k, u, h, d = res["kernel"], res["user"], res["haproxy"], res["direct"]
    for r in (k, u, h):
        if r.get("machine_us_per_req") and d.get("machine_us_per_req"):
            r["proxy_us_per_req"] = round(r["machine_us_per_req"] - d["machine_us_per_req"],
                                          2)
    rows = [("small requests, req/s (wrk -c50)", "rps"),
            ("p99 latency, ms", "p99_ms"),
            ("new connections/s (wrk -c20, close)", "new_conn_per_s"),
            ("bulk 1 stream, Gbit/s", "bulk_1_gbps"),
            ("bulk 8 streams, Gbit/s", "bulk_8_gbps"),
            ("machine CPU us per request (softirq included)", "machine_us_per_req"),
            ("... the proxy's share (less the direct route's)", "proxy_us_per_req"),
            ("KiB per 10,000 idle flows (conntrack / RSS)", "kib_per_10k_idle")]
    lines = ["| measure | direct route | edgelb kernel | edgelb user | HAProxy | "
             "kernel / HAProxy | kernel / user |", "|---|---|---|---|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {d.get(key, '-')} | {k.get(key)} | {u.get(key)} | "
                     f"{h.get(key)} | {_ratio(k.get(key), h.get(key))} | "
                     f"{_ratio(k.get(key), u.get(key))} |")
    lines.append("")
    lines.append(f"| {args.services} kernel services | figure |")
    lines.append("|---|---|")
    lines.append(f"| all rules in force (one transaction) | {rules.get('all_s')} s |")
    lines.append(f"| one Service changed: Snapshot to rules in force | p50 "
                 f"{rules.get('change_p50_ms')} ms, p99 {rules.get('change_p99_ms')} ms |")
    for advert, runs in stalls.items():
        lines.append(f"| failover, master cut off (adverts every {advert} ms): VIPs taken "
                     f"over by the backup ({len(runs)} trials) | "
                     f"{', '.join(f'{t * 1000:.0f} ms' for t, _ in runs)} |")
        lines.append(f"| ... longest stall of a stream through the VIP (no reset) | "
                     f"{', '.join(f'{g * 1000:.0f} ms' for _, g in runs)} |")
    table = "\n".join(lines)
    print(table)
    out = save_results("kernel", {"args": vars(args), "results": res, "rules": rules,
                                  "failover_stalls": stalls, "table": table})
    print(f"\nwritten to {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
