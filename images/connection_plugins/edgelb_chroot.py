"""Ansible connection to a directory tree through chroot(8): how `make image` applies the
edgelb role to the image's root before it becomes a disk. ansible-core has no chroot
connection of its own and community.general is not installed by the role's users."""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import IO

from ansible.errors import AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = r"""
name: edgelb_chroot
short_description: Run tasks inside a directory tree with chroot
description:
  - Runs modules with the tree's own /bin/sh and python; files go in and out through dd.
options:
  remote_addr:
    description: The root directory of the tree.
    type: string
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""

_BUF = 65536


class Connection(ConnectionBase):  # type: ignore[misc]  # ansible is untyped
    """A connection whose host is a directory on the controller."""

    transport = "edgelb_chroot"
    has_pipelining = True
    has_tty = False
    default_user = "root"

    def _connect(self) -> Connection:
        root = self.get_option("remote_addr")
        if os.geteuid() != 0:
            raise AnsibleError("the chroot connection needs root")
        if not os.path.lexists(os.path.join(root, "bin/sh")):
            raise AnsibleError(f"{root} has no /bin/sh: not a root tree")
        self.root = root
        self._connected = True
        return self

    def _popen(self, cmd: str, stdin: int | IO[bytes] = subprocess.PIPE) -> subprocess.Popen[bytes]:
        # Connected already: ConnectionBase's exec_command, put_file and fetch_file, which
        # each method here calls first, connect once (ensure_connect).
        return subprocess.Popen(["chroot", self.root, "/bin/sh", "-c", cmd], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def exec_command(self, cmd: str, in_data: bytes | None = None,
                     sudoable: bool = False) -> tuple[int, bytes, bytes]:
        """Run ``cmd`` with the tree's shell."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        p = self._popen(cmd)
        out, err = p.communicate(in_data)
        return p.returncode, out, err

    @staticmethod
    def _inside(path: str) -> str:
        return shlex.quote(os.path.normpath(os.path.join("/", path)))

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy a controller file into the tree."""
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as f:
            p = self._popen(f"dd of={self._inside(out_path)} bs={_BUF} status=none", stdin=f)
            _, err = p.communicate()
        if p.returncode:
            raise AnsibleError(f"copying {in_path} to {out_path}: {err.decode(errors='replace')}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy a file of the tree to the controller."""
        super().fetch_file(in_path, out_path)
        p = self._popen(f"dd if={self._inside(in_path)} bs={_BUF} status=none")
        out, err = p.communicate()
        if p.returncode:
            raise AnsibleError(f"fetching {in_path}: {err.decode(errors='replace')}")
        with open(out_path, "wb") as f:
            f.write(out)

    def close(self) -> None:
        """Nothing to close: every command is its own process."""
        self._connected = False
