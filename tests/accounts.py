"""Real users and groups for the role tests, created by the test and removed after, and a
Python that those users can run: this checkout's interpreter lives under /root, which
other users cannot enter, so Debian's python3 (the same 3.11 ABI) is given a venv that
adds this checkout's site-packages."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SOCKET_GROUP = "elbtg-sock"
ROLE_GROUPS = {"admin": "elbtg-admins", "operator": "elbtg-ops", "viewer": "elbtg-view"}
USERS = {  # user: groups (the socket's group lets them connect at all)
    "elbt-admin": [SOCKET_GROUP, ROLE_GROUPS["admin"]],
    "elbt-op": [SOCKET_GROUP, ROLE_GROUPS["operator"]],
    "elbt-view": [SOCKET_GROUP, ROLE_GROUPS["viewer"]],
    "elbt-none": [SOCKET_GROUP],
    "elbt-out": [],
}
CONTROL_ROLES = f"""
control:
  group: {SOCKET_GROUP}
  roles: {{admin: {ROLE_GROUPS['admin']}, operator: {ROLE_GROUPS['operator']},
           viewer: {ROLE_GROUPS['viewer']}}}
"""


@dataclass
class Accounts:
    python: str  # an interpreter every user can run, with edgelb importable

    def run(self, user: str, *args: str, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``edgelb ARGS`` as ``user`` (a real login's uid and groups)."""
        return subprocess.run(["runuser", "-u", user, "--", self.python, "-m",
                               "appliance.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})},
                              cwd="/")


def _exists(kind: str, name: str) -> bool:
    try:
        (grp.getgrnam if kind == "group" else pwd.getpwnam)(name)
        return True
    except KeyError:
        return False


def shared_python(where: Path) -> str:
    """A venv of Debian's python3 that imports this checkout's packages."""
    venv = where / "py"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)],
                   check=True)
    site = sysconfig.get_paths()["purelib"]
    (venv / "lib" / "python3.11" / "site-packages" / "edgelb-checkout.pth").write_text(
        f"import site; site.addsitedir({site!r})\n")
    return str(venv / "bin" / "python")


@contextmanager
def accounts() -> Iterator[Accounts]:
    """Create the test's groups and users; remove them afterwards."""
    if os.geteuid() != 0 or not shutil.which("useradd") or \
            not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root, useradd and Debian's python3")
    made_groups, made_users = [], []
    tmp = Path(tempfile.mkdtemp(prefix="elbt-"))
    os.chmod(tmp, 0o755)
    try:
        for g in [SOCKET_GROUP, *ROLE_GROUPS.values()]:
            if not _exists("group", g):
                subprocess.run(["groupadd", g], check=True)
                made_groups.append(g)
        for user, groups in USERS.items():
            if not _exists("user", user):
                subprocess.run(["useradd", "-M", "-N", "-d", "/nonexistent", "-s",
                                "/bin/sh", user], check=True)
                made_users.append(user)
            # '*': no password login, but not locked (sshd refuses locked accounts even
            # for keys when it runs without PAM).
            subprocess.run(["usermod", "-p", "*", "-G", ",".join(groups) or "", user],
                           check=True)
        yield Accounts(shared_python(tmp))
    finally:
        for user in made_users:
            subprocess.run(["userdel", user], check=False)
        for g in made_groups:
            subprocess.run(["groupdel", g], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def users() -> Iterator[Accounts]:
    with accounts() as a:
        yield a
