"""The console as a new operator first meets it: `edgelb demo` running, `edgelb tui` in
a real 80x24 terminal (tmux), keys sent with send-keys and the screen read back with
capture-pane. What issue 17 found over the demo is checked on the real screen: every
listener with its health on the overview, backends under a title naming their
listener, the footer whole, HTTP bytes counted, and the views dimmed with their age
when the daemon goes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import EDGELB, ROOT, free_ports, stop_process, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux")


class Screen:
    """A tmux server of our own with one 80x24 session running ``command``."""

    def __init__(self, command: str) -> None:
        self.tmux = ["tmux", "-L", f"elbt-demo-{os.getpid()}"]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "tui", "-x", "80", "-y", "24",
                        f"TERM=xterm-256color {command}"], check=True)

    def text(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", "tui"],
                              capture_output=True, text=True).stdout

    def wait(self, pattern: str, timeout: float = 15) -> str:
        """The screen once ``pattern`` (a regular expression) is on it."""
        seen = [""]

        def there() -> bool:
            seen[0] = self.text()
            return re.search(pattern, seen[0]) is not None

        try:
            wait_for(there, timeout, pattern)
        except AssertionError:
            raise AssertionError(f"{pattern!r} not on the screen:\n{seen[0]}") from None
        return seen[0]

    def keys(self, *keys: str) -> None:
        for k in keys:
            subprocess.run([*self.tmux, "send-keys", "-t", "tui", k], check=True)
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    """``edgelb demo`` on ten free ports from the first; (process, port, socket)."""
    port = free_ports(10)
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*EDGELB, "demo", "--port", str(port)], stdout=f,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: b"EDGELB_SOCKET=" in out.read_bytes() or proc.poll() is not None,
                 30, "the demo")
        text = out.read_text()
        assert proc.poll() is None, text
        socket = re.search(r"EDGELB_SOCKET=(\S+)", text)
        assert socket is not None
        yield proc, port, socket.group(1)
    finally:
        stop_process(proc, signal.SIGINT, 20)


def _get(port: int, host: str, path: str = "/") -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=5) as r:
        return bytes(r.read())


def test_the_console_over_the_demo_in_a_real_terminal(
        demo: tuple[subprocess.Popen[bytes], int, str]) -> None:
    proc, port, socket = demo
    for _ in range(20):
        assert _get(port + 3, "shop.demo.test", "/cart")
    screen = Screen(f"EDGELB_SOCKET={socket} {' '.join(EDGELB)} tui")
    try:
        # One screen: every listener with its state, the footer whole.
        over = screen.wait(r"ingress-https[\s\S]*q Quit")
        for name in ("web", "dns", "shop", "default/shop:", "ingress-http"):
            assert re.search(rf"\bok\s+{re.escape(name)}", over), over
        assert "q Quit" in over and "no alerts" in over
        assert len(over.splitlines()) <= 24
        # Enter on shop: its backends, titled, with the HTTP bytes counted.
        screen.keys("Down", "Down", "Enter")
        shop = screen.wait(r"backends of shop \(http 127\.0\.0\.1:\d+, api round_robin, "
                           r"storefront least_conn\)")
        rows = [ln for ln in shop.splitlines() if ln.lstrip().startswith("storefront/")]
        assert "BYTES" in shop and len(rows) == 2, shop
        assert all(re.search(r" \d+(\.\d)?(B|KiB)$", ln.rstrip()) and
                   not ln.rstrip().endswith(" 0B") for ln in rows), shop
        assert "d drain" in shop and "Esc: all listeners" in shop
        screen.keys("Escape")
        screen.wait(r"Enter shows a listener's backends")
        # Flows: the sorted column is marked.
        screen.keys("2", "s")
        screen.wait(r"ID↑")
        # The daemon goes: the data stays, dimmed, and says how old it is.
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        screen.wait(r"disconnected since \d\d:\d\d:\d\d \(data \d+s old\)")
    finally:
        screen.close()
