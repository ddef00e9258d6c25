"""The kernel datapath for real, as root, in network namespaces each test creates and
removes (tests/netlab.py): a client, the box running edgelb, and servers behind it. The
packets cross the box's nftables rules and conntrack; edgelb's Python moves none of them.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.control.client import Client
from appliance.datapath.balance import Maglev
from appliance.datapath.kernel.rules import MARK, MARK_MASK

from ..helpers import EDGELB, Edgelb, wait_for
from ..netlab import Routed, sh

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("conntrack") is None,
    reason="needs root, nft and conntrack for network namespaces")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Routed]:
    lab = Routed(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def _edgelb(lab: Routed, tmp: Path, config: str) -> Edgelb:
    e = Edgelb(tmp, config)
    e.prefix = lab.in_ns(lab.box)
    return e.start()


def _names(answers: list[str]) -> Counter[str]:
    return Counter(a.split()[0] if a else "" for a in answers)


def _status(e: Edgelb) -> dict:  # type: ignore[type-arg]
    st: dict = Client(e.socket).get("/v1/status")  # type: ignore[type-arg]
    return st


def test_weighted_round_robin_in_the_kernel(lab: Routed, tmp_path: Path) -> None:
    vip = lab.vip()
    a, _ = lab.server("a", 8080)
    b, _ = lab.server("b", 8080)
    e = _edgelb(lab, tmp_path, f"""
listeners:
  - name: web
    bind: {vip}:80
    backends: [{{address: {a}:8080, weight: 3}}, {{address: {b}:8080, weight: 1}}]
    health: {{type: tcp, interval: 200ms, rise: 1, fall: 1}}
""")
    try:
        wait_for(lambda: lab.ask(vip, 80) != [""], 10, "traffic through the VIP")
        st = _status(e)
        assert st["datapath"]["mode"] == "kernel" and st["datapath"]["kernel_listeners"] == 1
        shares = _names(lab.ask(vip, 80, 400))
        # numgen over slots a, b, a, a (smooth weighted order): exact shares
        assert abs(shares["a"] - 300) <= 3 and abs(shares["b"] - 100) <= 3, shares
        rules = sh(*lab.in_ns(lab.box, "nft", "list", "table", "inet", "edgelb"))
        assert "numgen inc mod 4" in rules
        # The counters come from the kernel: accepted, per backend, and the flows view.
        wait_for(lambda: Client(e.socket).get("/v1/listeners")["listeners"][0]["accepted"]
                 >= 400, 10, "kernel counters read back")
        web = Client(e.socket).get("/v1/listeners/web")
        assert web["datapath"] == "kernel"
        conns = {b["key"]: b["connections"] for b in web["pools"][0]["backends"]}
        assert conns[f"{a}:8080"] >= 290 and conns[f"{b}:8080"] >= 95, conns
    finally:
        e.stop()


def test_maglev_picks_what_user_space_picks_and_moves_little(lab: Routed,
                                                              tmp_path: Path) -> None:
    """1,000 client addresses over UDP: the kernel sends each where user space's Maglev
    would; removing one of five backends moves its own clients and under 5% of the
    others."""
    vip = lab.vip()
    servers = [lab.server(f"s{i}", 5353, "udp")[0] for i in range(5)]
    sources = lab.client_sources(1000)

    def config(backends: list[str]) -> str:
        listed = ", ".join(f"{s}:5353" for s in backends)
        return (f"drain_timeout: 1s\nlisteners:\n  - {{name: dns, bind: '{vip}:53', "
                f"protocol: udp, balance: maglev, backends: [{listed}]}}\n")

    e = _edgelb(lab, tmp_path, config(servers))
    try:
        wait_for(lambda: lab.ask(vip, 53, proto="udp", sources=sources[:1]) != [""], 10,
                 "UDP through the VIP")
        got = lab.ask(vip, 53, 1000, "udp", sources)
        assert "" not in got
        by_name = {f"s{i}": s for i, s in enumerate(servers)}
        first = {src: by_name[a.split()[0]] for src, a in zip(sources, got, strict=True)}
        user = Maglev([(f"{s}:5353", 1) for s in servers])
        expect = {src: servers[user.pick(range(5), src.encode()) or 0] for src in sources}
        assert first == expect
        # Remove the third backend.
        e.rewrite(config(servers[:2] + servers[3:]))
        e.reload()
        wait_for(lambda: "reloaded" in e.logs(), 10, "reload")
        # New flows: the conntrack entries of the old ones expire only later, so ask
        # from fresh source ports (each datagram is a new socket: a new flow).
        sh(*lab.in_ns(lab.box, "conntrack", "-D", "-m", f"{MARK:#x}/{MARK_MASK:#x}"),
           check=False)
        after = lab.ask(vip, 53, 1000, "udp", sources)
        second = {src: by_name[a.split()[0]] for src, a in zip(sources, after, strict=True)}
        moved = [s for s in sources if first[s] != second[s] and first[s] != servers[2]]
        assert all(second[s] != servers[2] for s in sources)
        assert len(moved) < 50, len(moved)
    finally:
        e.stop()


def test_a_killed_backend_gets_no_new_flows_after_its_checks_fail(lab: Routed,
                                                                  tmp_path: Path) -> None:
    vip = lab.vip()
    a, pa = lab.server("a", 8080)
    b, _ = lab.server("b", 8080)
    e = _edgelb(lab, tmp_path, f"""
