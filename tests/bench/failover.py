"""Failover benchmark, as root in network namespaces, in one run:

- VRRP: from cutting the master off the bridge to the first request answered through
  the VIP from the client namespace. The same failure, the same 100 ms advertisement
  interval, for an edgelb pair and a keepalived pair (each box also running edgelb,
  standalone, to serve the VIP).
- BGP ECMP (two edgelb boxes behind an FRR router, BFD 3 x 100 ms): from a box's loss
  to the first of ten new connections in a row all answered through the other box,
  when the box's edgelb is killed (its BIRD goes with it) and when its link is cut
  (every packet dropped at both ends, so only BFD can tell); the split of 1,000 new
  connections over the two boxes; and the failed requests of a wrk load across a
  graceful stop (SIGTERM) of one box.

    python -m tests.bench.failover [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.l4 import save_results
from tests.helpers import Edgelb, wait_for
from tests.integration.test_bgp import _box, _served_by, graceful_stop_under_wrk
from tests.integration.test_ha_vrrp import Lab
from tests.netlab import Fabric, sh

# In the client namespace: on each line of stdin, new connections (50 ms to connect and
# answer) until ten in a row are answered through the box whose LAN address is given;
# prints the monotonic time of the first of those ten (the clock is the machine's, the
# same in every namespace).
THROUGH = r"""
import socket, sys, time
vip, port = sys.argv[1], int(sys.argv[2])
for want in sys.stdin:
    want = want.strip(); run = []; end = time.monotonic() + 20
    while len(run) < 10 and time.monotonic() < end:
        t = time.monotonic()
        try:
            s = socket.create_connection((vip, port), timeout=0.05); s.settimeout(0.05)
            s.sendall(b"who\n"); got = s.makefile("rb").readline().decode().split()
            s.close()
            run = run + [t] if len(got) == 2 and got[1] == want else []
        except OSError:
            run = []
    print(run[0] if len(run) == 10 else -1, flush=True)
