"""Real processes and sockets for the integration tests: an edgelb daemon started as a
user would start it, and small backends on loopback. Every server here stops itself and
every process is stopped by its own PID."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The ``edgelb`` command as an operator types it, from this checkout's environment.
EDGELB = [sys.executable, "-m", "appliance.cli"]

# ansible-playbook from this checkout's environment (the test extras), or None.
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))

_short_base: str | None = None


def short_dir() -> str:
    """A fresh directory with a short path (Unix socket paths are limited to 107 bytes).
    All of them live in one directory that is removed when the test process exits, so a
    daemon that outlives its test, or a test that never cleans up, leaves nothing behind."""
    global _short_base
    if _short_base is None:
        _short_base = tempfile.mkdtemp(prefix="elb-")
        os.chmod(_short_base, 0o711)  # test users reach their sockets below it
        atexit.register(shutil.rmtree, _short_base, True)
    return tempfile.mkdtemp(dir=_short_base)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that is free for both TCP and UDP right now."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind((host, port))
            return int(port)
        except OSError:
            continue


def free_ports(n: int, host: str = "127.0.0.1") -> int:
    """The first of ``n`` consecutive ports free for TCP and UDP right now (the demo
    binds a run of them)."""
    while True:
        base = free_port(host=host)
        if base + n > 65535:
            continue
        try:
            for p in range(base + 1, base + n):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((host, p))
            return base
        except OSError:
            continue


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 10) -> int:
    """Ask ``proc`` to stop with ``sig``; kill it when it has not within ``timeout``
    seconds. Its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Edgelb:
    """An ``edgelb run`` process with a config file that the test can rewrite."""

    def __init__(self, tmp: Path, config: str) -> None:
        self.path = tmp / "edgelb.yaml"
        self.path.write_text(textwrap.dedent(config))
        self.log = tmp / "edgelb.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_args: list[str] = []
        self.prefix: list[str] = []  # e.g. ["ip", "netns", "exec", "ns1"]
        # A short path of its own: Unix socket paths are limited to 107 bytes.
        self.control_dir = short_dir()
        self.socket = os.path.join(self.control_dir, "control.sock")

    def start(self, wait_port: int | None = None) -> Edgelb:
        old = getattr(self, "_logf", None)
        if old is not None:
            old.close()  # a restart after a kill: the old handle is done
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [*self.prefix, *EDGELB, *self.start_args, "run", "-c", str(self.path)],
            stdout=self._logf, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "EDGELB_SOCKET": self.socket})
        wait_for(lambda: b"serving snapshot" in self.log.read_bytes()
                 or self.proc is None or self.proc.poll() is not None, 20, "edgelb start")
        assert self.proc.poll() is None, self.log.read_text()
        if wait_port:
            wait_for(lambda: can_connect(wait_port), 10, "listener")
        return self

    def rewrite(self, config: str) -> None:
        self.path.write_text(textwrap.dedent(config))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def reload(self) -> None:
        """SIGHUP and wait until the daemon logged the outcome."""
        before = self.log.read_bytes().count(b"reload")
        self.signal(signal.SIGHUP)
        wait_for(lambda: self.log.read_bytes().count(b"reload") > before, 10, "reload")

    def workers(self) -> list[int]:
        """PIDs of the worker processes (the daemon's children)."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        status = stop_process(self.proc, timeout=timeout)
        self._logf.close()
        return status


@contextmanager
def edgelb(tmp: Path, config: str, wait_port: int | None = None) -> Iterator[Edgelb]:
    e = Edgelb(tmp, config).start(wait_port)
    try:
        yield e
    finally:
        e.stop()
        shutil.rmtree(e.control_dir, ignore_errors=True)


def http_listener(port: int, *backends: int, options: str = "", top: str = "",
                  name: str = "web") -> str:
    """A config with one http listener on 127.0.0.1:``port`` in front of ``backends``
    (loopback ports); ``options`` are more keys of the listener, ``top`` more top-level
    keys, each as YAML lines."""
    listed = ", ".join(f"127.0.0.1:{b}" for b in backends)
    more = "".join(f"    {line}\n" for line in options.splitlines() if line)
    return (f"{top}\n" if top else "") + f"""\
