"""Dual-stack Services end to end (issue 19): ``edgelb run`` against the simulated
cluster, whose nodes have IPv4 and IPv6 InternalIPs on this run's own loopback; curl -4
and curl -6 through the VIPs to the nodes' nodePorts, the status kubectl shows, Events,
and both addresses freed with the Service. (VRRP moving both families' VIPs is in
test_ha_vrrp.)"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.control.client import Client
from appliance.sim import objects as k8s
from appliance.sim.cluster import SimCluster

from .. import helpers
from ..helpers import EDGELB, Edgelb, free_port, wait_for
from ..netlab import sh

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or helpers._HOST_NETNS is None,
    reason="needs root in the run's own network namespace (adds IPv6 addresses to lo)")

NODES = {"n1": ["127.0.0.31", "fd00:e1b::31"], "n2": ["127.0.0.32", "fd00:e1b::32"],
         "n3": ["127.0.0.33"]}
POOLS = ["127.0.0.140-127.0.0.141", "fd00:e1b::140-fd00:e1b::141"]


@dataclass
class Dual:
    sim: SimCluster
    edgelb: Edgelb
    ingress_port: int


@pytest.fixture
def dual(tmp_path: Path) -> Iterator[Dual]:
    added = [a for ips in NODES.values() for a in ips[1:]] + \
        ["fd00:e1b::140", "fd00:e1b::141", "fd00:e1b::142"]
    ingress_port = free_port()
    for a in added:
        sh("ip", "addr", "add", f"{a}/128", "dev", "lo", "nodad")
    try:
        with SimCluster(str(tmp_path)) as sim:
            for name, ips in NODES.items():
                sim.add_node(name, ips)
            e = Edgelb(tmp_path, f"""\
cluster:
  kubeconfig: {sim.kubeconfig_path}
  address_pools: {json.dumps(POOLS)}
  ingress: {{http: ["127.0.0.142:{ingress_port}", "[fd00:e1b::142]:{ingress_port}"]}}
  tls_dir: {tmp_path}/tls
  debounce: 50ms