listeners:
  - name: web
    bind: {vip}:80
    backends: [{a}:8080, {b}:8080]
    health: {{type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}}
""")
    try:
        wait_for(lambda: set(_names(lab.ask(vip, 80, 10))) == {"a", "b"}, 10, "both serve")
        pa.terminate()
        pa.wait()
        wait_for(lambda: "is down" in e.logs(), 10, "a seen down")
        assert set(_names(lab.ask(vip, 80, 20))) == {"b"}
    finally:
        e.stop()


def _hold(lab: Routed, vip: str, port: int) -> subprocess.Popen[str]:
    """A client in the client namespace holding one connection open: it says which
    server it reached, then echoes a line each time it is poked (stdin) until cut."""
    code = f"""
import socket, sys
s = socket.create_connection(({vip!r}, {port}), timeout=5)
s.sendall(b"who\\n"); f = s.makefile("rb")
print(f.readline().decode().split()[0], flush=True)
for line in sys.stdin:
    try:
        s.sendall(b"echo\\n"); print(f.readline().decode().strip() or "CUT", flush=True)
    except OSError:
        print("CUT", flush=True)
"""
    return subprocess.Popen(lab.in_ns(lab.client, "python3", "-c", code), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _end(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.communicate()  # reaps it and closes its pipes


def _poke(p: subprocess.Popen[str]) -> str:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("x\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def test_removed_backend_drains_until_the_deadline_drained_one_runs_on(
        lab: Routed, tmp_path: Path) -> None:
    vip = lab.vip()
    a, _ = lab.server("a", 8080)
    b, _ = lab.server("b", 8080)
    both = f"""
drain_timeout: 3s
listeners:
  - name: web
    bind: {vip}:80
    backends: [{a}:8080, {b}:8080]
    health: {{type: none}}
