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

import itertools
import json
import os
import subprocess
import sys
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


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


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
        self._link(self.client, "c0", self.box, "b0")
        self._link(self.servers, "s0", self.box, "b1")
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

    def _link(self, a: str, an: str, b: str, bn: str) -> None:
        sh("ip", "link", "add", f"{an}x{self.t}", "netns", a, "type", "veth", "peer", "name",
           f"{bn}x{self.t}", "netns", b)
        sh("ip", "-n", a, "link", "set", f"{an}x{self.t}", "name", an)
        sh("ip", "-n", b, "link", "set", f"{bn}x{self.t}", "name", bn)

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