listeners: []
allow_no_listeners: true
""").start()
            try:
                yield Dual(sim, e, ingress_port)
            finally:
                e.stop()
    finally:
        for a in added:
            subprocess.run(["ip", "addr", "del", f"{a}/128", "dev", "lo"], capture_output=True)


def vips_of(sim: SimCluster, name: str, kind: str = "Service") -> list[str]:
    svc = sim.api.get(kind, name) or {}
    lb = (svc.get("status") or {}).get("loadBalancer") or {}
    return [i["ip"] for i in lb.get("ingress") or []]


def curl(family: str, vip: str, port: int, *args: str) -> str:
    host = f"[{vip}]" if ":" in vip else vip
    out = subprocess.run(["curl", "-s", family, "-m", "2", *args, f"http://{host}:{port}/"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def nodes_behind(family: str, vip: str, port: int, *args: str, n: int = 12) -> set[str]:
    return {line.split(" node ")[1].split(":")[0]
            for line in (curl(family, vip, port, *args) for _ in range(n)) if " node " in line}


def test_a_dual_stack_service_is_served_on_both_families(dual: Dual, tmp_path: Path) -> None:
    sim = dual.sim
    port = free_port()
    sim.add_service("web", [(port, 30480)], {"web-1": "n1", "web-2": "n2"},
                    families=["IPv6", "IPv4"], policy="RequireDualStack")
    wait_for(lambda: len(vips_of(sim, "web")) == 2, 10, "both VIPs in the status")
    # Status in the order of ipFamilies.
    v6, v4 = vips_of(sim, "web")
    assert (v6, v4) == ("fd00:e1b::140", "127.0.0.140")
    wait_for(lambda: nodes_behind("-4", v4, port) == {"n1", "n2", "n3"}, 10, "IPv4 VIP")
    # n3 has no IPv6 InternalIP: the IPv6 VIP forwards to n1 and n2 only, and says why.
    wait_for(lambda: nodes_behind("-6", v6, port) == {"n1", "n2"}, 10, "IPv6 VIP")
    detail = Client(dual.edgelb.socket).get(f"/v1/listeners/default/web:{port}/tcp6")
    assert detail["left_out"] == ["n3: no IPv6 InternalIP"]
    ctl = subprocess.run([*EDGELB, "ctl", "--socket", dual.edgelb.socket, "backends",
                          f"default/web:{port}/tcp6"], capture_output=True, text=True,
                         timeout=30)
    assert "left out: n3: no IPv6 InternalIP" in ctl.stdout, ctl.stdout + ctl.stderr
    out = subprocess.run(["kubectl", "--kubeconfig", sim.kubeconfig_path, "get", "svc", "web"],
                         capture_output=True, text=True, timeout=30,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert "fd00:e1b::140,127.0.0.140" in out.stdout, out.stdout + out.stderr

    # An Ingress is served on the ingress addresses of both families, each on the nodes
    # of its family.
    sim.add_service("site", [(80, 30484)], {"site-1": "n1", "site-2": "n3"}, kind="NodePort")
    sim.api.apply(k8s.ingress_class())
    sim.api.apply(k8s.ingress("site", [("site.test", "/", "Prefix", "site", 80)]))
    host = ("-H", "Host: site.test")
    wait_for(lambda: nodes_behind("-4", "127.0.0.142", dual.ingress_port, *host) ==
             {"n1", "n2", "n3"}, 10, "the Ingress over IPv4")
    wait_for(lambda: nodes_behind("-6", "fd00:e1b::142", dual.ingress_port, *host) ==
             {"n1", "n2"}, 10, "the Ingress over IPv6")
    wait_for(lambda: vips_of(sim, "site", "Ingress") == ["127.0.0.142", "fd00:e1b::142"], 10,
             "the Ingress's status")

    # Deleting the Service frees both addresses: the next Service gets them again.
    sim.api.remove("Service", "web")
    wait_for(lambda: curl("-4", v4, port) == "" and curl("-6", v6, port) == "", 10,
             "both VIPs stop answering")
    sim.add_service("next", [(port, 30481)], {"next-1": "n1"},
                    families=["IPv4", "IPv6"], policy="PreferDualStack")
    wait_for(lambda: vips_of(sim, "next") == [v4, v6], 10, "both addresses reused")


def test_require_dual_stack_without_an_ipv6_pool_gets_an_event_and_no_address(
        tmp_path: Path) -> None:
    with SimCluster(str(tmp_path)) as sim:
        sim.add_node("n1", ["127.0.0.31"])
        e = Edgelb(tmp_path, f"""\
cluster:
  kubeconfig: {sim.kubeconfig_path}
  address_pools: ["127.0.0.140-127.0.0.141"]
  tls_dir: {tmp_path}/tls
  debounce: 50ms
listeners: []
allow_no_listeners: true
""").start()
        try:
            sim.add_service("req", [(free_port(), 30482)], {"req-1": "n1"},
                            families=["IPv4", "IPv6"], policy="RequireDualStack")
            sim.add_service("pref", [(free_port(), 30483)], {"pref-1": "n1"},
                            families=["IPv4", "IPv6"], policy="PreferDualStack")
            wait_for(lambda: any(ev.get("reason") == "DualStackUnavailable"
                                 for ev in sim.api.list("Event")), 10, "the event")
            event = next(ev for ev in sim.api.list("Event")
                         if ev.get("reason") == "DualStackUnavailable")
            assert event["type"] == "Warning" and event["involvedObject"]["name"] == "req"
            assert "no address pool holds IPv6" in event["message"]
            wait_for(lambda: vips_of(sim, "pref") == ["127.0.0.140"], 10, "pref: IPv4 only")
            assert vips_of(sim, "req") == []
        finally:
            e.stop()
