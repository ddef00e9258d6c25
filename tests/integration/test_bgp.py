"""BGP mode for real: two edgelb boxes, each with the BIRD it runs, peering with a
router in its own namespace (FRR, and once BIRD), which spreads new connections over
both boxes by ECMP. Clients in another namespace; servers on a LAN both boxes reach."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from appliance.control.client import Client
from tests.helpers import EDGELB, ROOT, Edgelb, wait_for
from tests.netlab import FRR, Fabric

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("bird") or not os.path.exists(f"{FRR}/bgpd"),
    reason="needs root, bird2 and frr")


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    f = Fabric(tmp_path)
    try:
        yield f
    finally:
        f.close()


def _config(f: Fabric, box: str, tmp: Path, backends: list[str], extra: str = "") -> str:
    metrics = _metrics_port(f, box)
    return f"""
drain_timeout: 2s
metrics: {{bind: 127.0.0.1:{metrics}}}
listeners:
  - name: web
    bind: {f.vip()}:80
    balance: maglev
    backends: [{', '.join(f"'{b}:8080'" for b in backends)}]
    health: {{type: tcp, interval: 0.2, rise: 1, fall: 1}}
ha:
  mode: bgp
  asn: 64512
  router_id: {f.box_address(box)}
  peers: [{{address: {f.box_address(box).rsplit('.', 1)[0]}.1, asn: 64500, bfd: true}}]
  vips: [{f.vip()}/32]
  withdraw_wait: 1s
  bird: {{directory: {tmp}/bird}}
{extra}"""


def _box(f: Fabric, box: str, tmp: Path, backends: list[str], extra: str = "") -> Edgelb:
    d = tmp / box
    d.mkdir()
    e = Edgelb(d, _config(f, box, d, backends, extra))
    e.prefix = ["ip", "netns", "exec", box]
    return e.start()


@contextmanager
def _boxes(f: Fabric, tmp: Path, backends_a: list[str],
           backends_b: list[str] | None = None) -> Iterator[tuple[Edgelb, Edgelb]]:
    """Both boxes running (b with a's backends unless told), stopped on the way out
    (a too when b does not start)."""
    with ExitStack() as stack:
        a = _box(f, f.a, tmp, backends_a)
        stack.callback(a.stop)
        b = _box(f, f.b, tmp, backends_a if backends_b is None else backends_b)
        stack.callback(b.stop)
        yield a, b


def metrics_of(f: Fabric, box: str) -> dict[str, float]:
    """/metrics of a box, scraped inside its namespace."""
    r = subprocess.run(f.in_ns(box, "curl", "-s", f"http://127.0.0.1:{_metrics_port(f, box)}"
                                                  "/metrics"),
                       capture_output=True, text=True, timeout=10)
    out = {}
    for line in r.stdout.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def _metrics_port(f: Fabric, box: str) -> int:
    return 9100 + (1 if box == f.b else 0)


def _console_text(sock: str) -> tuple[str, str]:
    """The console's HA view and overview text, driven by its Pilot."""
    from textual.widgets import Static

    from tui.app import Console

    got: list[str] = []

    async def main() -> None:
        app = Console(socket=sock, interval=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(50):
                await pilot.pause(0.1)
                if app.status:
                    break
            over = str(app.query_one("#overview-text", Static).render())
            await pilot.press("6")
            await pilot.pause(0.3)
            got.extend([str(app.query_one("#ha-text", Static).render()), over])

    asyncio.run(main())
    return got[0], got[1]


def _served_by(f: Fabric, answers: list[str]) -> Counter[str]:
    """Which box each answer came through (the source the server saw)."""
    by = {f.lan_address(f.a): "a", f.lan_address(f.b): "b"}
    return Counter(by.get(a.split()[1], "?") if a else "" for a in answers)


def test_two_boxes_share_new_connections_and_one_killed_leaves_at_once(
        fabric: Fabric, tmp_path: Path) -> None:
    f = fabric
    s1, s2 = f.server("s1", 8080), f.server("s2", 8080)
    f.frr()
    with _boxes(f, tmp_path, [s1, s2]) as (a, _):
        wait_for(lambda: f.routes(f.vip()) == [f"10.{f.t}.4.2", f"10.{f.t}.5.2"], 30,
                 "both boxes' routes on the router")
        answers = f.ask(f.vip(), 80, 1000)
        split = _served_by(f, answers)
        assert split[""] == 0 and split["a"] >= 300 and split["b"] >= 300, split
        # Both boxes build the same Maglev table: one client lands on the same backend
        # whichever box the router picked.
        assert len({x.split()[0] for x in answers}) == 1, Counter(answers)
        st = Client(a.socket).get("/v1/status")["ha"]
        assert st["mode"] == "bgp" and st["sessions"][0]["state"] == "Established"
        assert st["sessions"][0]["bfd"] == "Up"
        assert st["vips"] == [{"vip": f.vip(), "announced": True, "why": ""}]
        r = subprocess.run([*EDGELB, "ctl", "--socket", a.socket, "bgp"], capture_output=True,
                           text=True, cwd=ROOT)
        assert f"10.{f.t}.4.1  64500  Established" in r.stdout and " Up " in r.stdout
        m = metrics_of(f, f.a)
        assert m[f'edgelb_bgp_session_up{{peer="10.{f.t}.4.1"}}'] == 1
        assert m[f'edgelb_bgp_vip_announced{{vip="{f.vip()}"}}'] == 1
        # The console's HA view and overview say it too.
        ha, over = _console_text(a.socket)
        assert f"HA bgp AS 64512 router id 10.{f.t}.4.2: 1/1 sessions established, 1/1 " \
            "VIPs announced" in ha
        assert f"peer 10.{f.t}.4.1 as 64500: Established, BFD Up, 1 exported" in ha
        assert "HA bgp: 1/1 sessions established" in over


def _hold(f: Fabric, n: int) -> subprocess.Popen[str]:
    """``n`` connections from the client held open. It prints how many went through
    box b; then each line on stdin pokes them all and prints how many of b's still
    answer."""
    code = f"""
import socket, sys
socks = []
for _ in range({n}):
    s = socket.create_connection(({f.vip()!r}, 80), timeout=3)
    s.sendall(b"who\\n"); seen = s.makefile("rb").readline().decode().split()[1]
    socks.append((s, seen == {f.lan_address(f.b)!r}))
print(sum(on_b for _, on_b in socks), flush=True)
for line in sys.stdin:
    ok = 0
    for s, on_b in socks:
        if not on_b:
            continue
        try:
            s.sendall(b"echo\\n")
            ok += s.recv(10) == b"echo\\n"
        except OSError:
            pass
    print(ok, flush=True)
"""
    return subprocess.Popen(f.in_ns(f.client, "python3", "-c", code), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _poke(p: subprocess.Popen[str]) -> int:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("x\n")
    p.stdin.flush()
    return int(p.stdout.readline())


def _first_answer_through(f: Fabric, box: str, limit: float) -> float:
    """Seconds until a new connection is answered through ``box`` only (five in a row)."""
    start = time.monotonic()
    want = "a" if box == f.a else "b"
    while time.monotonic() - start < limit:
        if _served_by(f, f.ask(f.vip(), 80, 5)) == Counter({want: 5}):
            return time.monotonic() - start
    raise AssertionError(f"new connections did not all reach {want} within {limit}s")


def test_a_killed_box_and_its_bird_leave_the_router_at_once(
        fabric: Fabric, tmp_path: Path) -> None:
    f = fabric
    s1 = f.server("s1", 8080)
    f.frr()
    with _boxes(f, tmp_path, [s1]) as (a, _):
        wait_for(lambda: len(f.routes(f.vip())) == 2, 30, "both boxes' routes")
        holder = _hold(f, 40)
        try:
            assert holder.stdout is not None
            on_b = int(holder.stdout.readline())
            assert 5 <= on_b <= 35 and _poke(holder) == on_b
            assert a.proc is not None
            bird_a = subprocess.run(["pgrep", "-P", str(a.proc.pid), "bird"],
                                    capture_output=True, text=True).stdout.split()
            assert len(bird_a) == 1, "box a's edgelb runs its BIRD"
            a.proc.send_signal(signal.SIGKILL)  # edgelb alone: its BIRD must go with it
            # Its BIRD died with it, so the session closed at once: well within the hold
            # time (9 s) that would otherwise pass first. The benchmark measures the time.
            wait_for(lambda: f.routes(f.vip()) == [f"10.{f.t}.5.2"], 3, "a's route gone")
            _first_answer_through(f, f.b, 5)
            wait_for(lambda: not os.path.exists(f"/proc/{bird_a[0]}"), 5,
                     "box a's BIRD gone")
            assert f.routes(f.vip()) == [f"10.{f.t}.5.2"]
            # Every flow on b is untouched (those on a died with it).
            assert _poke(holder) == on_b
        finally:
            holder.kill()
            holder.communicate()


def test_a_bird_that_dies_alone_is_started_again(fabric: Fabric, tmp_path: Path) -> None:
    f = fabric
    s1 = f.server("s1", 8080)
    f.frr([f.box_address(f.a)])
    a = _box(f, f.a, tmp_path, [s1])
    try:
        wait_for(lambda: f.routes(f.vip()) == [f.box_address(f.a)], 30, "a's route")
        assert a.proc is not None
        (bird,) = subprocess.run(["pgrep", "-P", str(a.proc.pid), "bird"],
                                 capture_output=True, text=True).stdout.split()
        os.kill(int(bird), signal.SIGKILL)
        wait_for(lambda: f.routes(f.vip()) == [], 5, "withdrawn with its BIRD")
        wait_for(lambda: f.routes(f.vip()) == [f.box_address(f.a)], 30,
                 "announced again by a new BIRD")
        (again,) = subprocess.run(["pgrep", "-P", str(a.proc.pid), "bird"],
                                  capture_output=True, text=True).stdout.split()
        assert again != bird
        events = [e["message"] for e in Client(a.socket).get("/v1/events")["events"]]
        assert any("BIRD exited" in m for m in events), events
    finally:
        a.stop()


def test_a_cut_link_is_found_by_bfd(fabric: Fabric, tmp_path: Path) -> None:
    f = fabric
    s1 = f.server("s1", 8080)
    f.frr()
    with _boxes(f, tmp_path, [s1]):
        wait_for(lambda: len(f.routes(f.vip())) == 2, 30, "both boxes' routes")
        f.cut(f.a)  # every packet between a and the router lost, the link up
        # BFD (3 x 100 ms) finds it, not the hold timer (9 s): the route leaves the
        # router in a fraction of the hold time. (A functional bound, with room for a
        # busy machine; the benchmark measures the time.)
        wait_for(lambda: f.routes(f.vip()) == [f"10.{f.t}.5.2"], 3, "a's route gone by BFD")
        _first_answer_through(f, f.b, 5)


def test_a_listener_without_backends_withdraws_its_vip_and_drain_box(
        fabric: Fabric, tmp_path: Path) -> None:
    f = fabric
    s1 = f.server("s1", 8080)
    f.frr()
    closed = f"10.{f.t}.2.250"  # nothing listens there
    with _boxes(f, tmp_path, [s1], [closed]) as (a, b):
        withdrawn = [{"vip": f.vip(), "announced": False, "why": "no healthy backend (web)"}]
        wait_for(lambda: Client(b.socket).get("/v1/status")["ha"]["vips"] == withdrawn, 30,
                 "b withdraws: its only backend is down")
        wait_for(lambda: f.routes(f.vip()) == [f"10.{f.t}.4.2"], 10, "only a announces")
        assert any("VIP withdrawn" in al or "withdrawn" in al
                   for al in Client(b.socket).get("/v1/status")["alerts"])
        # b's backend comes back: b announces again.
        b.rewrite(_config(f, f.b, tmp_path / f.b, [s1]))
        b.reload()
        wait_for(lambda: len(f.routes(f.vip())) == 2, 10, "b announces again")
        # drain-box (ctl) withdraws a's routes; undrain-box brings them back.
        r = subprocess.run(f.in_ns(f.a, *EDGELB, "ctl", "--socket", a.socket, "drain-box"),
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: f.routes(f.vip()) == [f"10.{f.t}.5.2"], 10, "a withdrawn")
        assert _served_by(f, f.ask(f.vip(), 80, 20)) == Counter({"b": 20})
        Client(a.socket).act("undrain-box")
        wait_for(lambda: len(f.routes(f.vip())) == 2, 10, "a back")
        events = [e["message"] for e in Client(b.socket).get("/v1/events")["events"]]
        assert any("withdrawn: no healthy backend" in m for m in events), events
        assert any(f"VIP {f.vip()} announced" in m for m in events), events


def graceful_stop_under_wrk(f: Fabric, tmp: Path) -> tuple[str, int | None]:
    """wrk from the client for 6 s over an HTTP listener of both boxes, box a stopped
    with SIGTERM 2 s in: (wrk's report, a's exit status). Also the benchmark's."""
    web = f"10.{f.t}.2.2"
    conf = tmp / "nginx.conf"
    conf.write_text(f"""daemon off; pid {tmp}/nginx.pid; error_log stderr;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen {web}:8081; location / {{ return 200 "ok\\n"; }} }} }}
""")
    f.procs.append(subprocess.Popen(f.in_ns(f.servers, "nginx", "-c", str(conf)),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    f.frr()
    site = f"""
  - name: site
    bind: {f.vip()}:8080
    protocol: http
    backends: ['{web}:8081']
"""

    def box(name: str) -> Edgelb:
        d = tmp / name
        d.mkdir()
        text = _config(f, name, d, [web]).replace("ha:\n", site.lstrip("\n") + "ha:\n", 1)
        e = Edgelb(d, text)
        e.prefix = ["ip", "netns", "exec", name]
        return e.start()

    a, b = box(f.a), box(f.b)
    try:
        wait_for(lambda: len(f.routes(f.vip())) == 2, 30, "both boxes' routes")
        # A new connection per request: a connection to the box that stops is never
        # reused after it withdrew (keep-alive clients are closed between requests).
        wrk = subprocess.Popen(f.in_ns(f.client, "wrk", "-t2", "-c16", "-d6s", "-H",
                                       "Connection: close", f"http://{f.vip()}:8080/"),
                               stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        out, _ = wrk.communicate(timeout=30)
        status = a.proc.wait(20)
        assert f.routes(f.vip()) == [f"10.{f.t}.5.2"]
        return out, status
    finally:
        a.stop()
        b.stop()


def test_a_graceful_stop_under_load_fails_no_request(fabric: Fabric, tmp_path: Path) -> None:
    """No request gets an error answer, and no connection the box had is cut by its
    stop. What stateless ECMP itself does is allowed, at most once per 5,000 requests:
    when the router drops the box's route, a connection in its first round trip there
    (its SYN went to the box, its request is still on the way) has its next packets
    hashed to the other box, which does not know it and resets it. 0 of 28,329 in the
    benchmark's run; a CI run once saw 1 of 28,781."""
    out, status = graceful_stop_under_wrk(fabric, tmp_path)
    assert status == 0
    requests = int(out.split(" requests in ")[0].split()[-1])
    assert requests > 200, out
    assert "Non-2xx" not in out, out
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                       r"timeout (\d+)", out)
    failed = sum(int(x) for x in errors.groups()) if errors else 0
    assert failed <= requests // 5000, out


def test_a_vip_from_the_cluster_is_announced_and_withdrawn_with_its_service(
        fabric: Fabric, tmp_path: Path) -> None:
    """A dual-stack Service: its IPv4 VIP as a /32 over the IPv4 session, its IPv6 VIP
    as a /128 over the IPv6 one (issue 19)."""
    from appliance.sim.cluster import SimCluster

    f = fabric
    here = f.link_here()
    f.frr([here, f"fd00:{f.t}:6::2"])
    pools = [f"10.{f.t}.9.100-10.{f.t}.9.109", f"fd00:{f.t}:9::100-fd00:{f.t}:9::109"]
    with SimCluster(str(tmp_path)) as sim:
        sim.add_node("n1", ["127.0.0.21", "::1"])
        e = Edgelb(tmp_path, f"""
cluster:
  kubeconfig: {sim.kubeconfig_path}
  address_pools: {json.dumps(pools)}
  tls_dir: {tmp_path}/tls
  debounce: 50ms
listeners: []
allow_no_listeners: true
ha:
  mode: bgp
  asn: 64512
  router_id: {here}
  peers: [{{address: 10.{f.t}.6.1, asn: 64500, bfd: true}},
          {{address: "fd00:{f.t}:6::1", asn: 64500, bfd: true}}]
  bird: {{directory: {tmp_path}/bird}}
""").start()
        try:
            sim.add_service("web", [(80, 30080)], {"web-a": "n1"},
                            families=["IPv4", "IPv6"], policy="RequireDualStack")
            vip, vip6 = f"10.{f.t}.9.100", f"fd00:{f.t}:9::100"
            wait_for(lambda: f.routes(vip) == [here], 30, "the Service's VIP on the router")
            wait_for(lambda: len(f.routes(vip6)) == 1, 30, "its IPv6 VIP, a /128")
            sim.api.remove("Service", "web")
            wait_for(lambda: f.routes(vip) == [] and f.routes(vip6) == [], 10,
                     "both withdrawn with their Service")
        finally:
            e.stop()


def test_bird_as_the_router_spreads_flows_too(fabric: Fabric, tmp_path: Path) -> None:
    f = fabric
    s1 = f.server("s1", 8080)
    f.bird_router()
    with _boxes(f, tmp_path, [s1]):
        wait_for(lambda: f.routes(f.vip()) == [f"10.{f.t}.4.2", f"10.{f.t}.5.2"], 30,
                 "both boxes' routes from the BIRD router")
        split = _served_by(f, f.ask(f.vip(), 80, 1000))
        assert split[""] == 0 and split["a"] >= 300 and split["b"] >= 300, split


def test_a_bird_that_cannot_start_leaves_the_daemon_serving(tmp_path: Path) -> None:
    """No BIRD at the configured path, or one that refuses its config (a bad include):
    the box announces nothing and says why, keeps trying, and serves its listeners."""
    from tests.helpers import Server, ask, free_port, named

    port = free_port()
    bad = tmp_path / "bad.conf"
    bad.write_text("this is not BIRD\n")
    with Server(named("one")) as one:
        for bird, include in (("/nonexistent/bird", ""), ("bird", f"include: [{bad}]")):
            d = tmp_path / ("missing" if include == "" else "refused")
            d.mkdir()
            e = Edgelb(d, f"""
listeners:
  - {{name: web, bind: 127.0.0.77:{port}, datapath: user, backends: [127.0.0.1:{one.port}]}}
ha:
  mode: bgp
  asn: 64512
  router_id: 192.0.2.11
  peers: [{{address: 192.0.2.1, asn: 64500}}]
  vips: [127.0.0.77/32]
  bird: {{binary: {bird}, directory: {d}/bird, {include}}}
""").start()
            try:
                assert ask(port, "127.0.0.77") == b"one"
                api = Client(e.socket)
                wait_for(lambda c=api: any("nothing is announced" in a
                                           for a in c.get("/v1/status")["alerts"]),
                         10, "the alert")
                time.sleep(2.5)  # it keeps trying, and says so once
                said = [m["message"] for m in Client(e.socket).get("/v1/events")["events"]
                        if "no VIP is announced" in m["message"]]
                assert len(said) == 1, said
                vips = Client(e.socket).get("/v1/status")["ha"]["vips"]
                assert vips[0]["announced"] is False and "BIRD" in vips[0]["why"], vips
                assert e.proc is not None and e.proc.poll() is None
                assert ask(port, "127.0.0.77") == b"one"
            finally:
                assert e.stop() == 0