"""


def trial(lab: Lab, master: str, other: str) -> float:
    port = f"v{master}{lab.tag}"[:15]
    wait_for(lambda: lab.curl("c") == master, 20, f"{master} serving")
    time.sleep(0.5)
    sh("ip", "-n", lab.lan, "link", "set", port, "down")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        # A short timeout: a request sent to the old master just times out, and the
        # next one goes out ~50 ms later (this is the resolution of the figure).
        if lab.curl("c", timeout=0.05) == other:
            break
    took = time.monotonic() - t0
    sh("ip", "-n", lab.lan, "link", "set", port, "up")
    return took


def run_pair(kind: str, trials: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="edgelb-bench-ha-") as t:
        lab = Lab(Path(t))
        try:
            lab.standard()
            boxes = []
            if kind == "edgelb":
                boxes = [lab.edgelb("a", 200, refresh="1s"), lab.edgelb("b", 100,
                                                                         refresh="1s")]
            else:
                lab.keepalived("a", 200)
                lab.keepalived("b", 100)
                boxes = [lab.edgelb("a", 0, vrrp=False), lab.edgelb("b", 0, vrrp=False)]
            try:
                return [trial(lab, "a", "b") for _ in range(trials)]
            finally:
                for b in boxes:
                    b.stop()
        finally:
            lab.close()


def run_bgp(trials: int) -> dict[str, Any]:
    """The BGP figures: a box killed, a link cut, the split, a graceful stop."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgelb-bench-bgp-") as t:
        f = Fabric(Path(t))
        try:
            s1 = f.server("s1", 8080)
            f.frr()
            a, b = _box(f, f.a, Path(t), [s1]), _box(f, f.b, Path(t), [s1])
            both = [f"10.{f.t}.4.2", f"10.{f.t}.5.2"]
            client = subprocess.Popen(f.in_ns(f.client, sys.executable, "-c", THROUGH,
                                              f.vip(), "80"), text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                wait_for(lambda: f.routes(f.vip()) == both, 30, "both routes")
                out["split_of_1000"] = dict(_served_by(f, f.ask(f.vip(), 80, 1000)))
                boxes = [(f.a, a, f.b), (f.b, b, f.a)]
                out["killed"] = summary([_bgp_trial(f, *boxes[i % 2], both, client, "kill")
                                         for i in range(trials)])
                # FRR holds a peer whose session BFD took down in Idle for twice as long
                # each time (1, 2, 4, 8 ... s): fewer trials, taking turns between boxes.
                cuts = min(trials, 10)
                out["link_cut"] = summary([_bgp_trial(f, *boxes[i % 2], both, client, "cut")
                                           for i in range(cuts)])
            finally:
                client.kill()
                client.communicate()
                a.stop()
                b.stop()
        finally:
            f.close()
    out["graceful"] = _graceful()
    return out


def _bgp_trial(f: Fabric, victim: str, box: Edgelb, survivor: str, both: list[str],
               client: subprocess.Popen[str], how: str) -> float:
    """Seconds from ``victim``'s loss (its edgelb killed, or its link cut) to the first of
    ten new connections in a row all answered through ``survivor``."""
    wait_for(lambda: f.routes(f.vip()) == both, 90, "both boxes back on the router")
    time.sleep(0.5)
    assert client.stdin is not None and client.stdout is not None
    t0 = time.monotonic()
    if how == "kill":
        assert box.proc is not None
        box.proc.send_signal(signal.SIGKILL)
    else:
        f.cut(victim)
    client.stdin.write(f.lan_address(survivor) + "\n")
    client.stdin.flush()
    first = float(client.stdout.readline())
    if how == "kill":
        assert box.proc is not None
        box.proc.wait()
        box.start()
    else:
        f.mend(victim)
    if first < 0:
        raise RuntimeError(f"{how}: new connections never all reached {survivor}")
    return first - t0


def _graceful() -> dict[str, Any]:
    """wrk (a new connection per request) across a SIGTERM of one box."""
    with tempfile.TemporaryDirectory(prefix="edgelb-bench-bgp-") as t:
        f = Fabric(Path(t))
        try:
            text, _ = graceful_stop_under_wrk(f, Path(t))
        finally:
            f.close()
    requests = int(text.split(" requests in ")[0].split()[-1])
    failed = 0
    for line in text.splitlines():
        if "Non-2xx" in line:
            failed += int(line.split(":")[1])
        if "Socket errors" in line:
            failed += sum(int(x.split()[1]) for x in line.split(":", 1)[1].split(","))
    return {"requests": requests, "failed": failed}


def summary(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    return {"p50_ms": statistics.median(s) * 1000,
            "p99_ms": s[min(len(s) - 1, int(len(s) * 0.99))] * 1000,
            "max_ms": s[-1] * 1000, "trials": len(s)}


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for kind in ("edgelb", "keepalived"):
        results[kind] = summary(run_pair(kind, args.trials))
        print(kind, results[kind], file=sys.stderr)
    results["bgp"] = run_bgp(args.trials)
    print("bgp", results["bgp"], file=sys.stderr)
    out = save_results("failover", results)
    e, k = results["edgelb"], results["keepalived"]
    kill, cut = results["bgp"]["killed"], results["bgp"]["link_cut"]
    g, split = results["bgp"]["graceful"], results["bgp"]["split_of_1000"]
    rows = [("BGP ECMP + BFD 3 x 100 ms: a box's edgelb killed (its BIRD with it)", kill),
            ("BGP ECMP + BFD 3 x 100 ms: a box's link cut (only BFD can tell)", cut),
            ("VRRP 100 ms adverts, edgelb <-> edgelb: master cut off the bridge", e),
            ("VRRP 100 ms adverts, keepalived <-> keepalived: the same", k)]
    print("\n| failure | p50 | p99 | max |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['max_ms']:.0f} ms |")
    print(f"\nBGP: 1,000 new connections split {split.get('a', 0)}/{split.get('b', 0)} over the "
          f"two boxes; a graceful stop of one box under wrk: {g['failed']} failed of "
          f"{g['requests']} requests.\n")
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
