"""The L4 forwarder for real: an ``edgelb run`` process, real sockets on loopback."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from appliance.datapath.proxyproto import parse_v1, parse_v2

from ..helpers import (
    EDGELB,
    Server,
    UdpEcho,
    ask,
    can_connect,
    closed_port,
    echo,
    edgelb,
    free_port,
    metrics,
    named,
    wait_for,
)


def run_edgelb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGELB, *args], capture_output=True, text=True, timeout=30)


def tcp_config(port: int, backends: list[int], extra: str = "", top: str = "",
               listener_extra: str = "") -> str:
    lines = "\n".join(f"      - 127.0.0.1:{b}" for b in backends)
    # One worker unless a test says otherwise: counters, limits and ejection are per
    # worker, and the default is a worker per core.
    if "workers:" not in top:
        top = "workers: 1\n" + top
    return f"""\
{top}listeners:
  - name: web
    bind: 127.0.0.1:{port}
    datapath: user
    backends:
{lines}
{listener_extra}{extra}"""


def test_100mb_byte_exact_both_ways(tmp_path: Path) -> None:
    """100 MB through the splice relay, echoed back: sha256 equal in both directions."""
    port = free_port()
    with Server(echo) as backend, edgelb(tmp_path, tcp_config(port, [backend.port]),
                                         wait_port=port):
        total = 100 * 1024 * 1024
        block = hashlib.sha256(b"seed").digest() * (65536 // 32)
        sent, got = hashlib.sha256(), hashlib.sha256()
        received = 0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            def writer() -> None:
                n = 0
                while n < total:
                    chunk = block[: min(len(block), total - n)]
                    s.sendall(chunk)
                    sent.update(chunk)
                    n += len(chunk)
                s.shutdown(socket.SHUT_WR)

            t = threading.Thread(target=writer)
            t.start()
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                got.update(data)
                received += len(data)
            t.join()
        assert received == total
        assert got.hexdigest() == sent.hexdigest()


def test_half_close_is_propagated(tmp_path: Path) -> None:
    """The client shuts its write side; the backend sees EOF yet can still answer."""
    def count_then_answer(conn: socket.socket) -> None:
        n = 0
        while data := conn.recv(65536):
            n += len(data)
        conn.sendall(f"got {n}\n".encode())

    port = free_port()
    with Server(count_then_answer) as backend, edgelb(
            tmp_path, tcp_config(port, [backend.port]), wait_port=port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"x" * 300_000)
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while data := s.recv(4096):
                answer += data
        assert answer == b"got 300000\n"


def test_backend_reset_mid_flow_ends_the_client_flow(tmp_path: Path) -> None:
    """A backend that dies mid-transfer (RST): the client's connection ends promptly
    instead of hanging until the idle timeout, and edgelb keeps serving others."""
    def die_midway(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"partial")
        # SO_LINGER 0: close sends RST, as a crashed process's kernel does.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port = free_port()
    with Server(die_midway) as backend, edgelb(
            tmp_path, tcp_config(port, [backend.port],
                                 listener_extra="    health: {type: none}\n"),
            wait_port=port):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"go")
                got = b""
                try:
                    while chunk := s.recv(100):
                        got += chunk
                except ConnectionResetError:
                    pass
                assert got == b"partial"


def test_refusing_backend_is_skipped_without_client_error(tmp_path: Path) -> None:
    port = free_port()
    dead = closed_port()
    cfg = tcp_config(port, [dead, 0], listener_extra="    health: {type: none}\n")
    with Server(named("alive")) as live:
        cfg = cfg.replace("127.0.0.1:0", f"127.0.0.1:{live.port}")
        with edgelb(tmp_path, cfg, wait_port=port):
            answers = [ask(port) for _ in range(20)]
    assert answers == [b"alive"] * 20


def test_all_backends_down_closes_at_once_and_counts(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    cfg = tcp_config(port, [closed_port(), closed_port()],
                     top=f"metrics: {{bind: 127.0.0.1:{mport}}}\n",
                     listener_extra="    health: {type: tcp, interval: 100ms, fall: 1}\n"
                                    "    timeouts: {connect: 30s}\n")
    with edgelb(tmp_path, cfg, wait_port=port):
        def all_down() -> bool:
            ups = [v for k, v in metrics(mport).items() if k.startswith("edgelb_backend_up")]
            return len(ups) == 2 and not any(ups)

        wait_for(all_down, 10, "backends marked down")
        key = 'edgelb_listener_no_backend_total{listener="web"}'
        before = metrics(mport)[key]  # the start-up probe of the port counts too
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                # A connect timeout of 30s would show here as a hang; the socket's own
                # 10s timeout would then fail the test.
                assert s.recv(10) == b""
        wait_for(lambda: metrics(mport)[key] == before + 5, 5, "no_backend counter")


def test_passive_ejection_after_connect_failures(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    dead = closed_port()
    with Server(named("alive")) as live:
        cfg = tcp_config(port, [dead, live.port], top=f"metrics: {{bind: 127.0.0.1:{mport}}}\n",
                         listener_extra="    health: {type: none}\n"
                                        "    passive: {failures: 2, backoff: 60s}\n")
        with edgelb(tmp_path, cfg, wait_port=port) as e:
            assert [ask(port) for _ in range(30)] == [b"alive"] * 30
            key = ("edgelb_backend_connect_failures_total"
                   f'{{backend="127.0.0.1:{dead}",listener="web"}}')
            wait_for(lambda: key in metrics(mport), 5, "metrics")
            assert metrics(mport)[key] == 2  # ejected after 2, never tried again
            assert "ejected after 2 connect failures" in e.logs()


def test_http_health_check_takes_backend_out(tmp_path: Path) -> None:
    def sick(conn: socket.socket) -> None:
        head = conn.recv(4096)
        if head.startswith(b"GET /healthz"):
            conn.sendall(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
        else:
            named("sick")(conn)

    def well(conn: socket.socket) -> None:
        head = conn.recv(4096, socket.MSG_PEEK)
        if head.startswith(b"GET /healthz"):
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        else:
            named("well")(conn)

    port = free_port()
    with Server(sick) as a, Server(well) as b:
        cfg = tcp_config(port, [a.port, b.port], listener_extra=(
            "    health: {type: http, path: /healthz, interval: 100ms, rise: 1, fall: 1}\n"))
        with edgelb(tmp_path, cfg, wait_port=port) as e:
            wait_for(lambda: "is down: status 503" in e.logs(), 10, "sick backend down")
            assert {ask(port) for _ in range(10)} == {b"well"}


def test_proxy_protocol_v1_and_v2(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def record(conn: socket.socket) -> None:
        data = b""
        while len(data) < 108 and b"hello" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        seen.append(data)
        conn.sendall(b"ok\n")

    for version, parse in (("v1", parse_v1), ("v2", parse_v2)):
        port = free_port()
        seen.clear()
        with Server(record) as backend:
            cfg = tcp_config(port, [backend.port], listener_extra=(
                f"    proxy_protocol: {version}\n    health: {{type: none}}\n"))
            with edgelb(tmp_path, cfg, wait_port=port):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"hello")
                    assert s.recv(10) == b"ok\n"
                    client = s.getsockname()
        # The start-up probe of the port is a flow too; ours is the one that said hello.
        (ours,) = [d for d in seen if d.endswith(b"hello")]
        src, dst, n = parse(ours)
        assert src == ("127.0.0.1", client[1])
        assert dst == ("127.0.0.1", port)
        assert ours[n:] == b"hello"


def test_max_connections_closes_the_excess_and_counts(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    with Server(echo) as backend:
        cfg = tcp_config(port, [backend.port], top=f"metrics: {{bind: 127.0.0.1:{mport}}}\n",
                         listener_extra="    max_connections: 2\n    health: {type: none}\n")
        with edgelb(tmp_path, cfg, wait_port=port), ExitStack() as stack:
            # The start's probe connection holds a slot until edgelb has seen it close.
            wait_for(lambda: sum(v for k, v in metrics(mport).items()
                                 if k.startswith("edgelb_backend_active")) == 0
                     and metrics(mport).get('edgelb_listener_accepted_total{listener="web"}'),
                     5, "the probe's flow ended")
            held = [stack.enter_context(socket.create_connection(("127.0.0.1", port),
                                                                 timeout=10))
                    for _ in range(2)]
            for s in held:
                s.sendall(b"hi")
                assert s.recv(10) == b"hi"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                assert extra.recv(10) == b""  # closed at once, not queued
            key = 'edgelb_listener_over_limit_total{listener="web"}'
            wait_for(lambda: metrics(mport).get(key) == 1, 5, "over_limit counted")
            held[0].close()
            wait_for(lambda: ask_echo(port) == b"again", 5, "a slot again")


def ask_echo(port: int) -> bytes:
    """Echo a word through ``port``; b"" when edgelb closed the connection (over limit)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"again")
            return s.recv(10)
    except ConnectionError:
        return b""


