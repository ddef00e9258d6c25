"""Cluster sync benchmark: the real daemon following the simulated API server.

    python -m tests.bench.cluster [--changes 200] [--nodes 1000 --services 5000
                                  --endpoints 50000]

1. Convergence: ``--changes`` times, create a LoadBalancer Service through the API and
   time until a request through its VIP is answered by a node; p50/p99.
2. Initial sync through the daemon: a cluster of --nodes/--services/--endpoints is in
   the API before edgelb starts; time from start to the first complete Snapshot in
   force, and the daemon's RSS then.
3. Idle: the daemon's CPU over 10 s of watching with no changes.
4. Translation alone at full scale (--full-*), in this process: the time of the pure
   step that turns the objects into listeners.

Prints a markdown table and writes JSON to tests/bench/results/.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.model import ClusterSpec
from appliance.sim import objects as k8s
from appliance.sim.apiserver import SimApiServer
from appliance.sim.cluster import SimCluster
from appliance.sim.scenario import generate
from appliance.sync.ipam import Ipam
from appliance.sync.translate import Cluster, key, translate
from tests.bench.l4 import cpu_seconds, rss_kib, save_results
from tests.helpers import Edgelb, free_port, wait_for


def populate(api: SimApiServer | None, cluster: Cluster | None, nodes: int, services: int,
             endpoints: int) -> None:
    """The generated scenario into the API server and/or a Cluster (for translation)."""
    for o in generate(nodes, services, endpoints):
        if api is not None:
            api.apply(o)
        if cluster is not None:
            table = {"Node": cluster.nodes, "Service": cluster.services,
                     "EndpointSlice": cluster.slices}[o["kind"]]
            table[key(o)] = o


def ask(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def convergence(tmp: Path, changes: int) -> dict[str, float]:
    with SimCluster(str(tmp / "conv")) as sim:
        sim.add_node("n1", "127.0.0.11")
        sim.add_service("seed", [(free_port(), 30999)], {"seed-1": "n1"})
        e = Edgelb(tmp / "conv", f"""\
cluster:
  kubeconfig: {sim.kubeconfig_path}
  address_pools: ["127.1.0.0/22"]
  tls_dir: {tmp}/conv/tls
  debounce: 20ms
listeners: []
""")
        e.start()
        try:
            wait_for(lambda: "status of Service default/seed" in e.logs(), 20, "first sync")
            times = []
            for i in range(changes):
                port = 20000 + i
                t0 = time.monotonic()
                sim.api.apply(k8s.service(f"c{i}", [(port, 30999)]))
                sim.set_pods(f"c{i}", {f"c{i}-pod": "n1"})
                vip = None
                deadline = t0 + 10
                while time.monotonic() < deadline:
                    svc = sim.api.get("Service", f"c{i}") or {}
                    lb = (svc.get("status") or {}).get("loadBalancer", {}).get("ingress")
                    vip = lb[0]["ip"] if lb else vip
                    if vip and ask(vip, port):
                        break
                    time.sleep(0.002)
                times.append(time.monotonic() - t0)
        finally:
            e.stop()
    times.sort()
    return {"changes": changes, "p50_ms": statistics.median(times) * 1000,
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
            "max_ms": times[-1] * 1000}


def initial_sync(tmp: Path, nodes: int, services: int, endpoints: int) -> dict[str, float]:
    d = tmp / "init"
    d.mkdir()
    with SimApiServer(tls_dir=str(d)) as api:
        t0 = time.monotonic()
        populate(api, None, nodes, services, endpoints)
        fill = time.monotonic() - t0
        kc = d / "kubeconfig"
        kc.write_text(api.kubeconfig())
        e = Edgelb(d, f"""\
cluster:
  kubeconfig: {kc}
  address_pools: ["127.2.0.0/16"]
  tls_dir: {d}/tls
listeners: []
""")
        t0 = time.monotonic()
        e.start()
        try:
            wait_for(lambda: f"{services} listeners from the cluster" in e.logs(), 600,
                     "the first complete snapshot")
            took = time.monotonic() - t0
            assert e.proc is not None
            rss = rss_kib(e.proc.pid)
            # Let the status writes (one per service) and their echoes settle first.
            # Polled once a second: listing 5,000 services deep-copies them under the
            # simulator's lock, which would slow the very writes being waited for.
            deadline = time.monotonic() + 600
            while not all((svc.get("status") or {}).get("loadBalancer", {}).get("ingress")
                          for svc in api.list("Service")):
                assert time.monotonic() < deadline, "every status written"
                time.sleep(1)
            status_done = time.monotonic() - t0
            time.sleep(1)
            c0 = cpu_seconds(e.proc.pid)
            time.sleep(10)
            idle = (cpu_seconds(e.proc.pid) - c0) / 10
        finally:
            e.stop()
    return {"nodes": nodes, "services": services, "endpoints": endpoints,
            "api_fill_s": fill, "first_snapshot_s": took, "rss_mib": rss / 1024,
            "all_status_s": status_done,
            "idle_cpu_percent": idle * 100}


def translate_only(nodes: int, services: int, endpoints: int) -> dict[str, float]:
    cluster = Cluster()
    populate(None, cluster, nodes, services, endpoints)
    spec = ClusterSpec(address_pools=("10.128.0.0/16",))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    t = translate(cluster, spec, Ipam(spec.address_pools))
    took = time.monotonic() - t0
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    backends = sum(len(lst.backends) for lst in t.listeners)
    return {"nodes": nodes, "services": services, "endpoints": endpoints,
            "translate_s": took, "peak_mib": grew / 1024, "backends": backends}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--full-nodes", type=int, default=1000)
    ap.add_argument("--full-services", type=int, default=5000)
    ap.add_argument("--full-endpoints", type=int, default=50000)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgelb-bench-cluster-") as t:
        tmp = Path(t)
        (tmp / "conv").mkdir()
        results["convergence"] = convergence(tmp, args.changes)
        print("convergence:", results["convergence"], file=sys.stderr)
        results["initial_sync"] = initial_sync(tmp, args.nodes, args.services, args.endpoints)
        print("initial sync:", results["initial_sync"], file=sys.stderr)
    results["translate_full"] = translate_only(args.full_nodes, args.full_services,
                                               args.full_endpoints)
    print("translate:", results["translate_full"], file=sys.stderr)
    out = save_results("cluster", results)
    c, i, f = results["convergence"], results["initial_sync"], results["translate_full"]
    print(f"""
| measure | figure | target |
|---|---|---|
| convergence, API write -> answered through the VIP ({c['changes']} changes) \
| p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms, max {c['max_ms']:.0f} ms \
| p99 < 1 s (aim 100 ms) |
| initial sync, {i['nodes']} nodes / {i['services']} services / {i['endpoints']} endpoints \
| {i['first_snapshot_s']:.1f} s to the first complete Snapshot, RSS {i['rss_mib']:.0f} MiB \
| < 10 s, < 1 GB (at 1000/5000/50000) |
| ... until all {i['services']} statuses are written | {i['all_status_s']:.1f} s | <= 30 s |
| idle CPU while watching | {i['idle_cpu_percent']:.2f} % of a core | near zero |
| translation alone, {f['nodes']} nodes / {f['services']} services / {f['endpoints']} \
endpoints | {f['translate_s']:.2f} s | |
""")
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
