"""The appliance image for real (`make test-system`, outside CI for its length): boot
images/out/edgelb.img under qemu from its own boot loader, with SSH and one service port
forwarded to loopback, and check from this host what an operator would:

- it boots to a login prompt on the serial console and to sshd, with host keys of its own;
- the edgelb unit is active under the box's systemd (Type=notify, watchdog armed), with
  the config baked in by `make test-system` (VARS=tests/system/image-vars.yml);
- ansible-playbook over SSH configures a listener, and traffic flows through the
  forwarded port to a backend on the box;
- `systemctl reload edgelb` puts a new Snapshot in force and an open connection carries
  on through it;
- a second play, and a `--check` play, report changed=0;
- a bad config variable fails the play, and the running config stays and keeps serving.

KVM is tried first where /dev/kvm exists, and TCG when KVM does not bring the box up
(in some nested sandboxes the guest kernel hangs under KVM); EDGELB_QEMU_ACCEL=tcg picks
one. The disk is opened with snapshot=on: the image file is never written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ANSIBLE_PLAYBOOK, ROOT, free_port, play_recap, site_play, wait_for

OUT = ROOT / "images" / "out"
IMAGE = Path(os.environ.get("EDGELB_IMAGE", OUT / "edgelb.img"))
KEY = Path(os.environ.get("EDGELB_IMAGE_KEY", OUT / "admin_ed25519"))
QEMU = shutil.which("qemu-system-x86_64")
SERVICE_PORT = 8080  # the listener's port on the box
BACKEND_PORT = 9000  # a line-echo backend on the box's loopback


SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "BatchMode=yes"]


@dataclass
class Box:
    """A booted appliance: its qemu process and the loopback ports forwarded to it."""

    proc: subprocess.Popen[bytes]
    accel: str
    ssh_port: int
    web_port: int
    tmp: Path

    @property
    def console(self) -> str:
        return (self.tmp / "console.log").read_text(errors="replace")

    def ssh(self, command: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ssh", "-i", str(KEY), "-p", str(self.ssh_port), *SSH_OPTS,
                            "root@127.0.0.1", command],
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"{command}: {r.stdout}{r.stderr}"
        return r

    def play(self, *args: str, **over: object) -> subprocess.CompletedProcess[str]:
        inventory = (
            "[edgelb]\n"
            f"vm ansible_host=127.0.0.1 ansible_port={self.ssh_port} ansible_user=root "
            f"ansible_ssh_private_key_file={KEY} ansible_python_interpreter=/usr/bin/python3 "
            f"ansible_ssh_common_args='{' '.join(SSH_OPTS)}'\n")
        v: dict[str, object] = {
            "edgelb_wheel": str(next((ROOT / "dist").glob("edgelb-*.whl"))),
            "edgelb_rbac_dest": str(self.tmp / "edgelb-rbac.yaml"),
            "edgelb_config": config(),
        }
        v.update(over)
        return site_play(self.tmp, inventory, v, *args, timeout=1200)


def config() -> dict[str, object]:
    """The edgelb.yaml the plays give the box: one TCP listener to the echo backend."""
    return {"drain_timeout": "5s",
            "control": {"state_file": "/var/lib/edgelb/state.json"},
            "listeners": [{"name": "echo", "bind": f"0.0.0.0:{SERVICE_PORT}",
                           "backends": [f"127.0.0.1:{BACKEND_PORT}"]}]}


def _accels() -> list[str]:
    chosen = os.environ.get("EDGELB_QEMU_ACCEL")
    if chosen:
        return [chosen]
    return ["kvm", "tcg"] if os.access("/dev/kvm", os.R_OK | os.W_OK) else ["tcg"]


def _boot(accel: str, tmp: Path) -> Box:
    ssh_port, web_port = free_port(), free_port()
    args = [str(QEMU), "-accel", accel, "-m", "1024", "-smp", "2", "-nographic",
            "-drive", f"file={IMAGE},format=raw,if=virtio,snapshot=on",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
                       f"hostfwd=tcp:127.0.0.1:{web_port}-:{SERVICE_PORT}",
            "-device", "virtio-net-pci,netdev=n0",
            "-serial", f"file:{tmp / 'console.log'}", "-monitor", "none"]
    if accel == "kvm":
        args += ["-cpu", "host"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return Box(proc, accel, ssh_port, web_port, tmp)


def _stop(box: Box) -> None:
    if box.proc.poll() is None:
        box.proc.kill()
    box.proc.wait()


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    # Run on purpose (`make test-system`): what is missing is a failure, never a skip.
    if not IMAGE.exists() or not KEY.exists() or QEMU is None or ANSIBLE_PLAYBOOK is None:
        pytest.fail("needs `make image` (images/out/edgelb.img and its admin key), "
                    "qemu-system-x86_64 and ansible-playbook")
    tmp = Path(tempfile.mkdtemp(prefix="elbt-vm-"))
    accels = _accels()
    b = None
    try:
        for i, accel in enumerate(accels):
            b = _boot(accel, tmp)
            # Under TCG the first boot (and its host keys) takes about a minute here.
            deadline = time.monotonic() + (90 if accel == "kvm" else 420)
            while time.monotonic() < deadline and b.proc.poll() is None:
                if b.ssh("true", check=False, timeout=15).returncode == 0:
                    break
                time.sleep(3)
            else:
                console = b.console
                _stop(b)
                if i + 1 < len(accels):
                    print(f"no SSH under {accel}; trying {accels[i + 1]}")
                    continue
                raise AssertionError(f"the box never answered SSH under {accel}:\n"
                                     f"{console[-3000:]}")
            break
        assert b is not None
        print(f"booted under {b.accel}")
        yield b
    finally:
        if b is not None:
            _stop(b)
        shutil.rmtree(tmp, ignore_errors=True)


def _echo(box: Box, line: str) -> str:
    with socket.create_connection(("127.0.0.1", box.web_port), timeout=10) as s:
        s.sendall(line.encode() + b"\n")
        return s.makefile("rb").readline().decode().strip()


def _try_echo(box: Box) -> bool:
    try:
        return _echo(box, "ping") == "echo ping"
    except OSError:
        return False


def _version(box: Box) -> int:
    out = box.ssh("/opt/edgelb/bin/edgelb ctl status --json").stdout
    return int(json.loads(out)["snapshot"]["version"])


def test_boots_to_serial_console_sshd_and_an_active_unit(box: Box) -> None:
    wait_for(lambda: "login:" in box.console, 120, "a login prompt on the serial console")
    # Host keys made on this box's first boot, not carried in the image.
    assert box.ssh("systemctl show -p Result --value ssh-host-keys").stdout.strip() == \
        "success"
    wait_for(lambda: box.ssh("systemctl is-active edgelb", check=False).stdout.strip()
             == "active", 60, "edgelb active")
    props = dict(line.split("=", 1) for line in box.ssh(
        "systemctl show -p Type -p WatchdogUSec -p NRestarts -p User edgelb").stdout.split())
    assert props == {"Type": "notify", "WatchdogUSec": "10s", "NRestarts": "0",
                     "User": "edgelb"}
    # The config baked in with VARS (tests/system/image-vars.yml) is in force from boot.
    assert "drain_timeout: 6s" in box.ssh("cat /etc/edgelb/edgelb.yaml").stdout
    listeners = json.loads(box.ssh("/opt/edgelb/bin/edgelb ctl --json listeners").stdout)
    assert [x["name"] for x in listeners] == ["echo"]
    # A real systemd is PID 1; the daemon runs as the unprivileged user.
    assert box.ssh("cat /proc/1/comm").stdout.strip() == "systemd"
    pid = box.ssh("systemctl show -p MainPID --value edgelb").stdout.strip()
    assert box.ssh(f"stat -c %U /proc/{pid}").stdout.strip() == "edgelb"


def test_play_over_ssh_configures_traffic_reload_keeps_a_connection(box: Box) -> None:
    # A line-echo backend on the box's loopback, as a transient unit of its systemd.
    box.ssh("systemd-run --unit=elbt-echo /usr/bin/python3 -c '"
            "import socketserver\n"
            "class H(socketserver.StreamRequestHandler):\n"
            " def handle(self):\n"
            "  for line in self.rfile: self.wfile.write(b\"echo \" + line)\n"
            "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
            f"socketserver.ThreadingTCPServer((\"127.0.0.1\", {BACKEND_PORT}), H)"
            ".serve_forever()\n'")
    first = box.play()
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert play_recap(first.stdout, "vm")["changed"] >= 1
    wait_for(lambda: _try_echo(box), 60, "traffic through the forwarded port")

    # An open connection carries on through `systemctl reload` and its new Snapshot.
    before = _version(box)
    with socket.create_connection(("127.0.0.1", box.web_port), timeout=10) as held:
        lines = held.makefile("rb")
        held.sendall(b"one\n")
        assert lines.readline() == b"echo one\n"
        box.ssh("systemctl reload edgelb")
        wait_for(lambda: _version(box) > before, 30, "a new Snapshot after the reload")
        held.sendall(b"two\n")
        assert lines.readline() == b"echo two\n"
    assert box.ssh("systemctl show -p NRestarts --value edgelb").stdout.strip() == "0"
    assert _try_echo(box)


def test_second_play_and_check_mode_change_nothing(box: Box) -> None:
    second = box.play()
    assert second.returncode == 0, second.stdout[-4000:]
    assert play_recap(second.stdout, "vm")["changed"] == 0, second.stdout[-4000:]
    check = box.play("--check")
    assert check.returncode == 0, check.stdout[-4000:]
    assert play_recap(check.stdout, "vm")["changed"] == 0, check.stdout[-4000:]


def test_bad_config_variable_fails_the_play_and_the_running_config_stays(box: Box) -> None:
    conf_before = box.ssh("sha256sum /etc/edgelb/edgelb.yaml").stdout
    version = _version(box)
    bad = box.play(edgelb_config={"listeners": [{"name": "echo", "bind": "nowhere"}]})
    assert bad.returncode != 0 and play_recap(bad.stdout, "vm")["failed"] == 1
    assert "listeners[0].bind" in bad.stdout + bad.stderr
    assert box.ssh("sha256sum /etc/edgelb/edgelb.yaml").stdout == conf_before
    assert box.ssh("systemctl is-active edgelb").stdout.strip() == "active"
    assert _version(box) == version
    assert _try_echo(box)
