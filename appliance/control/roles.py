"""Who may do what: the caller's uid (from SO_PEERCRED) and that user's groups give a role.
Root and the daemon's own user are admins; the rest by group membership."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from ..model import ControlSpec

ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may


@dataclass(frozen=True)
class Caller:
    """A connected client of the control socket."""

    pid: int
    uid: int
    gid: int
    user: str
    role: str | None  # None: not allowed in

    def may(self, role: str) -> bool:
        """Whether the caller holds ``role`` or a stronger one."""
        return self.role is not None and ROLES.index(self.role) >= ROLES.index(role)


class _HasSockopt(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def peer_credentials(sock: _HasSockopt) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel
    (SO_PEERCRED: as of connect, so a caller cannot pass its socket to someone else)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def role_of(uid: int, gid: int, spec: ControlSpec) -> tuple[str, str | None]:
    """(user name, role) for a uid: root and the daemon's own user are admins; otherwise
    the strongest role whose group the user belongs to (primary or supplementary, as the
    group database has it now, so a membership change needs no restart)."""
    try:
        user = pwd.getpwuid(uid).pw_name
        gids = os.getgrouplist(user, gid)
    except KeyError:
        user, gids = str(uid), [gid]
    if uid == 0 or uid == os.getuid():
        return user, "admin"
    names = set()
    for g in gids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except KeyError:
            continue
    for role, group in (("admin", spec.admin_group), ("operator", spec.operator_group),
                        ("viewer", spec.viewer_group)):
        if group in names:
            return user, role
    return user, None


def identify(sock: _HasSockopt, spec: ControlSpec) -> Caller:
    """The caller on ``sock`` with its role."""
    pid, uid, gid = peer_credentials(sock)
    user, role = role_of(uid, gid, spec)
    return Caller(pid, uid, gid, user, role)
