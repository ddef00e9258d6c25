"""Running out of descriptors degrades and recovers, never stops the daemon: accepting
pauses (the kernel's backlog holds the clients), a connect that cannot get a descriptor
refuses its flow without blaming a backend, and a health check that cannot run says
nothing of the backend. Any client that can connect used to kill the daemon this way.

The daemon runs under ``prlimit --nofile=256:256`` without CAP_SYS_RESOURCE, so that
even as root it cannot lift the limit (the log says so)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from appliance.control.client import Client
from tests.helpers import Edgelb, free_port, wait_for
from tests.http_backend import HttpBackend

pytestmark = pytest.mark.skipif(not (shutil.which("prlimit") and shutil.which("setpriv")),
                                reason="needs prlimit and setpriv (util-linux)")

LIMIT = ["prlimit", "--nofile=256:256", "setpriv", "--bounding-set=-sys_resource", "--"]


def get(port: int) -> bytes:
    """A response, or b"" when the flow was refused (while descriptors ran out)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data
    except OSError:
        return b""


@pytest.mark.parametrize("protocol", ["tcp", "http"])
def test_out_of_descriptors_pauses_and_recovers(tmp_path: Path, protocol: str) -> None:
    port, mport = free_port(), free_port()
    with HttpBackend("one") as be:
        e = Edgelb(tmp_path, f"""\
workers: 1
metrics: {{bind: 127.0.0.1:{mport}}}
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    protocol: {protocol}
    datapath: user
    backends: [127.0.0.1:{be.port}]
    health: {{type: http, interval: 100ms, timeout: 500ms, fall: 2}}
""")
        e.prefix = LIMIT
        e.start(port)
        try:
            assert b"one" in get(port)
            idle = []
            for _ in range(300):  # more than the daemon has descriptors for
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break
            time.sleep(1.5)  # accepts, connects and health checks all run out meanwhile
            assert e.proc is not None and e.proc.poll() is None, e.logs()
            for s in idle:
                s.close()
            wait_for(lambda: b"one" in get(port), 15, "serving again")
            logs = e.logs()
            assert "paused" in logs  # it ran out, and said so
            assert logs.count("paused") <= 4  # once per 10 s, not per attempt
            assert "is down" not in logs  # checks that could not run blamed nobody
            st = Client(e.socket).get("/v1/listeners/web")
            assert st["down"] == 0
            # The limit it could not lift is in the log from the start.
            assert "descriptors: 256" in logs and "could not raise" in logs
        finally:
            e.stop()