def test_idle_timeout_closes_quiet_flows(tmp_path: Path) -> None:
    port = free_port()
    with Server(echo) as backend, edgelb(tmp_path, tcp_config(
            port, [backend.port], listener_extra="    timeouts: {idle: 300ms}\n"),
            wait_port=port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"ping")
            assert s.recv(10) == b"ping"
            assert s.recv(10) == b""  # closed by edgelb after 300ms of silence


def test_sighup_reload_keeps_connections_and_applies_changes(tmp_path: Path) -> None:
    port = free_port()
    with Server(echo) as a, Server(named("b")) as b:
        cfg = tcp_config(port, [a.port])
        with edgelb(tmp_path, cfg, wait_port=port) as e:
            conns = [socket.create_connection(("127.0.0.1", port), timeout=5)
                     for _ in range(20)]
            for c in conns:
                c.sendall(b"before")
                assert c.recv(100) == b"before"
            # 1. an invalid config is refused; the old Snapshot keeps serving
            e.rewrite(cfg.replace("backends:", "backend:"))
            e.reload()
            assert "reload refused" in e.logs() and "listeners[0].backend" in e.logs()
            # 2. a valid change (add backend b, weight it heavily) applies to new flows
            e.rewrite(tcp_config(port, [a.port]).replace(
                f"      - 127.0.0.1:{a.port}",
                f"      - {{address: 127.0.0.1:{a.port}, weight: 1}}\n"
                f"      - {{address: 127.0.0.1:{b.port}, weight: 100}}"))
            e.reload()
            wait_for(lambda: "serving snapshot v2" in e.logs(), 5, "v2")
            assert b"b" in {ask(port) for _ in range(5)}
            for c in conns:
                c.sendall(b"after")
                assert c.recv(100) == b"after"
                c.close()


