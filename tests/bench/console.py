"""Console benchmark: the control API and `edgelb tui` with 10,000 and 50,000 live flows.

    python -m tests.bench.console [--flows 10000 50000] [--seconds 10]
                                  [--datapath user|kernel]

The daemon runs with 4 workers and a UDP listener; each flow is a real client address
(127.0.0.x and a port, bound explicitly) whose datagram made the workers open a flow
and an upstream socket to a discarding backend. Then, at each size:

1. The flows endpoint: 30 calls each of the page the console asks for (50 rows), the
   same sorted by bytes, and a 5,000-row page; p50/p99 milliseconds. Every call gathers
   every flow from every worker.
2. The console: `edgelb tui` in its own process (headless Textual, 100x40, the flows
   view, a refresh every second) for --seconds: mean and max time per refresh (request
   and drawing) and the console process's CPU.

With --datapath kernel (as root) the listener is served by nftables and the flows are
conntrack's entries, read once a second for every caller.

As root it runs in a network namespace of its own with the ephemeral port range widened
(each UDP flow's upstream socket takes a local port; the default range stops at ~28,000
flows per source address). HAProxy has no UDP flows and no equivalent console, so there
is no peer in this one; compare sizes within a run. Prints a markdown table and writes JSON to
tests/bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from appliance.control.client import Client
from tests.bench.l4 import save_results
from tests.helpers import EDGELB, ROOT, free_port, wait_for

CONSOLE = """
import asyncio, json, os, sys, time
from tui.app import Console

async def main(seconds):
    app = Console(socket=sys.argv[1], interval=1.0)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause(2)
        n0, s0, t0 = app.refreshes, app.refresh_seconds, os.times()
        worst, last = 0.0, (app.refreshes, app.refresh_seconds)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await pilot.pause(0.05)
            if app.refreshes != last[0]:
                worst = max(worst, (app.refresh_seconds - last[1]) / (app.refreshes - last[0]))
                last = (app.refreshes, app.refresh_seconds)
        t1 = os.times()
        n = app.refreshes - n0
        print(json.dumps({"refreshes": n, "mean_ms": 1000 * (app.refresh_seconds - s0) / n,
                          "max_ms": 1000 * worst,
                          "cpu_pct": 100 * ((t1.user - t0.user) + (t1.system - t0.system))
                          / seconds,
                          "rows": app.query_one("#flows-table").row_count,
                          "total": app.flow_total}))

asyncio.run(main(float(sys.argv[2])))
"""


def sink() -> tuple[socket.socket, int]:
    """A UDP backend that reads and drops everything."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))

    def drain() -> None:
        while True:
            try:
                s.recv(2048)
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    return s, s.getsockname()[1]


def open_flows(port: int, n: int, already: int) -> None:
    """Flows ``already`` .. ``n`` - 1: one datagram each from its own address."""
    for i in range(already, n):
        ip = f"127.0.1.{i // 25000 + 1}"  # not 127.0.0.1, where upstream sockets bind
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((ip, 20000 + i % 25000))
            s.sendto(b"x", ("127.0.0.1", port))
        finally:
            s.close()
        if i % 200 == 199:
            time.sleep(0.02)  # the listeners' receive buffers would overflow


