"""The console as operators get it: Debian's sshd on a loopback port with generated host
and user keys, `edgelb tui` as the forced command of real users, `ssh -tt` inside tmux,
keys sent with send-keys and the screen read with capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.control.client import Client
from tests.accounts import CONTROL_ROLES, Accounts, users  # noqa: F401
from tests.helpers import Server, ask, edgelb, free_port, named, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd")
    or not all(shutil.which(t) for t in ("ssh", "tmux", "ssh-keygen")),
    reason="needs root, openssh-server, openssh-client and tmux")

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/keys/%u
# The keys live under /tmp (world-writable); a real box keeps them in /etc/ssh.
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers elbt-op elbt-view
# The console is all a console user gets: no shell, no forwarding.
Match User elbt-op,elbt-view
    ForceCommand EDGELB_SOCKET={socket} exec {python} -m appliance.cli tui
    AllowTcpForwarding no
    AllowAgentForwarding no
    X11Forwarding no
    PermitTunnel no
"""


class Sshd:
    """sshd on 127.0.0.1:``port`` and a tmux server of our own to drive ssh sessions."""

    def __init__(self, d: Path, socket: str, python: str) -> None:
        self.d = d
        self.port = free_port()
        (d / "keys").mkdir(mode=0o755)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(d / "host_key")], check=True)
        for user in ("elbt-op", "elbt-view"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(d / f"{user}.key")], check=True)
            (d / "keys" / user).write_text((d / f"{user}.key.pub").read_text())
            os.chmod(d / "keys" / user, 0o644)
        (d / "sshd_config").write_text(SSHD_CONFIG.format(port=self.port, d=d, socket=socket,
                                                          python=python))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.log = open(d / "sshd.log", "wb")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f",
                                      str(d / "sshd_config")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.tmux = ["tmux", "-L", f"elbt-{os.getpid()}"]
        wait_for(self._listening, 10, "sshd")

    def _listening(self) -> bool:
        import socket as s

        try:
            s.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def ssh(self, user: str, *extra: str) -> list[str]:
        return ["ssh", "-i", str(self.d / f"{user}.key"), "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", *extra,
                f"{user}@127.0.0.1"]

    def session(self, name: str, user: str) -> None:
        """``ssh -tt`` as ``user`` in a new 100x30 tmux session."""
        cmd = " ".join(self.ssh(user, "-tt"))
        subprocess.run([*self.tmux, "new-session", "-d", "-s", name, "-x", "100", "-y", "30",
                        f"TERM=xterm-256color {cmd}"], check=True)

    def keys(self, name: str, *keys: str) -> None:
        for k in keys:
            subprocess.run([*self.tmux, "send-keys", "-t", name, k], check=True)
            time.sleep(0.15)

    def screen(self, name: str) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", name],
                              capture_output=True, text=True).stdout

    def wait_screen(self, name: str, text: str, timeout: float = 20) -> str:
        try:
            wait_for(lambda: text in self.screen(name), timeout, f"{text!r} on screen")
        except AssertionError:
            raise AssertionError(f"{text!r} not on screen:\n{self.screen(name)}\n"
                                 f"{(self.d / 'sshd.log').read_text()[-2000:]}") from None
        return self.screen(name)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def lb(tmp_path: Path, users: Accounts) -> Iterator[tuple[object, int, int, int]]:  # noqa: F811
    port = free_port()
    with Server(named("one")) as one, Server(named("two")) as two, \
            edgelb(tmp_path, f"""
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    datapath: user
    backends: [127.0.0.1:{one.port}, 127.0.0.1:{two.port}]
    health: {{type: tcp, interval: 0.2, rise: 1, fall: 1}}
{CONTROL_ROLES}""", wait_port=port) as e:
        os.chmod(e.control_dir, 0o755)
        yield e, port, one.port, two.port


@pytest.fixture
def sshd(lb: tuple[object, int, int, int], users: Accounts  # noqa: F811
         ) -> Iterator[Sshd]:
    e = lb[0]
    d = Path(e.control_dir) / "ssh"  # type: ignore[attr-defined]
    d.mkdir(mode=0o755)
    s = Sshd(d, e.socket, users.python)  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.close()


def test_operator_drains_over_ssh_and_traffic_moves(lb: tuple[object, int, int, int],
                                                    sshd: Sshd) -> None:
    e, port, p1, p2 = lb
    wait_for(lambda: {ask(port) for _ in range(6)} == {b"one", b"two"}, 10, "backends")
    sshd.session("op", "elbt-op")
    sshd.wait_screen("op", "elbt-op (operator)")
    sshd.keys("op", "3")
    sshd.wait_screen("op", "Enter shows a listener's backends")
    sshd.keys("op", "Enter")
    screen = sshd.wait_screen("op", f"127.0.0.1:{p2}")
    assert "d drain" in screen and f"127.0.0.1:{p1}" in screen
    assert "backends of web (tcp" in screen
    sshd.keys("op", "d")
    sshd.wait_screen("op", f"drain 127.0.0.1:{p1} of web?")
    sshd.keys("op", "y")
    wait_for(lambda: Client(e.socket).get("/v1/listeners/web")[  # type: ignore[attr-defined]
        "pools"][0]["backends"][0]["state"] == "drain", 10, "drained by the operator")
    wait_for(lambda: {ask(port) for _ in range(6)} == {b"two"}, 5, "traffic moved")
    sshd.wait_screen("op", "drain")
    audit = (Path(e.control_dir) / "audit.jsonl").read_text()  # type: ignore[attr-defined]
    assert '"user": "elbt-op"' in audit and '"action": "drain"' in audit
    sshd.keys("op", "q")
    wait_for(lambda: "op" not in subprocess.run([*sshd.tmux, "ls"], capture_output=True,
                                                text=True).stdout, 10, "the session ends")


def test_viewer_over_ssh_sees_but_cannot_act_and_gets_no_shell(
        lb: tuple[object, int, int, int], sshd: Sshd) -> None:
    e, _, p1, _ = lb
    sshd.session("view", "elbt-view")
    sshd.wait_screen("view", "elbt-view (viewer)")
    sshd.keys("view", "3")
    sshd.wait_screen("view", "Enter shows a listener's backends")
    sshd.keys("view", "Enter")
    screen = sshd.wait_screen("view", f"127.0.0.1:{p1}")
    assert "(read-only)" in screen and "d drain" not in screen
    sshd.keys("view", "d")
    assert "of web?" not in sshd.screen("view")
    sshd.keys("view", ":", *"drain web 127.0.0.1:", *str(p1), "Enter")
    sshd.wait_screen("view", "needs the operator or admin")
    backends = Client(e.socket).get("/v1/listeners/web")  # type: ignore[attr-defined]
    assert [b["state"] for b in backends["pools"][0]["backends"]] == ["ready", "ready"]
    # Asking for a command gets the console's forced command, never a shell.
    r = subprocess.run([*sshd.ssh("elbt-view"), "id; echo SHELL-$$"], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert "uid=" not in r.stdout and "SHELL-" not in r.stdout
    assert r.returncode == 2 and "edgelb tui needs a terminal" in r.stderr