def test_removed_backend_drains_until_deadline(tmp_path: Path) -> None:
    port = free_port()
    with Server(echo) as a, Server(named("b")) as b:
        cfg = tcp_config(port, [a.port], top="drain_timeout: 500ms\n")
        with edgelb(tmp_path, cfg, wait_port=port) as e:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"x")
            assert s.recv(10) == b"x"
            e.rewrite(tcp_config(port, [b.port], top="drain_timeout: 500ms\n"))
            e.reload()
            assert ask(port) == b"b"
            s.sendall(b"y")  # still served during the drain window
            assert s.recv(10) == b"y"
            assert s.recv(10) == b""  # then cut at the deadline
            s.close()


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    with Server(echo) as backend:
        e = edgelb(tmp_path, tcp_config(port, [backend.port], top="drain_timeout: 20s\n"),
                   wait_port=port)
        with e as d:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            d.signal(signal.SIGTERM)
            wait_for(lambda: "draining" in d.logs(), 5, "draining")
            wait_for(lambda: not can_connect(port), 5, "listener closed")
            s.sendall(b"still here")
            assert s.recv(100) == b"still here"
            s.close()
            assert d.proc is not None
            assert d.proc.wait(10) == 0  # left as soon as the last flow ended


def test_udp_many_clients_at_once(tmp_path: Path) -> None:
    """50 clients x 20 datagrams through the UDP forwarder; every reply reaches the
    client that asked, and each client sticks to one backend (Maglev)."""
    port = free_port(socket.SOCK_DGRAM)
    with UdpEcho(b"u1:") as u1, UdpEcho(b"u2:") as u2:
        cfg = f"""\
listeners:
  - name: dns
    bind: 127.0.0.1:{port}
    protocol: udp
    datapath: user
    balance: maglev
    backends: [127.0.0.1:{u1.port}, 127.0.0.1:{u2.port}]
"""
        with edgelb(tmp_path, cfg):
            errors: list[str] = []

            def client(i: int) -> None:
                c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                c.settimeout(5)
                names = set()
                try:
                    for j in range(20):
                        c.sendto(f"{i}-{j}".encode(), ("127.0.0.1", port))
                        data, _ = c.recvfrom(65535)
                        name, _, body = data.partition(b":")
                        if body != f"{i}-{j}".encode():
                            errors.append(f"client {i} got {data!r}")
                        names.add(name)
                except OSError as ex:
                    errors.append(f"client {i}: {ex}")
                finally:
                    c.close()
                if len(names) > 1:
                    errors.append(f"client {i} moved between backends {names}")

            threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []


def test_udp_max_flows_evicts_oldest(tmp_path: Path) -> None:
    port, mport = free_port(socket.SOCK_DGRAM), free_port()
    with UdpEcho() as backend:
        cfg = f"""\
workers: 1
metrics: {{bind: 127.0.0.1:{mport}}}
listeners:
  - name: dns
    bind: 127.0.0.1:{port}
    protocol: udp
    datapath: user
    max_flows: 4
    backends: [127.0.0.1:{backend.port}]
"""
        with edgelb(tmp_path, cfg) as e:
            for i in range(10):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                    c.settimeout(5)
                    c.sendto(b"%d" % i, ("127.0.0.1", port))
                    assert c.recvfrom(100)[0] == b"%d" % i
            wait_for(lambda: metrics(mport).get(
                'edgelb_udp_evicted_total{listener="dns"}') == 6, 5, "6 evictions")
            assert e.logs().count("max_flows 4 reached") == 1  # logged once per interval


def test_workers_add_up_counters(tmp_path: Path) -> None:
    """Two worker processes, SO_REUSEPORT: the kernel spreads connections, the control
    process adds up the counters."""
    port, mport = free_port(), free_port()
    with Server(named("w")) as backend:
        cfg = tcp_config(port, [backend.port], top=f"workers: 2\nmetrics: {{bind: "
                         f"127.0.0.1:{mport}}}\n")
        with edgelb(tmp_path, cfg, wait_port=port) as e:
            assert len(e.workers()) == 2
            key = f'edgelb_backend_connections_total{{backend="127.0.0.1:{backend.port}",' \
                  'listener="web"}'
            wait_for(lambda: key in metrics(mport), 5, "first counters")
            time.sleep(0.6)  # the start-up probe's count reaches the control process
            before = metrics(mport)[key]
            for _ in range(40):
                assert ask(port) == b"w"
            wait_for(lambda: metrics(mport).get(key) == before + 40, 5, "40 more counted")


def test_bind_conflict_fails_start_with_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "c.yaml").write_text(tcp_config(port, [9]))
        r = run_edgelb("run", "-c", str(tmp_path / "c.yaml"))
    assert r.returncode == 1
    assert f"cannot bind 127.0.0.1:{port}" in r.stderr


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(tcp_config(8080, [9001]))
    r = run_edgelb("check-config", "-c", str(good))
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(tcp_config(8080, [9001]) + "    balance: fastest\n    timeouts: 3\n")
    r = run_edgelb("check-config", "-c", str(bad))
    assert r.returncode == 1
    assert "line 8: listeners[0].balance: 'fastest' is not one of" in r.stderr
    assert "line 9: listeners[0].timeouts: expected a mapping" in r.stderr
    r = run_edgelb("run", "-c", str(bad))
    assert r.returncode == 1 and "listeners[0].balance" in r.stderr


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (make deb-deps)")
def test_sighup_under_wrk_load_loses_nothing(tmp_path: Path) -> None:
    """wrk keeps 20 connections busy through three reloads: no socket error, no non-2xx."""
    backend_port, port = free_port(), free_port()
    proc = subprocess.Popen([
        sys.executable, "-c",
        "import trio,sys; from appliance.sim.backends import serve_http; "
        f"trio.run(serve_http, '127.0.0.1', {backend_port}, 'a')"])
    try:
        wait_for(lambda: can_connect(backend_port), 10, "backend")
        with edgelb(tmp_path, tcp_config(port, [backend_port]), wait_port=port) as e:
            wrk = subprocess.Popen(["wrk", "-t1", "-c20", "-d4s", f"http://127.0.0.1:{port}/"],
                                   stdout=subprocess.PIPE, text=True)
            for i in range(3):
                time.sleep(0.8)
                e.rewrite(tcp_config(port, [backend_port], top=f"drain_timeout: {10 + i}s\n"))
                e.reload()
            out, _ = wrk.communicate(timeout=30)
            assert "serving snapshot v4" in e.logs()
        assert "requests in" in out
        assert "Socket errors" not in out, out
        assert "Non-2xx" not in out, out
    finally:
        proc.terminate()
        proc.wait()


def test_a_listener_binds_an_address_the_box_does_not_have_yet(tmp_path: Path) -> None:
    # IP_FREEBIND: the VIP arrives when HA promotes this box; binding must not wait.
    port = free_port()
    with Server(echo) as be, edgelb(tmp_path, f"""
        listeners:
          - name: vip
            bind: 192.0.2.123:{port}
            datapath: user
            backends: [127.0.0.1:{be.port}]
            health: {{type: none}}
        """) as e:
        assert "serving snapshot" in e.logs()