listeners:
  - name: {name}
    bind: 127.0.0.1:{port}
    protocol: http
    backends: [{listed}]
{more}"""


def metrics(port: int) -> dict[str, float]:
    """Scrape /metrics into {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


class UdpEcho:
    """A threaded UDP backend on loopback answering each datagram with ``prefix`` + it."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
                self.sock.sendto(self.prefix + data, addr)
            except OSError:
                return

    def __enter__(self) -> UdpEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


class Server:
    """A threaded TCP server on loopback running ``handler(conn)`` per connection."""

    def __init__(self, handler: Callable[[socket.socket], None], port: int = 0,
                 host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._stop:
                conn.close()
                return
            self.accepted += 1
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        """Stop listening now: a thread blocked in accept() holds the socket open past
        close(), and would serve one more connection to whoever reuses the port."""
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo(conn: socket.socket) -> None:
    """Echo until EOF, then half-close back."""
    while True:
        data = conn.recv(1 << 18)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def named(name: str) -> Callable[[socket.socket], None]:
    """Answer each line with ``name``: who served the connection."""
    def handler(conn: socket.socket) -> None:
        f = conn.makefile("rb")
        for _line in f:
            conn.sendall(name.encode() + b"\n")
    return handler


def ask(port: int, host: str = "127.0.0.1", timeout: float = 5) -> bytes:
    """Connect, send a line, return the answer line (b'' when edgelb closed at once)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"who\n")
        return s.makefile("rb").readline().strip()


def closed_port() -> int:
    """A loopback port where nothing listens (connects are refused)."""
    return free_port()


def read_response(s: socket.socket) -> bytes:
    """One response with a Content-Length body, however the reads split it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += s.recv(4096)
    return head + b"\r\n\r\n" + body


def site_play(tmp: Path, inventory: str, variables: dict[str, object], *args: str,
              timeout: float = 900, outside: bool = False) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook site.yml`` with ``inventory`` (its text) and ``variables`` as
    extra vars, both written to ``tmp``; ``args`` are more options, e.g. ``--check``.
    ``outside``: run it in the machine's network namespace (its pip needs the index)."""
    (tmp / "inventory").write_text(inventory)
    (tmp / "vars.json").write_text(json.dumps(variables))
    cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "inventory"), "-e", f"@{tmp / 'vars.json'}",
           *args, "site.yml"]
    return subprocess.run(
        host_net(cmd) if outside else cmd, cwd=ROOT / "ansible", text=True,
        capture_output=True, timeout=timeout,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
             "ANSIBLE_HOST_KEY_CHECKING": "0"})


def play_recap(out: str, host: str) -> dict[str, int]:
    """The PLAY RECAP counters (ok, changed, failed, ...) of ``host`` in a play's output."""
    line = next(x for x in out.splitlines() if x.startswith(f"{host} ") and "ok=" in x)
    return {k: int(v) for k, v in (f.split("=") for f in line.split()[2:])}


# The machine's network namespace, kept open when the test run moved to its own.
_HOST_NETNS: int | None = None
CLONE_NEWNET = 0x40000000


def isolate_network() -> None:
    """Move this process (and what it starts from now on) into a new network namespace
    with loopback up; only as root, and not when EDGELB_TEST_SHARED_NET is set."""
    global _HOST_NETNS
    if os.geteuid() != 0 or os.environ.get("EDGELB_TEST_SHARED_NET") or _HOST_NETNS:
        return
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(fd)
        return  # no such right here (a container): the shared namespace it is
    _HOST_NETNS = fd
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def forget_flows() -> None:
    """Between tests in the run's own namespace: no conntrack entry (with a kernel
    listener's NAT binding) and no edgelb table outlives the test that made it. A later
    test that got the same port from ``free_port`` reused the same client ports to it
    (Linux picks source ports per destination), matched a left-over entry and was sent
    to the old test's backend."""
    if _HOST_NETNS is None:
        return  # the machine's own tables are not ours to clear
    for cmd in (["conntrack", "-F"], ["nft", "delete", "table", "inet", "edgelb"]):
        try:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


def host_net(cmd: list[str]) -> list[str]:
    """``cmd`` run in the machine's network namespace (for what needs the outside,
    such as pip), or as it is when the run never left it."""
    if _HOST_NETNS is None:
        return cmd
    return ["nsenter", f"--net=/proc/{os.getpid()}/fd/{_HOST_NETNS}", *cmd]
