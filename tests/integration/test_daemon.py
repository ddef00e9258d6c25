"""The daemon as systemd and an operator see it: sd_notify, JSON logs, worker respawn,
IPv6 listeners, and the demo."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

from ..helpers import (
    EDGELB,
    Server,
    ask,
    can_connect,
    edgelb,
    free_port,
    free_ports,
    metrics,
    named,
    wait_for,
)


def _notified(tmp_path: Path, **env: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A daemon started as systemd starts a Type=notify unit: with a real NOTIFY_SOCKET
    (returned, to read its messages) and ``env``."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    port = free_port()
    (tmp_path / "c.yaml").write_text(
        f"listeners:\n  - {{name: a, bind: 127.0.0.1:{port}, backends: [127.0.0.1:9], "
        "datapath: user}\n")
    proc = subprocess.Popen([*EDGELB, "run", "-c", str(tmp_path / "c.yaml")],
                            env={**os.environ, "NOTIFY_SOCKET": path, **env},
                            stderr=subprocess.DEVNULL)
    return sock, proc


def test_sd_notify_ready_reloading_stopping(tmp_path: Path) -> None:
    """READY, RELOADING and STOPPING, as systemd expects of Type=notify."""
    sock, proc = _notified(tmp_path)
    try:
        assert sock.recv(4096) == b"READY=1"
        proc.send_signal(signal.SIGHUP)
        msg = sock.recv(4096)
        assert msg.startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096) == b"READY=1"
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def test_sd_notify_watchdog_pings(tmp_path: Path) -> None:
    """With WATCHDOG_USEC (systemd's WatchdogSec), WATCHDOG=1 comes every half period."""
    sock, proc = _notified(tmp_path, WATCHDOG_USEC="400000")
    try:
        assert sock.recv(4096) == b"READY=1"
        pings = [sock.recv(4096) for _ in range(4)]
        assert pings == [b"WATCHDOG=1"] * 4
    finally:
        proc.kill()
        proc.wait()
        sock.close()


def test_json_logs(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "c.yaml").write_text(
        f"listeners:\n  - {{name: a, bind: 127.0.0.1:{port}, backends: [127.0.0.1:9], "
        "datapath: user}\n")
    proc = subprocess.Popen([*EDGELB, "--log-format", "json",
                             "run", "-c", str(tmp_path / "c.yaml")],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: can_connect(port), 15, "listener")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, err
    assert all({"time", "level", "logger", "msg", "pid"} <= r.keys() for r in records)
    assert any("serving snapshot v1" in r["msg"] for r in records)


def test_dead_worker_is_replaced_and_traffic_continues(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    with Server(named("w")) as backend:
        cfg = (f"workers: 2\nmetrics: {{bind: 127.0.0.1:{mport}}}\nlisteners:\n"
               f"  - {{name: a, bind: 127.0.0.1:{port}, backends: [127.0.0.1:{backend.port}],"
               " datapath: user,"
               " health: {type: none}}\n")
        with edgelb(tmp_path, cfg, wait_port=port) as e:
            wait_for(lambda: len(e.workers()) == 2, 10, "two workers")
            victim = e.workers()[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: "starting a new one" in e.logs(), 10, "respawn logged")
            wait_for(lambda: len(e.workers()) == 2 and victim not in e.workers(), 10,
                     "a new worker")
            time.sleep(0.5)  # the new worker has bound its listener
            assert [ask(port) for _ in range(20)] == [b"w"] * 20
            key = f'edgelb_backend_connections_total{{backend="127.0.0.1:{backend.port}",' \
                  'listener="a"}'
            wait_for(lambda: metrics(mport).get(key, 0) >= 20, 5, "counters kept")


def test_ipv6_listener_and_backend(tmp_path: Path) -> None:
    with Server(named("six"), host="::1") as backend:
        port = free_port()
        cfg = (f"listeners:\n  - name: v6\n    bind: '[::1]:{port}'\n"
               f"    backends: ['[::1]:{backend.port}']\n    proxy_protocol: v1\n"
               "    health: {type: tcp, interval: 200ms}\n")
        with edgelb(tmp_path, cfg):
            wait_for(lambda: can_connect(port, "::1"), 10, "v6 listener")
            assert ask(port, "::1") == b"six"


def test_demo_runs_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_ports(9)  # the demo serves port .. port + 8
    # Its output to a file: a pipe nobody reads while the demo starts could fill and
    # stop it.
    log = tmp_path / "demo.log"
    with open(log, "wb") as out_file:
        proc = subprocess.Popen([*EDGELB, "demo", "--port", str(port)],
                                stdout=out_file, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: can_connect(port) or proc.poll() is not None, 20, "demo listener")
        assert proc.poll() is None, log.read_text()
        bodies = [urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                  for _ in range(40)]
        shares = Counter(b.split(b":")[0].decode() for b in bodies)
        # weights 2:1:1; the start-up probe of the port took one pick
        assert abs(shares["backend web-1"] - 20) <= 1
        assert abs(shares["backend web-2"] - 10) <= 1
        assert abs(shares["backend web-3"] - 10) <= 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"hello", ("127.0.0.1", port + 1))
            assert u.recvfrom(100)[0].endswith(b": hello")
        assert "edgelb_backend_connections_total" in urllib.request.urlopen(
            f"http://127.0.0.1:{port + 2}/metrics", timeout=5).read().decode()
        routed = subprocess.run(
            ["curl", "-sS", "-H", "Host: shop.demo.test", f"http://127.0.0.1:{port + 3}/api/x",
             "-k", "--resolve", f"shop.demo.test:{port + 4}:127.0.0.1",
             f"https://shop.demo.test:{port + 4}/cart"],
            capture_output=True, text=True, timeout=10).stdout
        assert routed.startswith("backend web-1: GET /api/x HTTP/1.1\n"), routed
        assert "GET /cart HTTP/1.1" in routed.splitlines()[1]
        # The simulated cluster: a LoadBalancer service and the Ingress, through VIPs.
        # The Service's VIP (kernel, as root) and the Ingress (user space) come into
        # force one after the other.
        wait_for(lambda: can_connect(port + 5, "127.0.0.100")
                 and can_connect(port + 8, "127.0.0.120"), 20, "cluster VIP and Ingress")
        cluster = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.100:{port + 5}/", "-H", "Host: blog.cluster.test",
             f"http://127.0.0.120:{port + 8}/"], capture_output=True, text=True,
            timeout=10).stdout
        assert cluster.startswith("svc shop pod shop-"), cluster
        assert "svc blog pod blog-1" in cluster.splitlines()[1]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        out = log.read_text()
        assert proc.returncode == 0, out
        assert f"curl -s http://127.0.0.1:{port}/" in out
        assert "drained, exiting" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            print(log.read_text()[-4000:])  # the demo's own account, beside the failure