def timed(fn: Any, n: int = 30) -> dict[str, float]:
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {"p50": round(statistics.median(ms), 1),
            "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1)}


NETNS = f"elb-bench-{os.getpid()}"


def in_own_namespace() -> int | None:
    """As root, run this benchmark again inside a network namespace of its own whose
    ephemeral port range is widened: every UDP flow holds an upstream socket with its
    own local port, and the default range (32768-60999) stops at ~28,000 flows per
    source address. Returns the exit status, or None to run here."""
    if os.geteuid() != 0 or os.environ.get("EDGELB_BENCH_NS"):
        return None
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", NETNS, "sysctl", "-qw",
                        "net.ipv4.ip_local_port_range=1024 65000"], check=True)
        return subprocess.run(["ip", "netns", "exec", NETNS, sys.executable, "-m",
                               "tests.bench.console", *sys.argv[1:]], cwd=ROOT,
                              env={**os.environ, "EDGELB_BENCH_NS": NETNS}).returncode
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def main() -> None:
    status = in_own_namespace()
    if status is not None:
        raise SystemExit(status)
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--datapath", choices=("user", "kernel"), default="user",
                    help="the UDP listener's datapath: user-space flows, or conntrack's")
    args = ap.parse_args()
    results: dict[str, Any] = {"flows": {}, "datapath": None}
    backend, bport = sink()
    port = free_port(socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory(prefix="elb-bench-") as tmp:
        sock = f"{tmp}/control.sock"
        cfg = Path(tmp) / "edgelb.yaml"
        cfg.write_text(f"""
workers: 4
listeners:
  - name: dns
    bind: 127.0.0.1:{port}
    protocol: udp
    backends: [127.0.0.1:{bport}]
    max_flows: 200000
    timeouts: {{idle: 1h}}
    datapath: {args.datapath}
""")
        log = open(Path(tmp) / "edgelb.log", "wb")
        daemon = subprocess.Popen([*EDGELB, "run", "-c", str(cfg)], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, "EDGELB_SOCKET": sock})
        try:
            wait_for(lambda: os.path.exists(sock), 20, "control socket")
            api = Client(sock, timeout=60)
            wait_for(lambda: api.get("/v1/status")["workers"] == 4, 20, "daemon")
            results["datapath"] = api.get("/v1/listeners")["listeners"][0]["datapath"]
            have = 0
            script = Path(tmp) / "console.py"
            script.write_text(CONSOLE)
            for n in sorted(args.flows):
                t = time.perf_counter()
                # A datagram the listeners' buffers dropped opened no flow: the next
                # pass sends again from every address (an open flow is only touched).
                for attempt in range(4):
                    open_flows(port, n, have)
                    try:
                        wait_for(lambda n=n: api.get("/v1/flows", limit=0)["all"] >= n, 20,
                                 f"{n} flows")
                        break
                    except AssertionError:
                        if attempt == 3:
                            raise SystemExit(f"only {api.get('/v1/flows', limit=0)['all']} "
                                             f"of {n} flows opened") from None
                have = n
                opened = time.perf_counter() - t
                page = timed(lambda: api.get("/v1/flows", limit=50))
                by_bytes = timed(lambda: api.get("/v1/flows", limit=50, sort="bytes",
                                                 desc=1))
                big = timed(lambda: api.get("/v1/flows", limit=5000), 10)
                r = subprocess.run([sys.executable, str(script), sock, str(args.seconds)],
                                   capture_output=True, text=True, cwd=ROOT,
                                   timeout=args.seconds + 120)
                if r.returncode:
                    raise SystemExit(r.stderr[-3000:])
                tui = json.loads(r.stdout.strip().splitlines()[-1])
                results["flows"][n] = {"open_s": round(opened, 1), "page50_ms": page,
                                       "page50_sorted_ms": by_bytes, "page5000_ms": big,
                                       "console": tui}
                print(n, results["flows"][n], file=sys.stderr)
        except BaseException:
            log.flush()
            print((Path(tmp) / "edgelb.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            daemon.terminate()
            daemon.wait(30)
            backend.close()
            log.close()
    out = save_results("console", results)
    print("| live flows | flows endpoint, 50 rows p50/p99 | sorted by bytes p50/p99 | "
          "5,000 rows p50/p99 | console refresh mean/max | console CPU |")
    print("|---|---|---|---|---|---|")
    for n, r in results["flows"].items():
        c = r["console"]
        print(f"| {n:,} | {r['page50_ms']['p50']}/{r['page50_ms']['p99']} ms | "
              f"{r['page50_sorted_ms']['p50']}/{r['page50_sorted_ms']['p99']} ms | "
              f"{r['page5000_ms']['p50']}/{r['page5000_ms']['p99']} ms | "
              f"{c['mean_ms']:.0f}/{c['max_ms']:.0f} ms | {c['cpu_pct']:.0f}% |")
    print(f"\n(written to {out})")


if __name__ == "__main__":
    main()
