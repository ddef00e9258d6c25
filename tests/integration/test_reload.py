"""Reloads that must leave the running Snapshot as it was, and one that must not cut what
it keeps: a file no reader can take, a file without listeners, a bind that fails, and a
backend that comes back before its drain deadline. Each of these crashed the daemon,
emptied it, or was reported as a success before."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from appliance.control.client import Client
from tests.helpers import EDGELB, Server, ask, can_connect, edgelb, free_port, named, wait_for

_BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True))


def config(port: int, backend: int, workers: int = 1, extra: str = "") -> str:
    return (f"workers: {workers}\nlisteners:\n"
            f"  - {{name: a, bind: 127.0.0.1:{port}, backends: [127.0.0.1:{backend}], "
            "health: {type: none}, datapath: user}\n" + extra)


def version(socket_path: str) -> int:
    return int(Client(socket_path).get("/v1/status")["snapshot"]["version"])


# What is appended to a good file, or (for the brackets) the whole file.
UNREADABLE = {"NUL": "\x00", "ESC": "\x1b", "tag": "x: !foo 1\n", "bigint": "y: " + "9" * 5000,
              "alias bomb": _BOMB, "brackets": "[" * 100_000}


def unreadable(name: str, good: str) -> str:
    return UNREADABLE[name] if name == "brackets" else good + UNREADABLE[name]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", list(UNREADABLE))
def test_a_file_no_reader_can_take_is_refused_and_the_daemon_serves_on(
        tmp_path: Path, workers: int, name: str) -> None:
    port = free_port()
    with Server(named("w")) as be, edgelb(tmp_path, config(port, be.port, workers),
                                          wait_port=port) as e:
        assert ask(port) == b"w"
        before = version(e.socket)
        e.path.write_text(unreadable(name, config(port, be.port, workers)))
        e.reload()
        wait_for(lambda: "reload refused" in e.logs(), 10, "the refusal")
        assert e.proc is not None and e.proc.poll() is None, e.logs()
        assert ask(port) == b"w"
        assert version(e.socket) == before
        assert "Traceback" not in e.logs()
        # The daemon still stops when asked, at once (the bomb once made it ignore it).
        assert e.stop(timeout=10) == 0


@pytest.mark.parametrize(("name", "line"), [
    ("NUL", 4), ("ESC", 4), ("tag", 4), ("bigint", 4), ("alias bomb", 9), ("brackets", 0),
])
def test_check_config_names_the_line_without_a_traceback(tmp_path: Path, name: str,
                                                         line: int) -> None:
    path = tmp_path / "edgelb.yaml"
    path.write_text(unreadable(name, config(free_port(), free_port())))
    result = subprocess.run([*EDGELB, "check-config", "-c", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    where = f"{path}: line {line}: " if line else f"{path}: "
    assert result.stderr.startswith(where), result.stderr


def test_a_reload_to_no_listeners_needs_saying_so(tmp_path: Path) -> None:
    port = free_port()
    with Server(named("w")) as be, edgelb(tmp_path, config(port, be.port),
                                          wait_port=port) as e:
        for empty in ("", "workers: 1\n", "listeners: []\n"):
            e.path.write_text(empty)
            e.reload()
            assert "has no listeners while 1 serve" in e.logs()
            assert ask(port) == b"w"
        e.path.write_text("allow_no_listeners: true\nlisteners: []\n")
        e.reload()
        wait_for(lambda: "reloaded: serving" in e.logs(), 10, "the reload")
        wait_for(lambda: not can_connect(port), 5, "the listener closed")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_whose_bind_fails_is_refused_and_the_old_socket_serves(
        tmp_path: Path, workers: int) -> None:
    port, taken = free_port(), free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", taken))  # held without SO_REUSEPORT: nobody else binds it
    blocker.listen(1)
    try:
        with Server(named("w")) as be, edgelb(tmp_path, config(port, be.port, workers),
                                              wait_port=port) as e:
            before = version(e.socket)
            # The new file moves the listener to a taken port and adds another.
            e.path.write_text(f"workers: {workers}\nlisteners:\n"
                              f"  - {{name: a, bind: 127.0.0.1:{taken}, "
                              f"backends: [127.0.0.1:{be.port}], health: {{type: none}}, "
                              "datapath: user}\n")
            e.reload()
            wait_for(lambda: "reload refused" in e.logs(), 10, "the refusal")
            assert f"cannot bind 127.0.0.1:{taken}" in e.logs()
            assert "reloaded: serving" not in e.logs()
            assert ask(port) == b"w"  # the old socket was never closed
            st = Client(e.socket).get("/v1/status")
            assert st["snapshot"]["version"] == before and st["reload_failures"] == 1
    finally:
        blocker.close()


def test_flows_to_a_backend_back_before_its_drain_deadline_are_not_cut(
        tmp_path: Path) -> None:
    port = free_port()
    with Server(named("x")) as x, Server(named("y")) as y:
        both = (f"drain_timeout: 1s\nlisteners:\n  - {{name: a, bind: 127.0.0.1:{port}, "
                f"backends: [127.0.0.1:{x.port}, 127.0.0.1:{y.port}], "
                "health: {type: none}, balance: least_conn, datapath: user}\n")
        with edgelb(tmp_path, both, wait_port=port) as e:
            flows = []
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"who\n")
                flows.append((s, s.makefile("rb")))
            on_x = [(s, f) for s, f in flows if f.readline().strip() == b"x"]
            assert on_x
            e.path.write_text(both.replace(f"127.0.0.1:{x.port}, ", ""))
            e.reload()
            e.path.write_text(both)  # x is back at once
            e.reload()
            time.sleep(2)  # past the drain deadline of the first reload
            for s, f in on_x:
                s.sendall(b"who\n")
                assert f.readline().strip() == b"x"
                s.close()
            for s, _ in flows:
                s.close()



def test_the_file_is_read_off_the_event_loop(tmp_path: Path) -> None:
    """A reload reads and checks the file in a thread: traffic flows meanwhile. The file
    is made a FIFO, whose read waits for a writer, so "meanwhile" is as long as the test
    likes (a 20,000-backend file once stopped all traffic for seconds)."""
    port = free_port()
    with Server(named("w")) as be, edgelb(tmp_path, config(port, be.port),
                                          wait_port=port) as e:
        e.path.unlink()
        os.mkfifo(e.path)
        e.signal(signal.SIGHUP)
        for _ in range(5):
            assert ask(port, timeout=5) == b"w"  # the reload waits on the FIFO
        assert "reloaded" not in e.logs()
        with open(e.path, "w") as fifo:
            fifo.write(config(port, be.port))
        wait_for(lambda: "reloaded: serving" in e.logs(), 10, "the reload")
        assert ask(port) == b"w"
