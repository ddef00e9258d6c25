"""The Ansible role for real, against this machine (connection local), as CI can run it:
ansible-playbook installs the wheel built from this checkout into /opt/edgelb, writes
the config, sysctls, unit, console users and sshd drop-in; the installed daemon then
forwards traffic as the edgelb user. A second play and a --check play change nothing; a
bad config variable fails the play and the running config stays.

The play does not apply the sysctls to this shared machine (edgelb_sysctl_apply: false):
the test applies the file it wrote inside a network namespace of its own, where the
installed daemon then runs. Everything the play writes is removed afterwards.
Without systemd as PID 1 the role skips the unit's start (edgelb_manage_service), and
the test starts the installed daemon itself and sends SIGHUP as ExecReload does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ANSIBLE_PLAYBOOK, ROOT, host_net, play_recap, site_play, wait_for

WRITES = ["/opt/edgelb", "/etc/edgelb", "/etc/sysctl.d/60-edgelb.conf",
          "/etc/modules-load.d/edgelb.conf",
          "/etc/systemd/system/edgelb.service", "/etc/ssh/sshd_config.d/edgelb-console.conf",
          "/etc/ssh/edgelb_authorized_keys"]
USERS = ["edgelb", "elbt-console"]
GROUPS = ["edgelb", "edgelb-admins", "edgelb-operators", "edgelb-viewers"]

NEEDS = pytest.mark.skipif(
    os.geteuid() != 0 or ANSIBLE_PLAYBOOK is None or not os.path.exists("/usr/bin/python3")
    or not os.path.exists("/usr/sbin/sshd"),
    reason="needs root, ansible-playbook (test extras), Debian's python3 and sshd")


def _exists(kind: str, name: str) -> bool:
    return subprocess.run(["getent", kind, name], capture_output=True).returncode == 0


class Box:
    """This machine as the role's target, inside network namespace ``ns``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = f"elbt-ansible-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(host_net([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                                 "-w", str(tmp / "dist"), str(ROOT)]),
                       check=True, capture_output=True)
        self.wheel = next((tmp / "dist").glob("edgelb-*.whl"))
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp / "console.key")], check=True)
        self.port = 18900 + os.getpid() % 50

    def vars(self, **over: object) -> dict[str, object]:
        v: dict[str, object] = {
            "edgelb_wheel": str(self.wheel),
            "edgelb_rbac_dest": str(self.tmp / "edgelb-rbac.yaml"),
            "edgelb_sysctl_apply": False,
            # Only per-namespace settings: the global ones (rmem_max) would leave the
            # namespace.
            "edgelb_sysctls": {"net.ipv4.ip_nonlocal_bind": 1, "net.core.somaxconn": 8192,
                               "net.ipv4.ip_local_port_range": "1024 65000"},
            "edgelb_config": {"drain_timeout": "5s", "listeners": [
                {"name": "web", "bind": f"127.0.0.1:{self.port}",
                 "backends": [f"127.0.0.1:{self.port + 1}"]}]},
            "edgelb_console_users": [{"name": "elbt-console", "role": "viewer", "keys": [
                (self.tmp / "console.key.pub").read_text().strip()]}],
        }
        v.update(over)
        return v

    def play(self, *args: str, **over: object) -> subprocess.CompletedProcess[str]:
        return site_play(self.tmp, "[edgelb]\nlocalhost ansible_connection=local "
                         "ansible_python_interpreter=/usr/bin/python3\n",
                         self.vars(**over), *args, outside=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


@pytest.fixture
def box() -> Iterator[Box]:
    already = [p for p in WRITES if os.path.exists(p)] + \
        [u for u in USERS if _exists("passwd", u)] + [g for g in GROUPS if _exists("group", g)]
    if already:
        pytest.skip(f"this machine already has {already[0]}: not touching a real install")
    tmp = Path(tempfile.mkdtemp(prefix="elbt-ansible-"))
    b = Box(tmp)
    try:
        yield b
    finally:
        b.close()
        for p in WRITES:
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.unlink(p)
        for u in USERS:
            subprocess.run(["userdel", u], capture_output=True)
        for g in GROUPS:
            subprocess.run(["groupdel", g], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _in_ns(box: Box, *cmd: str, user: str | None = None) -> list[str]:
    """``cmd`` in the box's namespace; as ``user`` through setpriv, which execs (so the
    PID is the command's own, and signals reach it)."""
    as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] \
        if user else []
    return ["ip", "netns", "exec", box.ns, *as_user, *cmd]


@NEEDS
def test_role_installs_a_working_daemon_idempotently(box: Box) -> None:
    first = box.play()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert play_recap(first.stdout, "localhost")["failed"] == 0
    conf = Path("/etc/edgelb/edgelb.yaml")
    st = conf.stat()
    assert oct(st.st_mode & 0o777) == "0o640" and st.st_uid == 0
    assert "127.0.0.1:" in conf.read_text()
    unit = Path("/etc/systemd/system/edgelb.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    assert Path(box.tmp / "edgelb-rbac.yaml").read_text().count("kind: ClusterRole") >= 1
    assert "ForceCommand exec /opt/edgelb/bin/edgelb tui" in Path(
        "/etc/ssh/sshd_config.d/edgelb-console.conf").read_text()
    groups = subprocess.run(["id", "-nG", "elbt-console"], capture_output=True,
                            text=True).stdout.split()
    assert {"edgelb", "edgelb-viewers"} <= set(groups)
    subprocess.run(_in_ns(box, "sysctl", "-q", "-p", "/etc/sysctl.d/60-edgelb.conf"),
                   check=True)
    ns_sysctl = subprocess.run(_in_ns(box, "sysctl", "-n", "net.ipv4.ip_nonlocal_bind"),
                               capture_output=True, text=True).stdout.strip()
    assert ns_sysctl == "1"

    # The installed daemon, as the service user, forwards traffic in the namespace.
    run = Path(tempfile.mkdtemp(prefix="elbt-run-"))
    shutil.chown(run, "edgelb", "edgelb")
    backend = subprocess.Popen(_in_ns(box, sys.executable, "-c", (
        "import socketserver\n"
        "class H(socketserver.StreamRequestHandler):\n"
        " def handle(self):\n"
        "  for _ in self.rfile: self.wfile.write(b'backend\\n')\n"
        "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
        f"socketserver.ThreadingTCPServer(('127.0.0.1', {box.port + 1}), H).serve_forever()\n"
        )))
    daemon = subprocess.Popen(
        _in_ns(box, "/opt/edgelb/bin/edgelb", "run", "-c", str(conf), user="edgelb"),
        env={**os.environ, "EDGELB_SOCKET": f"{run}/control.sock"}, cwd="/",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    held = None
    try:
        def ask() -> bytes:
            r = subprocess.run(_in_ns(box, sys.executable, "-c", (
                "import socket\ns=socket.create_connection(('127.0.0.1',"
                f"{box.port}),timeout=2)\ns.sendall(b'hi\\n')\n"
                "print(s.makefile('rb').readline().decode().strip())")),
                capture_output=True, text=True)
            return r.stdout.strip().encode()

        try:
            wait_for(lambda: ask() == b"backend", 30, "traffic through the installed daemon")
        except AssertionError:
            daemon.kill()
            out = daemon.communicate()[0]
            raise AssertionError(out.decode(errors="replace")[-3000:]) from None
        # A connection held open across a reload (what ExecReload sends).
        held = subprocess.Popen(_in_ns(box, sys.executable, "-c", (
            "import socket,sys\ns=socket.create_connection(('127.0.0.1',"
            f"{box.port}),timeout=20)\nf=s.makefile('rb')\n"
            "for line in sys.stdin:\n s.sendall(line.encode())\n"
            " print(f.readline().decode().strip(), flush=True)\n")),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert held.stdin is not None and held.stdout is not None
        held.stdin.write("one\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "backend"

        # Idempotent: a second play changes nothing, and neither does --check.
        second = box.play()
        assert second.returncode == 0 and play_recap(second.stdout, "localhost")["changed"] == 0, \
            second.stdout[-4000:]
        check = box.play("--check")
        assert check.returncode == 0 and play_recap(check.stdout, "localhost")["changed"] == 0, \
            check.stdout[-4000:]

        # A bad config variable fails the play; the file in place stays as it was.
        before = conf.read_text()
        bad = box.play(edgelb_config={"listeners": [{"name": "web", "bind": "nowhere"}]})
        assert bad.returncode != 0 and play_recap(bad.stdout, "localhost")["failed"] == 1
        assert "listeners[0].bind" in bad.stdout + bad.stderr
        assert conf.read_text() == before

        # A good change is written, and the reload keeps the open connection.
        more = box.vars()["edgelb_config"]
        assert isinstance(more, dict)
        more["drain_timeout"] = "7s"
        changed = box.play(edgelb_config=more)
        assert changed.returncode == 0 and play_recap(changed.stdout, "localhost")["changed"] == 1
        assert "drain_timeout: 7s" in conf.read_text()
        daemon.send_signal(signal.SIGHUP)
        try:
            wait_for(lambda: ask() == b"backend", 10, "serving after the reload")
        except AssertionError:
            daemon.kill()
            out = daemon.communicate()[0]
            raise AssertionError(out.decode(errors="replace")[-3000:]) from None
        held.stdin.write("two\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "backend"
    finally:
        for p in (held, daemon, backend):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate()  # reaps it and closes its pipes
        shutil.rmtree(run, ignore_errors=True)


LINT = shutil.which("ansible-lint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(LINT is None, reason="ansible-lint not installed (test extras)")
@pytest.mark.parametrize("where", ["ansible", "images"])
def test_playbooks_are_ansible_lint_clean(where: str) -> None:
    """The role with site.yml, and the image build's playbook."""
    r = subprocess.run([str(LINT), "--offline", "--profile", "production"],
                       cwd=ROOT / where, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
