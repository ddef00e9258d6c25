"""Network namespaces for tests and benchmarks that need traffic to cross a real box,
each test's own (named with the test's pid and a counter) and removed afterwards.

``Lan``: a bridge in its own namespace and a namespace per host on it (10.77.0.0/24).

``Routed``: a client namespace, the box, and a servers namespace:

    client 10.T.1.2/24 ── box 10.T.1.1 | 10.T.2.1 ── servers 10.T.2.2/24 ...
           fd0T:1::2/64       fd0T:1::1 | fd0T:2::1          fd0T:2::2/64 ...

The box forwards (ip_forward), counts flows (nf_conntrack_acct) and timestamps them; the
VIPs live on its loopback (``vip``). Servers listen in the servers namespace, one address
each, and answer with their name and the address they saw the client come from."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SEQ = itertools.count(1)

# A server: TCP or UDP on ADDR:PORT, answering each line (datagram) with
# "NAME CLIENT-ADDRESS" (and echoing bytes after a first line when ECHO).
SERVER = r"""
import socket, sys, threading
addr, port, name, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
if proto == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(f"{name} {peer[0]}\n".encode(), peer)
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(4096)
def serve(c, peer):
    with c:
        f = c.makefile("rb")
        for line in f:
            if line.startswith(b"echo"):
                c.sendall(line)
            else:
                c.sendall(f"{name} {peer[0]}\n".encode())
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""

# A client: asks ADDR:PORT once per source address given (TCP connect or UDP datagram),
# prints a JSON list of answers ("" for none).
CLIENT = r"""
import json, socket, sys
addr, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sources = json.loads(sys.argv[4]); count = int(sys.argv[5])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
out = []
for i in range(count):
    src = sources[i % len(sources)] if sources else None
    try:
        if proto == "udp":
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
            if src: s.bind((src, 0))
            s.sendto(b"who\n", (addr, port)); out.append(s.recv(200).decode().strip())
        else:
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
            if src: s.bind((src, 0))
            s.connect((addr, port)); s.sendall(b"who\n")
            out.append(s.makefile("rb").readline().decode().strip())
        s.close()
    except OSError as e:
        out.append("")
print(json.dumps(out))
"""


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def _veth(t: int, a: str, an: str, b: str, bn: str) -> None:
    """A veth pair: ``an`` in namespace ``a``, ``bn`` in ``b`` (made under names unique
    to the lab ``t``, then renamed inside each namespace)."""
    sh("ip", "link", "add", f"{an}x{t}", "netns", a, "type", "veth", "peer", "name",
       f"{bn}x{t}", "netns", b)
    sh("ip", "-n", a, "link", "set", f"{an}x{t}", "name", an)
    sh("ip", "-n", b, "link", "set", f"{bn}x{t}", "name", bn)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


CLONE_NEWNET = 0x40000000


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in network namespace ``ns`` for the block: the sockets it makes and
    the threads it starts there stay in ``ns`` (an in-process simulated cluster whose
    API server and nodes live on a test's LAN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            yield
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)


