"""Files the daemon writes (the control socket, the audit log, the operators' state,
certificates from the cluster), only in directories it can trust: anyone else who can
write into a directory can plant a symbolic link where the daemon will write, or swap the
socket a root ``edgelb ctl`` talks to. The files themselves are opened without following
a symbolic link."""

from __future__ import annotations

import os
import stat


def trusted_dir(path: str, mode: int = 0o755) -> str:
    """``path`` as a directory to write into: created with ``mode`` when missing;
    refused (PermissionError naming why) when it is a symbolic link or not a directory,
    is owned by someone other than root or this process's user, or is writable by its
    group or by others."""
    os.makedirs(path, mode=mode, exist_ok=True)
    st = os.lstat(path)
    why = ""
    if stat.S_ISLNK(st.st_mode):
        why = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        why = "it is not a directory"
    elif st.st_uid not in (0, os.geteuid()):
        why = f"it is owned by uid {st.st_uid}, not by root or this user"
    elif st.st_mode & 0o022:
        why = f"it is writable by its group or others (mode {st.st_mode & 0o777:o})"
    if why:
        raise PermissionError(f"{path}: not a directory edgelb writes into: {why}")
    return path


def append_line(path: str, line: str, mode: int = 0o640) -> None:
    """Append ``line`` to ``path`` (created with ``mode``), never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "a") as f:
        f.write(line)


def replace_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole (a temporary file renamed over it), never through a symlink."""
    tmp = f"{path}.tmp"
    try:
        os.unlink(tmp)  # a leftover (or a planted link) is not written through
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