"""
    e = _edgelb(lab, tmp_path, both)
    holders = []
    try:
        wait_for(lambda: lab.ask(vip, 80) != [""], 10, "traffic")
        holders = [_hold(lab, vip, 80) for _ in range(4)]
        on = []
        for h in holders:
            assert h.stdout is not None
            on.append(h.stdout.readline().strip())
        assert set(on) == {"a", "b"}
        # b drained by an operator: its flows run on past the deadline.
        Client(e.socket).act("drain", listener="web", backend=f"{b}:8080")
        # a removed by a reload: its flows live until drain_timeout, then are cut.
        e.rewrite(both.replace(f"{a}:8080, ", ""))
        e.reload()
        assert all(_poke(h) == "echo" for h in holders)  # both still flow
        assert _names(lab.ask(vip, 80, 10)) == {"": 10}  # a removed, b drained: nobody
        time.sleep(3)  # the drain deadline
        wait_for(lambda: "cut at the drain deadline" in e.logs(), 10, "the cut")
        results = dict(zip(holders, on, strict=True))
        for h, server in results.items():
            assert _poke(h) == ("CUT" if server == "a" else "echo"), server
    finally:
        for h in holders:
            _end(h)
        e.stop()


def test_an_operator_cuts_one_kernel_flow(lab: Routed, tmp_path: Path) -> None:
    """A cut flow's conntrack entry is marked and its packets get a reset: deleting the
    entry would not do, maglev would translate the next packet to the same backend."""
    vip = lab.vip()
    a, _ = lab.server("a", 8080)
    e = _edgelb(lab, tmp_path, f"""
listeners:
  - {{name: web, bind: '{vip}:80', balance: maglev, backends: ['{a}:8080'],
      health: {{type: none}}}}
""")
    holders = []
    try:
        wait_for(lambda: lab.ask(vip, 80) != [""], 10, "traffic")
        holders = [_hold(lab, vip, 80) for _ in range(2)]
        for h in holders:
            assert h.stdout is not None and h.stdout.readline().strip() == "a"
        c = Client(e.socket)
        wait_for(lambda: len(c.get("/v1/flows", path="kernel")["flows"]) == 2, 10, "flows")
        doomed = c.get("/v1/flows", path="kernel", sort="client")["flows"][0]
        r = c.act("cut", flow=doomed["id"])
        assert r["listener"] == "web" and r["client"] == doomed["client"]
        cut = [h for h in holders if _poke(h) == "CUT"]
        assert len(cut) == 1
        assert [_poke(h) for h in holders if h not in cut] == ["echo"]
        listed = [f["id"] for f in c.get("/v1/flows", path="kernel")["flows"]]
        assert len(listed) == 1 and doomed["id"] not in listed
        assert _names(lab.ask(vip, 80)) == {"a": 1}  # new flows are served as before
    finally:
        for h in holders:
            _end(h)
        e.stop()


def test_a_change_to_a_map_already_in_the_table_is_a_change(lab: Routed,
                                                             tmp_path: Path) -> None:
    """Two listeners share a's dispatch map; one moves to b and back, so its chain points
    at the map already in the table. nft 1.0.6 refused that change (the map's ``th
    dport`` as read back from the kernel), and every such reload replaced the whole
    table: 300 ms at 5,000 listeners instead of 50."""
    vip = lab.vip()
    a, _ = lab.server("a", 8080)
    b, _ = lab.server("b", 8080)

    def config(second: str) -> str:
        return (f"listeners:\n  - {{name: one, bind: '{vip}:80', backends: ['{a}:8080'], "
                "health: {type: none}}\n"
                f"  - {{name: two, bind: '{vip}:81', backends: ['{second}:8080'], "
                "health: {type: none}}\n")

    e = _edgelb(lab, tmp_path, config(a))
    try:
        wait_for(lambda: _names(lab.ask(vip, 81)) == {"a": 1}, 10, "two on a")
        for second, name in ((b, "b"), (a, "a"), (b, "b")):
            before = _status(e)["datapath"]["rules_changes"]
            e.rewrite(config(second))
            e.reload()
            wait_for(lambda b4=before: _status(e)["datapath"]["rules_changes"] > b4,  # type: ignore[misc]
                     10, "the change")
            assert _names(lab.ask(vip, 81, 4)) == {name: 4}
            assert _names(lab.ask(vip, 80, 4)) == {"a": 4}
        assert "was refused" not in e.logs()
    finally:
        e.stop()


def test_udp_ipv6_and_the_clients_address_without_snat(lab: Routed,
                                                       tmp_path: Path) -> None:
    vip4, vip6 = lab.vip(), lab.vip(2, family=6)
    u, _ = lab.server("u", 5300, "udp")
    six, _ = lab.server("six", 8086, family=6)
    keep, _ = lab.server("keep", 8087)
    masq, _ = lab.server("masq", 8088)
    e = _edgelb(lab, tmp_path, f"""