class Lan:
    """A bridge in its own namespace and a namespace per host, 10.77.0.0/24; ``close``
    stops what was started and removes them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = f"{os.getpid() % 10000}-{next(_SEQ)}"
        self.lan = f"elb-lan-{self.tag}"
        self.hosts: dict[str, str] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        sh("ip", "netns", "add", self.lan)
        sh("ip", "-n", self.lan, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.lan, "link", "set", "br0", "up")

    def host(self, name: str, addr: str) -> str:
        """A namespace on the bridge, ``eth0`` at ``addr``/24."""
        ns = f"elb-{name}-{self.tag}"
        sh("ip", "netns", "add", ns)
        port = f"v{name}{self.tag}"[:15]
        sh("ip", "-n", self.lan, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", self.lan, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.hosts[name] = ns
        return ns

    def port(self, name: str) -> str:
        """The bridge port of host ``name`` (set it down to cut the host off)."""
        return f"v{name}{self.tag}"[:15]

    def close(self) -> None:
        _stop(self.procs)
        for ns in [*self.hosts.values(), self.lan]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Routed:
    """The three namespaces; ``close`` stops what was started and removes them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        n = next(_SEQ)
        self.t = (os.getpid() + n) % 200 + 20  # the second octet: 10.T.x.y
        tag = f"{os.getpid() % 10000}-{n}"
        self.client, self.box, self.servers = (f"elbk-{x}-{tag}" for x in "cbs")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.next_server = 2
        for ns in (self.client, self.box, self.servers):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        _veth(self.t, self.client, "c0", self.box, "b0")
        _veth(self.t, self.servers, "s0", self.box, "b1")
        t = self.t
        self._addr(self.client, "c0", f"10.{t}.1.2/24", f"fd{t:02x}:1::2/64")
        self._addr(self.box, "b0", f"10.{t}.1.1/24", f"fd{t:02x}:1::1/64")
        self._addr(self.box, "b1", f"10.{t}.2.1/24", f"fd{t:02x}:2::1/64")
        self._addr(self.servers, "s0", f"10.{t}.2.2/24", f"fd{t:02x}:2::2/64")
        sh("ip", "-n", self.client, "route", "add", "default", "via", f"10.{t}.1.1")
        sh("ip", "-n", self.client, "-6", "route", "add", "default", "via", f"fd{t:02x}:1::1")
        sh("ip", "-n", self.servers, "route", "add", "default", "via", f"10.{t}.2.1")
        sh("ip", "-n", self.servers, "-6", "route", "add", "default", "via",
           f"fd{t:02x}:2::1")
        sh("ip", "netns", "exec", self.box, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1", "net.netfilter.nf_conntrack_acct=1",
           "net.netfilter.nf_conntrack_timestamp=1")

    def _addr(self, ns: str, dev: str, *addrs: str) -> None:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0")
        for a in addrs:
            sh("ip", "-n", ns, "addr", "add", a, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")

    # -- addresses -----------------------------------------------------------------------

    def vip(self, n: int = 1, family: int = 4) -> str:
        """A VIP on the box's loopback."""
        addr = f"10.{self.t}.9.{n}" if family == 4 else f"fd{self.t:02x}:9::{n}"
        sh("ip", "-n", self.box, "addr", "add", f"{addr}/{32 if family == 4 else 128}",
           "dev", "lo")
        return addr

    def client_sources(self, n: int) -> list[str]:
        """``n`` more client addresses (10.T.3.0/22 on the client's interface, routed
        through the box), to stand for many clients."""
        t = self.t
        lines = [f"addr add 10.{t}.{3 + i // 250}.{i % 250 + 1}/32 dev c0" for i in range(n)]
        batch = self.tmp / f"addrs-{self.client}"
        batch.write_text("\n".join(lines) + "\n")
        sh("ip", "-n", self.client, "-batch", str(batch))
        sh("ip", "-n", self.box, "route", "add", f"10.{t}.0.0/16", "via", f"10.{t}.1.2",
           check=False)
        return [f"10.{t}.{3 + i // 250}.{i % 250 + 1}" for i in range(n)]

    # -- servers and clients ---------------------------------------------------------------

    def server(self, name: str, port: int, proto: str = "tcp", family: int = 4,
               addr: str | None = None) -> tuple[str, subprocess.Popen[bytes]]:
        """A server named ``name`` on a new address of the servers namespace (or
        ``addr``); (its address, its process)."""
        if addr is None:
            k = self.next_server
            self.next_server += 1
            addr = f"10.{self.t}.2.{k}" if family == 4 else f"fd{self.t:02x}:2::{k}"
            if k > 2:
                sh("ip", "-n", self.servers, "addr", "add",
                   f"{addr}/{32 if family == 4 else 128}", "dev", "s0")
        proc = subprocess.Popen(["ip", "netns", "exec", self.servers, sys.executable, "-c",
                                 SERVER, addr, str(port), name, proto])
        self.procs.append(proc)
        return addr, proc

    def ask(self, addr: str, port: int, count: int = 1, proto: str = "tcp",
            sources: list[str] | None = None) -> list[str]:
        """``count`` answers from ``addr:port`` seen from the client namespace: each
        "NAME CLIENT-ADDRESS-SEEN", or "" where no answer came."""
        r = subprocess.run(["ip", "netns", "exec", self.client, sys.executable, "-c",
                            CLIENT, addr, str(port), proto, json.dumps(sources or []),
                            str(count)], capture_output=True, text=True, timeout=300)
        answers: list[str] = json.loads(r.stdout)
        return answers

    def in_ns(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def close(self) -> None:
        _stop(self.procs)
        for ns in (self.client, self.box, self.servers):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


FRR = "/usr/lib/frr"


class Fabric:
    """Two edge boxes behind a router, for BGP ECMP:

        client 10.T.1.2 ── router 10.T.1.1
                           router 10.T.4.1 ── a 10.T.4.2 | 10.T.2.11 ─┐
                           router 10.T.5.1 ── b 10.T.5.2 | 10.T.2.12 ─┴─ servers 10.T.2.2..

    The servers sit on a bridge both boxes reach. The router forwards with L4 multipath
    hashing (``fib_multipath_hash_policy=1``); ``frr`` or ``bird`` runs on it, peering
    with AS 64512 on both boxes, BFD 3 x 100 ms."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        n = next(_SEQ)
        self.t = (os.getpid() + n) % 200 + 20
        tag = f"{os.getpid() % 10000}-{n}"
        self.client, self.router, self.a, self.b, self.servers = (
            f"elbg-{x}-{tag}" for x in ("c", "r", "a", "b", "s"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pidfiles: list[Path] = []
        self.next_server = 2
        for ns in (self.client, self.router, self.a, self.b, self.servers):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        t = self.t
        _veth(self.t, self.client, "c0", self.router, "r0")
        _veth(self.t, self.router, "r1", self.a, "up0")
        _veth(self.t, self.router, "r2", self.b, "up0")
        _veth(self.t, self.a, "lan0", self.servers, "sa")
        _veth(self.t, self.b, "lan0", self.servers, "sb")
        sh("ip", "-n", self.servers, "link", "add", "br0", "type", "bridge")
        for port in ("sa", "sb"):
            sh("ip", "-n", self.servers, "link", "set", port, "master", "br0", "up")
        self._addr(self.client, "c0", f"10.{t}.1.2/24")
        self._addr(self.router, "r0", f"10.{t}.1.1/24")
        self._addr(self.router, "r1", f"10.{t}.4.1/24")
        self._addr(self.router, "r2", f"10.{t}.5.1/24")
        self._addr(self.a, "up0", f"10.{t}.4.2/24")
        self._addr(self.b, "up0", f"10.{t}.5.2/24")
        self._addr(self.a, "lan0", f"10.{t}.2.11/24")
        self._addr(self.b, "lan0", f"10.{t}.2.12/24")
        self._addr(self.servers, "br0", f"10.{t}.2.2/24")
        sh("ip", "-n", self.client, "route", "add", "default", "via", f"10.{t}.1.1")
        sh("ip", "-n", self.a, "route", "add", "default", "via", f"10.{t}.4.1")
        sh("ip", "-n", self.b, "route", "add", "default", "via", f"10.{t}.5.1")
        sh("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv4.fib_multipath_hash_policy=1")
        for box in (self.a, self.b):
            sh("ip", "netns", "exec", box, "sysctl", "-qw", "net.ipv4.ip_forward=1",
               "net.netfilter.nf_conntrack_acct=1")

    def _addr(self, ns: str, dev: str, addr: str) -> None:
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")

    def vip(self, n: int = 1) -> str:
        return f"10.{self.t}.9.{n}"

    def box_address(self, box: str) -> str:
        """A box's address towards the router (its router id)."""
        return f"10.{self.t}.{4 if box == self.a else 5}.2"

    def lan_address(self, box: str) -> str:
        """A box's address on the servers' LAN (the source the servers see)."""
        return f"10.{self.t}.2.{11 if box == self.a else 12}"

    def server(self, name: str, port: int) -> str:
        k = self.next_server
        self.next_server += 1
        addr = f"10.{self.t}.2.{k}"
        if k > 2:
            sh("ip", "-n", self.servers, "addr", "add", f"{addr}/32", "dev", "br0")
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.servers,
                                            sys.executable, "-c", SERVER, addr, str(port),
                                            name, "tcp"]))
        return addr

    # -- the router ------------------------------------------------------------------------

    def frr(self, peers: list[str] | None = None) -> Path:
        """FRR on the router: zebra, bfdd and bgpd as the frr user, ECMP over the boxes
        (``peers``, AS 64512; by default both boxes). Their directory (returned) holds
        vtysh's sockets. Neighbours are listed one by one: FRR 8.4 runs no BFD for the
        dynamic neighbours of a listen range."""
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="elb-frr-"))
        t = self.t
        peers = peers or [self.box_address(self.a), self.box_address(self.b)]
        neighbors = "".join(f" neighbor {ip} peer-group boxes\n" for ip in peers)
        # IPv6 VIPs (/128s) come over the IPv6 sessions.
        v6 = " address-family ipv6 unicast\n  neighbor boxes activate\n  maximum-paths 8\n" \
            " exit-address-family\n" if any(":" in ip for ip in peers) else ""
        (d / "bfdd.conf").write_text("""bfd
 profile fast
  receive-interval 100
  transmit-interval 100
  detect-multiplier 3
""")
        (d / "bgpd.conf").write_text(f"""frr defaults traditional
router bgp 64500
 bgp router-id 10.{t}.1.1
 no bgp ebgp-requires-policy
 bgp bestpath as-path multipath-relax
 neighbor boxes peer-group
 neighbor boxes remote-as 64512
 neighbor boxes bfd profile fast
 neighbor boxes timers connect 1
{neighbors} address-family ipv4 unicast
  maximum-paths 8
 exit-address-family
{v6}""")
        (d / "zebra.conf").write_text("hostname router\n")
        shutil.chown(d, "frr", "frr")
        for f in d.iterdir():
            shutil.chown(f, "frr", "frr")
        os.chmod(d, 0o755)
        zserv = str(d / "zserv.api")
        for daemon, conf, extra in (("zebra", "zebra.conf", []),
                                    ("bfdd", "bfdd.conf", ["--bfdctl", str(d / "bfdd.sock")]),
                                    ("bgpd", "bgpd.conf", [])):
            pid = d / f"{daemon}.pid"
            sh("ip", "netns", "exec", self.router, f"{FRR}/{daemon}", "-d", "-i", str(pid),
               "--vty_socket", str(d), "-z", zserv, "-f", str(d / conf), "--log",
               f"file:{d}/{daemon}.log", *extra)
            self.pidfiles.append(pid)
        self.frr_dir = d
        return d

    def bird_router(self) -> Path:
        """BIRD on the router instead of FRR: the same sessions, ECMP into the kernel."""
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="elb-birdr-"))
        t = self.t
        peers = "".join(f"""
protocol bgp box{i} {{
  local as 64500; neighbor 10.{t}.{net}.2 as 64512; bfd on; connect retry time 1;
  error wait time 1, 5;
  ipv4 {{ import all; export none; }};
}}""" for i, net in ((1, 4), (2, 5)))
        (d / "bird.conf").write_text(f"""router id 10.{t}.1.1;
protocol device {{}}
protocol bfd {{ interface "*" {{ min rx interval 100 ms; min tx interval 100 ms;
  multiplier 3; }}; }}
protocol kernel {{ merge paths on limit 8; ipv4 {{ import none; export all; }}; }}
{peers}
""")
        pid = d / "bird.pid"
        sh("ip", "netns", "exec", self.router, "bird", "-c", str(d / "bird.conf"), "-s",
           str(d / "bird.ctl"), "-P", str(pid))
        self.pidfiles.append(pid)
        return d

    def _cut_ends(self, box: str) -> list[tuple[str, str]]:
        return [(box, "up0"), (self.router, "r1" if box == self.a else "r2")]

    def cut(self, box: str) -> None:
        """Drop every packet between ``box`` and the router at both ends, the link left
        up: only BFD can tell. (No netem in this kernel: nftables drops them.)"""
        for ns, dev in self._cut_ends(box):
            sh("ip", "netns", "exec", ns, "nft", f"table netdev cut {{ chain in {{ type "
               f"filter hook ingress device {dev} priority -500; policy drop; }}; }}")

    def mend(self, box: str) -> None:
        """Undo ``cut``."""
        for ns, _ in self._cut_ends(box):
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", "cut")

    def link_here(self) -> str:
        """A link from the router (10.T.6.1, fd00:T:6::1) to the namespace this process
        runs in (10.T.6.2, returned, and fd00:T:6::2): a box there can use what lives on
        this loopback, like a simulated cluster's API. The link goes with the router's
        namespace."""
        t = self.t
        sh("ip", "link", "add", f"r3x{t}", "netns", self.router, "type", "veth", "peer",
           "name", f"up{t}")
        sh("ip", "-n", self.router, "link", "set", f"r3x{t}", "name", "r3")
        self._addr(self.router, "r3", f"10.{t}.6.1/24")
        sh("ip", "-n", self.router, "addr", "add", f"fd00:{t}:6::1/64", "dev", "r3", "nodad")
        sh("ip", "addr", "add", f"10.{t}.6.2/24", "dev", f"up{t}")
        sh("ip", "addr", "add", f"fd00:{t}:6::2/64", "dev", f"up{t}", "nodad")
        sh("ip", "link", "set", f"up{t}", "up")
        return f"10.{t}.6.2"

    def routes(self, vip: str) -> list[str]:
        """The router's next hops to ``vip`` (a /32 or /128) now."""
        out = sh("ip", "-n", self.router, "-j", "-6" if ":" in vip else "-4", "route", "show",
                 f"{vip}/{128 if ':' in vip else 32}")
        hops = []
        for r in json.loads(out or "[]"):
            if "gateway" in r:
                hops.append(r["gateway"])
            hops += [h["gateway"] for h in r.get("nexthops", []) if "gateway" in h]
        return sorted(hops)

    def in_ns(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def ask(self, addr: str, port: int, count: int = 1) -> list[str]:
        """``count`` answers from the client namespace, one new connection each."""
        r = subprocess.run(self.in_ns(self.client, sys.executable, "-c", CLIENT, addr,
                                      str(port), "tcp", "[]", str(count)),
                           capture_output=True, text=True, timeout=300)
        answers: list[str] = json.loads(r.stdout)
        return answers

    def close(self) -> None:
        _stop(self.procs)
        for pid in self.pidfiles:
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (OSError, ValueError):
                pass
        for ns in (self.client, self.router, self.a, self.b, self.servers):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
