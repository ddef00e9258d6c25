"""Failover benchmark, as root in network namespaces: from cutting the master off the
bridge to the first request answered through the VIP from the client namespace. The same
failure, the same 100 ms advertisement interval, for an edgelb pair and a keepalived
pair (each box also running edgelb, standalone, to serve the VIP), in one run.

    python -m tests.bench.failover [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.l4 import save_results
from tests.helpers import wait_for
from tests.integration.test_ha_vrrp import Lab, sh


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
    out = save_results("failover", results)
    e, k = results["edgelb"], results["keepalived"]
    print(f"""
| pair (advert 100 ms, master cut off the bridge) | p50 | p99 | max |
|---|---|---|---|
| edgelb <-> edgelb | {e['p50_ms']:.0f} ms | {e['p99_ms']:.0f} ms | {e['max_ms']:.0f} ms |
| keepalived <-> keepalived | {k['p50_ms']:.0f} ms | {k['p99_ms']:.0f} ms | {k['max_ms']:.0f} ms |
""")
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
