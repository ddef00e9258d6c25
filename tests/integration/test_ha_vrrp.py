"""VRRP for real, as root, in network namespaces this test creates and removes: boxes on
a bridge, a client; edgelb against edgelb and against Debian's keepalived."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.control.client import Client
from appliance.sim.cluster import SimCluster

from ..helpers import EDGELB, Edgelb, wait_for
from ..netlab import Lan, inside, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for network namespaces")

VIP = "10.77.0.100"
BACKEND = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode() + b"\\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", 9000), H).serve_forever()
"""


class Lab(Lan):
    """The LAN (10.77.0.0/24) with VRRP boxes, their backends and a client."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.backends: dict[str, subprocess.Popen[bytes]] = {}

    def backend(self, name: str) -> subprocess.Popen[bytes]:
        """An HTTP server on 127.0.0.1:9000 in ``name``'s namespace saying ``name``."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[name], sys.executable, "-c", BACKEND, name])
        self.procs.append(proc)
        self.backends[name] = proc
        return proc

    def edgelb(self, name: str, priority: int, preempt_delay: str = "0s",
               vrrp: bool = True, refresh: str = "10s", track: bool = False,
               peers: tuple[str, ...] = ()) -> Edgelb:
        d = self.tmp / (name if vrrp else f"{name}-standalone")
        d.mkdir(exist_ok=True)
        ha = f"""\
ha:
  mode: vrrp
  interface: eth0
  vrid: 77
  priority: {priority}
  advert_interval: 100ms
  preempt_delay: {preempt_delay}
  vips: ["{VIP}/24"]
  garp: {{refresh: {refresh}}}
""" + ("  track: {listeners: [web], weight: 150}\n" if track else "") + (
            f"  unicast_peers: [{', '.join(peers)}]\n" if peers else "") if vrrp else ""
        e = Edgelb(d, ha + f"""\
listeners:
  - name: web
    bind: {VIP}:80
    protocol: http
    backends: [127.0.0.1:9000]
    health: {{interval: 200ms, timeout: 200ms, fall: 2, rise: 1}}
""")
        e.prefix = ["ip", "netns", "exec", self.hosts[name]]
        return e.start()

    def keepalived(self, name: str, priority: int) -> subprocess.Popen[bytes]:
        conf = self.tmp / f"keepalived-{name}.conf"
        conf.write_text(f"""
global_defs {{ vrrp_version 3
  script_user root
  enable_script_security }}
vrrp_instance edge {{
  state BACKUP
  interface eth0
  virtual_router_id 77
  priority {priority}
  advert_int 0.1
  virtual_ipaddress {{ {VIP}/24 dev eth0 }}
}}
""")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[name], "keepalived", "-n", "-l", "-D",
             "-f", str(conf), "-p", str(self.tmp / f"k-{name}.pid"),
             "-r", str(self.tmp / f"k-{name}-vrrp.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def has_vip(self, name: str) -> bool:
        return f"inet {VIP}/24" in sh("ip", "-n", self.hosts[name], "addr", "show", "eth0")

    def mac(self, name: str) -> str:
        out = sh("ip", "-n", self.hosts[name], "link", "show", "eth0")
        return re.search(r"link/ether ([0-9a-f:]+)", out).group(1)  # type: ignore[union-attr]

    def curl(self, client: str, timeout: float = 0.5) -> str:
        out = subprocess.run(["ip", "netns", "exec", self.hosts[client], "curl", "-s",
                              "-m", str(timeout), f"http://{VIP}/"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip()

    def neigh(self, client: str) -> str:
        return sh("ip", "-n", self.hosts[client], "neigh", "show", VIP)

    def standard(self) -> Lab:
        """Boxes a (10.77.0.1) and b (.2), each with its backend, and a client c (.10)."""
        self.host("a", "10.77.0.1")
        self.host("b", "10.77.0.2")
        self.host("c", "10.77.0.10")
        self.backend("a")
        self.backend("b")
        return self


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab.standard()
    finally:
        lab.close()


def test_edgelb_pair_elects_fails_over_and_preempts(lab: Lab) -> None:
    a = lab.edgelb("a", 200)
    b = lab.edgelb("b", 100)
    try:
        wait_for(lambda: lab.curl("c") == "a", 10, "a serves the VIP")
        assert lab.has_vip("a") and not lab.has_vip("b")
        assert lab.mac("a") in lab.neigh("c")
        # kill -9 the master: b takes over, and its gratuitous ARP moves the client.
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait()
        t0 = time.monotonic()
        wait_for(lambda: lab.curl("c") == "b", 10, "b serves the VIP")
        took = time.monotonic() - t0
        assert lab.mac("b") in lab.neigh("c")
        assert "VRRP master" in b.logs() and took < 3
        # a comes back with the higher priority and preempts; b gives the VIP up.
        a.start()
        wait_for(lambda: lab.curl("c") == "a", 10, "a preempts")
        wait_for(lambda: not lab.has_vip("b"), 5, "b released the VIP")
        # SIGTERM: priority 0, b takes over within its skew time.
        a.stop()
        wait_for(lambda: lab.curl("c") == "b", 5, "b after a clean stop")
        assert not lab.has_vip("a")
    finally:
        a.stop()
        b.stop()


def test_operator_failover_demote_promote_auto_with_events(lab: Lab) -> None:
    a = lab.edgelb("a", 200)
    b = lab.edgelb("b", 100)
    ca, cb = Client(a.socket), Client(b.socket)
    try:
        wait_for(lambda: lab.curl("c") == "a", 10, "a serves the VIP")
        wait_for(lambda: bool(cb.get("/v1/status")["ha"]["peers"]), 5, "b hears a")
        st = cb.get("/v1/status")["ha"]
        assert st["routers"][0]["state"] == "backup"
        assert st["peers"][0]["address"] == "10.77.0.1" and st["peers"][0]["priority"] == 200
        # failover on the master: it steps down and stays down (a has the higher
        # priority and would preempt at once otherwise).
        assert ca.act("failover")["result"].startswith("demoted")
        wait_for(lambda: lab.curl("c") == "b", 5, "b serves the VIP after the failover")
        time.sleep(1)
        assert lab.curl("c") == "b" and not lab.has_vip("a")
        st = ca.get("/v1/status")
        assert st["ha"]["override"] == "demote" and st["ha"]["routers"][0]["priority"] == 1
        assert any("operator" in x for x in st["alerts"])
        # auto: a's configured 200 preempts again.
        ca.act("auto")
        wait_for(lambda: lab.curl("c") == "a", 5, "a preempts after auto")
        # promote the backup: b takes the VIPs now and keeps them.
        assert cb.act("promote")["result"].startswith("promoted")
        wait_for(lambda: lab.curl("c") == "b", 5, "b after promote")
        time.sleep(1)
        assert lab.curl("c") == "b"
        r = subprocess.run([*EDGELB, "ctl", "events"], capture_output=True, text=True,
                           env={**os.environ, "EDGELB_SOCKET": b.socket})
        assert "operator root (admin): promote" in r.stdout
        assert "IPv4 VRRP master" in r.stdout
        cb.act("auto")
        wait_for(lambda: lab.curl("c") == "a", 5, "a preempts after b's auto")
    finally:
        a.stop()
        b.stop()


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived not installed")
def test_edgelb_and_keepalived_elect_by_priority_both_ways(lab: Lab) -> None:
    keep = lab.keepalived("b", 150)
    # On b, keepalived owns the VIP and a standalone edgelb serves it (bound freely).
    b = lab.edgelb("b", 0, vrrp=False)
    a = lab.edgelb("a", 200)
    try:
        wait_for(lambda: lab.curl("c") == "a" and not lab.has_vip("b"), 10,
                 "edgelb (200) is master over keepalived (150)")
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait()
        wait_for(lambda: lab.has_vip("b"), 5, "keepalived takes the VIP")
        wait_for(lambda: lab.curl("c") == "b", 5, "the client follows to keepalived's box")
        # edgelb back with a lower priority: keepalived stays master, edgelb is backup.
        a2 = Edgelb(a.path.parent, a.path.read_text().replace("priority: 200",
                                                                "priority: 100"))
        a2.prefix = a.prefix
        a2.start()
        try:
            time.sleep(1)
            assert lab.has_vip("b") and not lab.has_vip("a")
            assert "VRRP backup" in a2.logs()
            # keepalived stops: edgelb (100) takes over.
            keep.terminate()
            keep.wait(10)
            wait_for(lambda: lab.curl("c") == "a", 10, "edgelb takes over from keepalived")
        finally:
            a2.stop()
    finally:
        a.stop()
        b.stop()



@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_split_brain_heals_to_one_master_and_promotion_is_announced(lab: Lab) -> None:
    a = lab.edgelb("a", 200, refresh="1s")
    b = lab.edgelb("b", 100, refresh="1s")
    cap = lab.tmp / "garp.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", lab.hosts["c"], "tcpdump", "-i", "eth0",
                             "-n", "-U", "-w", str(cap), "arp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(dump)
    try:
        wait_for(lambda: lab.has_vip("a") and not lab.has_vip("b"), 10, "a is master")
        time.sleep(1)  # past b's start-up (it may claim the VIP before it first hears a)
        assert lab.has_vip("a") and not lab.has_vip("b")
        # Cut a off the bridge: b hears nothing and becomes master too (split brain).
        port_a = f"va{lab.tag}"[:15]
        sh("ip", "-n", lab.lan, "link", "set", port_a, "down")
        wait_for(lambda: lab.has_vip("b"), 5, "b master while cut off")
        assert lab.has_vip("a")  # both: documented split-brain behaviour
        wait_for(lambda: lab.curl("c") == "b", 5, "the client reaches b")
        # Restore the link: a (higher priority) stays master, b steps back.
        sh("ip", "-n", lab.lan, "link", "set", port_a, "up")
        wait_for(lambda: not lab.has_vip("b"), 5, "b steps back")
        assert lab.has_vip("a")
        wait_for(lambda: lab.curl("c") == "a", 5, "the client is back on a")
        time.sleep(0.5)
        dump.terminate()
        dump.wait(5)
        out = subprocess.run(["tcpdump", "-n", "-r", str(cap)], capture_output=True,
                             text=True, timeout=10).stdout
        # Gratuitous ARP: a request for the VIP from the VIP, from each new master.
        garps = [ln for ln in out.splitlines() if f"who-has {VIP} tell {VIP}" in ln]
        assert len(garps) >= 3, out
    finally:
        a.stop()
        b.stop()


def test_tracking_hands_the_vip_over_when_the_backends_fail(lab: Lab) -> None:
    a = lab.edgelb("a", 200, track=True)
    b = lab.edgelb("b", 100)
    try:
        wait_for(lambda: lab.curl("c") == "a", 10, "a serves the VIP")
        # a's only backend dies: its priority drops 200 -> 50 and b (100) preempts.
        lab.backends["a"].kill()
        lab.backends["a"].wait()
        wait_for(lambda: lab.curl("c") == "b", 10, "b takes over")
        assert "no healthy backend" in a.logs()
        # The backend is back: a's priority returns to 200 and it preempts again.
        lab.backend("a")
        wait_for(lambda: lab.curl("c") == "a", 10, "a takes the VIP back")
        assert "tracked conditions recovered" in a.logs()
    finally:
        a.stop()
        b.stop()


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_unicast_peers_without_multicast(lab: Lab) -> None:
    a = lab.edgelb("a", 200, peers=("10.77.0.2",))
    b = lab.edgelb("b", 100, peers=("10.77.0.1",))
    try:
        wait_for(lambda: lab.curl("c") == "a" and not lab.has_vip("b"), 10, "a master")
        # The client, on the same bridge, sees no VRRP to the multicast group ...
        cap = subprocess.run(["ip", "netns", "exec", lab.hosts["c"], "timeout", "1",
                              "tcpdump", "-i", "eth0", "-n", "-c", "3", "proto", "112"],
                             capture_output=True, text=True, timeout=10)
        assert "224.0.0.18" not in cap.stdout, cap.stdout
        # ... and b still hears a (unicast), so it stays backup.
        assert not lab.has_vip("b")
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait()
        wait_for(lambda: lab.curl("c") == "b", 10, "b takes over")
    finally:
        a.stop()
        b.stop()


VIP6 = "fd77::100"


def ipv6(lab: Lab, name: str, addr: str) -> None:
    ns = lab.hosts[name]
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
    sh("ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
    wait_for(lambda: "fe80::" in sh("ip", "-n", ns, "-6", "addr", "show", "eth0")
             and "tentative" not in sh("ip", "-n", ns, "-6", "addr", "show", "eth0"),
             10, f"{name}'s link-local address")


def edgelb6(lab: Lab, name: str, priority: int) -> Edgelb:
    d = lab.tmp / f"{name}-v6"
    d.mkdir(exist_ok=True)
    e = Edgelb(d, f"""\
ha:
  mode: vrrp
  interface: eth0
  vrid: 78
  priority: {priority}
  advert_interval: 100ms
  vips: ["{VIP6}/64"]
listeners:
  - name: web6
    bind: "[{VIP6}]:80"
    protocol: http
    backends: [127.0.0.1:9000]
""")
    e.prefix = ["ip", "netns", "exec", lab.hosts[name]]
    return e.start()


def test_ipv6_vips_fail_over_and_neighbours_follow(lab: Lab) -> None:
    for name, addr in (("a", "fd77::1"), ("b", "fd77::2"), ("c", "fd77::10")):
        ipv6(lab, name, addr)

    def curl6() -> str:
        out = subprocess.run(["ip", "netns", "exec", lab.hosts["c"], "curl", "-s", "-m",
                              "0.5", f"http://[{VIP6}]/"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip()

    def has(name: str) -> bool:
        return f"inet6 {VIP6}/64" in sh("ip", "-n", lab.hosts[name], "-6", "addr", "show",
                                        "eth0")

    a = edgelb6(lab, "a", 200)
    b = edgelb6(lab, "b", 100)
    try:
        wait_for(lambda: curl6() == "a" and not has("b"), 10, "a serves the IPv6 VIP")
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait()
        wait_for(lambda: curl6() == "b", 10, "b serves the IPv6 VIP")
        # The unsolicited neighbour advertisement moved the client's entry to b.
        assert lab.mac("b") in sh("ip", "-n", lab.hosts["c"], "-6", "neigh", "show", VIP6)
    finally:
        a.stop()
        b.stop()


def test_the_cluster_s_dual_stack_vips_fail_over_with_both_routers(lab: Lab) -> None:
    """A dual-stack Service of a cluster on the LAN: both boxes follow it, the master
    carries its two VIPs, and a failover moves both, the client's ARP and neighbour
    entries with them (issue 19)."""
    k = lab.host("k", "10.77.0.20")
    for name, addr in (("a", "fd77::1"), ("b", "fd77::2"), ("c", "fd77::10"),
                       ("k", "fd77::20")):
        ipv6(lab, name, addr)
    for addr in ("10.77.0.21/24", "fd77::21/64"):
        sh("ip", "-n", k, "addr", "add", addr, "dev", "eth0", "nodad")
    for box in ("a", "b"):
        sh("ip", "netns", "exec", lab.hosts[box], "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
    with inside(k):
        sim = SimCluster(str(lab.tmp), host="10.77.0.20").start()
    try:
        sim.add_node("n1", ["10.77.0.21", "fd77::21"])
        sim.add_service("web", [(80, 30080)], {"web-1": "n1"},
                        families=["IPv4", "IPv6"], policy="RequireDualStack")

        def box(name: str, priority: int) -> Edgelb:
            d = lab.tmp / f"{name}-cluster"
            d.mkdir()
            e = Edgelb(d, f"""\
ha:
  mode: vrrp
  interface: eth0
  vrid: 79
  priority: {priority}
  advert_interval: 100ms
  vips: ["{VIP}/24", "{VIP6}/64"]
cluster:
  kubeconfig: {sim.kubeconfig_path}
  address_pools: ["10.77.0.150-10.77.0.152", "fd77::150-fd77::152"]
  tls_dir: {d}/tls
  debounce: 50ms
listeners: []
allow_no_listeners: true
""")
            e.prefix = ["ip", "netns", "exec", lab.hosts[name]]
            return e.start()

        def curl(url: str) -> str:
            out = subprocess.run(["ip", "netns", "exec", lab.hosts["c"], "curl", "-s", "-m",
                                  "0.5", url], capture_output=True, text=True, timeout=10)
            return out.stdout.strip()

        def neigh(addr: str) -> str:
            return sh("ip", "-n", lab.hosts["c"], "neigh", "show", addr)

        a = box("a", 200)
        b = box("b", 100)
        try:
            wait_for(lambda: len(vips_of(sim, "web")) == 2, 20, "both VIPs in the status")
            v4, v6 = vips_of(sim, "web")
            assert (v4, v6) == ("10.77.0.150", "fd77::150")
            for url in (f"http://{v4}/", f"http://[{v6}]/"):
                wait_for(lambda u=url: "node n1" in curl(u), 15, f"{url} through a")
            assert lab.mac("a") in neigh(v4) and lab.mac("a") in neigh(v6)
            assert f"{v6}/128" not in sh("ip", "-n", lab.hosts["b"], "addr", "show", "eth0")
            # Box a dies: its process and its link (the kernel's forwarding rules that
            # a killed daemon leaves would otherwise go on serving).
            assert a.proc is not None
            a.proc.kill()
            a.proc.wait()
            sh("ip", "-n", lab.lan, "link", "set", lab.port("a"), "down")
            for url in (f"http://{v4}/", f"http://[{v6}]/"):
                wait_for(lambda u=url: "node n1" in curl(u), 15, f"{url} through b")
            # The announcements moved the client's entries for both families to b.
            assert lab.mac("b") in neigh(v4) and lab.mac("b") in neigh(v6)
            ha = Client(b.socket).get("/v1/status")["ha"]
            assert {tuple(r["learned"]) for r in ha["routers"]} == {(v4,), (v6,)}
        finally:
            a.stop()
            b.stop()
    finally:
        sim.stop()


def vips_of(sim: SimCluster, name: str) -> list[str]:
    svc = sim.api.get("Service", name) or {}
    lb = (svc.get("status") or {}).get("loadBalancer") or {}
    return [i["ip"] for i in lb.get("ingress") or []]