listeners:
  - {{name: dns, bind: '{vip4}:53', protocol: udp, backends: ['{u}:5300']}}
  - {{name: v6, bind: '[{vip6}]:80', backends: ['[{six}]:8086'], health: {{type: none}}}}
  - {{name: keep, bind: '{vip4}:81', snat: false, backends: ['{keep}:8087'],
      health: {{type: none}}}}
  - {{name: masq, bind: '{vip4}:82', backends: ['{masq}:8088'], health: {{type: none}}}}
""")
    try:
        client = f"10.{lab.t}.1.2"
        wait_for(lambda: lab.ask(vip4, 53, proto="udp") != [""], 10, "udp")
        assert lab.ask(vip4, 53, proto="udp") == [f"u 10.{lab.t}.2.1"]  # masqueraded
        assert lab.ask(vip6, 80) == [f"six fd{lab.t:02x}:2::1"]
        assert lab.ask(vip4, 81) == [f"keep {client}"]  # the client's own address
        assert lab.ask(vip4, 82) == [f"masq 10.{lab.t}.2.1"]
        assert _status(e)["datapath"]["kernel_listeners"] == 4
    finally:
        e.stop()


def test_flows_and_counters_read_from_the_kernel(lab: Routed, tmp_path: Path) -> None:
    vip = lab.vip()
    a, _ = lab.server("a", 8080)
    e = _edgelb(lab, tmp_path, f"""
listeners:
  - {{name: web, bind: '{vip}:80', backends: ['{a}:8080'], health: {{type: none}}}}
  - {{name: pp, bind: '{vip}:81', backends: ['{a}:8080'], health: {{type: none}},
      proxy_protocol: v1}}
""")
    held = []
    try:
        wait_for(lambda: lab.ask(vip, 80) != [""], 10, "traffic")
        held = [_hold(lab, vip, 80) for _ in range(3)]
        for h in held:
            assert h.stdout is not None and h.stdout.readline().strip() == "a"
        # conntrack is read at most once a second: the three appear within it.
        wait_for(lambda: len(Client(e.socket).get("/v1/flows", path="kernel")["flows"]) == 3,
                 10, "the kernel's flows")
        flows = Client(e.socket).get("/v1/flows", path="kernel")["flows"]
        assert {f["listener"] for f in flows} == {"web"}
        f = flows[0]
        assert f["vip"] == f"{vip}:80" and f["backend"] == f"{a}:8080"
        assert f["state"] == "established" and f["client"].startswith(f"10.{lab.t}.1.2:")
        assert f["bytes_in"] > 0 and f["id"].startswith("k.")
        listeners = {x["name"]: x["datapath"]
                     for x in Client(e.socket).get("/v1/listeners")["listeners"]}
        assert listeners == {"web": "kernel", "pp": "user"}
        st = _status(e)["datapath"]
        assert st["mode"] == "mixed"
        out = subprocess.run([*lab.in_ns(lab.box), *_ctl(e), "flows", "--path", "kernel"],
                             capture_output=True, text=True, timeout=30).stdout
        assert out.count("kernel") == 3, out
    finally:
        for h in held:
            _end(h)
        e.stop()


def _ctl(e: Edgelb) -> list[str]:
    return [*EDGELB, "ctl", "--socket", e.socket]


def test_without_net_admin_every_listener_is_served_in_user_space(
        lab: Routed, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop CAP_NET_ADMIN")
    vip = lab.vip()
    a, _ = lab.server("a", 8080)
    e = Edgelb(tmp_path, f"""
listeners:
  - {{name: web, bind: '{vip}:80', backends: ['{a}:8080'], health: {{type: none}}}}
""")
    e.prefix = [*lab.in_ns(lab.box), "setpriv", "--inh-caps=-net_admin",
                "--bounding-set=-net_admin"]
    e.start()
    try:
        wait_for(lambda: lab.ask(vip, 80) != [""], 10, "traffic")
        dp = _status(e)["datapath"]
        assert dp["mode"] == "user" and not dp["kernel"]
        assert "nft" in dp["why_not"] and "kernel datapath unavailable" in e.logs()
        assert "table inet edgelb" not in sh(*lab.in_ns(lab.box, "nft", "list", "tables"))
        assert lab.ask(vip, 80) == [f"a 10.{lab.t}.2.1"]
    finally:
        e.stop()


def test_sighup_under_load_loses_nothing_and_stop_removes_the_table(
        lab: Routed, tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("needs wrk")
    vip = lab.vip()
    servers = [lab.server(f"h{i}", 8080)[0] for i in range(3)]
    http = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((sys.argv[1], 8081), H).serve_forever()
"""
    for s in servers:
        lab.procs.append(subprocess.Popen(lab.in_ns(lab.servers, "python3", "-c", http, s)))

    def config(weights: list[int]) -> str:
        listed = ", ".join(f"{{address: '{s}:8081', weight: {w}}}"
                           for s, w in zip(servers, weights, strict=True))
        return (f"listeners:\n  - {{name: web, bind: '{vip}:80', backends: [{listed}], "
                "health: {type: none}}\n")

    e = _edgelb(lab, tmp_path, config([1, 1, 1]))
    try:
        for target in [*(f"{s}:8081" for s in servers), vip]:  # each server, the VIP
            wait_for(lambda t=target: subprocess.run(  # type: ignore[misc]
                lab.in_ns(lab.client, "curl", "-s", "-m", "1", f"http://{t}/"),
                capture_output=True, text=True).stdout == "ok", 10, f"http from {target}")
        wrk = subprocess.Popen(lab.in_ns(lab.client, "wrk", "-t1", "-c20", "-d4s",
                                         f"http://{vip}/"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for i in range(6):
            time.sleep(0.5)
            e.rewrite(config([1 + i % 2, 1, 2 - i % 2]))
            e.signal(signal.SIGHUP)
        out, _ = wrk.communicate(timeout=30)
        assert "Socket errors" not in out and "Non-2xx" not in out, out
        assert "requests in" in out
        e.stop()
        tables = sh(*lab.in_ns(lab.box, "nft", "list", "tables"))
        assert "edgelb" not in tables
    finally:
        if e.proc is not None and e.proc.poll() is None:
            e.stop()


def test_five_thousand_listeners_in_one_transaction(lab: Routed, tmp_path: Path) -> None:
    a, _ = lab.server("a", 8080)
    vip = lab.vip()
    listed = "".join(f"  - {{name: l{i}, bind: '{vip}:{10000 + i}', backends: ['{a}:8080'], "
                     "health: {type: none}}\n" for i in range(5000))
    e = _edgelb(lab, tmp_path, "listeners:\n" + listed)
    try:
        assert lab.ask(vip, 14999) == [f"a 10.{lab.t}.2.1"]
        svc = sh(*lab.in_ns(lab.box, "nft", "list", "map", "inet", "edgelb", "svc4"))
        assert svc.count("jump l_") == 5000
        # Every listener has the same backend: one dispatch map for all.
        rules = sh(*lab.in_ns(lab.box, "nft", "list", "table", "inet", "edgelb"))
        assert rules.count("map d_") == 1
    finally:
        e.stop()


def test_jhash_in_python_is_the_kernels(lab: Routed) -> None:
    """The Maglev slot user space computes is the one nftables' jhash gives: checked on
    300 IPv4 and 300 IPv6 source addresses through the kernel's own hash."""
    from appliance.datapath.jhash import nft_jhash

    # The source addresses: whole prefixes on the client's loopback.
    sh(*lab.in_ns(lab.client, "ip", "addr", "add", "10.250.0.0/16", "dev", "lo"))
    sh(*lab.in_ns(lab.client, "ip", "addr", "add", "fd00::/64", "dev", "lo"))
    sh(*lab.in_ns(lab.client, "sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1"))
    script = lab.tmp / "jhash.nft"
    script.write_text("""table inet jt {
  chain out {
    type filter hook output priority 0; policy accept;
    udp dport 9999 ct mark set jhash ip saddr mod 65537 seed 0xed6e1b
    udp dport 9998 ct mark set jhash ip6 saddr mod 65537 seed 0xed6e1b
  }
}
""")
    sh(*lab.in_ns(lab.client, "nft", "-f", str(script)))
    code = """
import random, socket
rnd = random.Random(7)
for i in range(300):
    a = f"10.250.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, 0)); s.sendto(b"x", ("127.0.0.1", 9999))
    b = f"fd00::{rnd.randrange(65536):x}:{rnd.randrange(65536):x}"
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.bind((b, 0)); s6.sendto(b"x", ("::1", 9998))
"""
    sh(*lab.in_ns(lab.client, "python3", "-c", code))
    out = sh(*lab.in_ns(lab.client, "conntrack", "-L", "-p", "udp"))
    checked = 0
    for line in out.splitlines():
        toks = line.split()
        src = next(t[4:] for t in toks if t.startswith("src="))
        mark = int(next(t[5:] for t in toks if t.startswith("mark=")))
        assert nft_jhash(ipaddress.ip_address(src).packed, 65537, 0xED6E1B) == mark, src
        checked += 1
    assert checked == 600


def test_loopback_clients_and_backends_on_the_box(lab: Routed, tmp_path: Path) -> None:
    """A client on the box itself, to a VIP or a loopback listener, and backends on the
    box's loopback: DNAT in the output hook, no source NAT over loopback."""
    code = """
import socket, threading, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18001)); s.listen(64)
while True:
    c, p = s.accept(); c.recv(10); c.sendall(f"local {p[0]}\\n".encode()); c.close()
"""
    lab.procs.append(subprocess.Popen(lab.in_ns(lab.box, "python3", "-c", code)))
    e = _edgelb(lab, tmp_path, """
listeners:
  - {name: lo, bind: '127.0.0.1:18080', backends: ['127.0.0.1:18001'], health: {type: none}}
""")
    try:
        def ask_local() -> str:
            code = ("import socket; s = socket.create_connection(('127.0.0.1', 18080), 2); "
                    "s.sendall(b'x'); print(s.recv(100).decode().strip())")
            r = subprocess.run(lab.in_ns(lab.box, "python3", "-c", code),
                               capture_output=True, text=True, timeout=10)
            return r.stdout.strip()

        wait_for(lambda: ask_local() == "local 127.0.0.1", 10, "a local client")
        assert _status(e)["datapath"]["mode"] == "kernel"
    finally:
        e.stop()


def test_no_backend_resets_at_once_and_counts(lab: Routed, tmp_path: Path) -> None:
    vip = lab.vip()
    e = _edgelb(lab, tmp_path, f"""
listeners:
  - {{name: web, bind: '{vip}:80', backends: [{{address: '10.{lab.t}.2.250:8080', weight: 0}}],
      health: {{type: none}}}}
""")
    try:
        code = f"""
import socket, time
t = time.monotonic()
try:
    socket.create_connection(({vip!r}, 80), timeout=5); print("connected")
except ConnectionRefusedError:
    print("refused")
"""
        out = sh(*lab.in_ns(lab.client, "python3", "-c", code)).strip()
        assert out == "refused"
        wait_for(lambda: Client(e.socket).get("/v1/listeners")["listeners"][0]["no_backend"]
                 >= 1, 10, "counted")
    finally:
        e.stop()
