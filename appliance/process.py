"""What an edgelb process asks of its host: descriptors, memory given back after a
burst, and systemd's notify protocol (READY, RELOADING, STOPPING, WATCHDOG) when it runs
as a Type=notify unit."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
from collections.abc import Callable

import trio

# The box, not a peer, is out of something: descriptors, buffers, memory. Such a failure
# says nothing of a backend's health, and passes once flows close.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def exhausted(e: OSError) -> bool:
    """Whether ``e`` is this process running out of descriptors or memory."""
    return e.errno in EXHAUSTED


def raise_fd_limit(want: int = 1 << 20) -> tuple[int, int, str]:
    """Lift RLIMIT_NOFILE: every flow costs two descriptors and two more for its splice
    pipes while it moves data. As root (CAP_SYS_RESOURCE) the hard limit is raised too,
    up to ``fs.nr_open``, as HAProxy does from its maxconn; otherwise soft goes to hard.
    Returns (soft, hard) as they are now, and why raising failed ("" when it did not)."""
    failed = ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = min(want, int(f.read()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError) as e:
            failed = f"the hard limit stays {hard}: {e}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            failed = f"the soft limit stays {soft}: {e}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard, failed


def sd_notify(state: str) -> None:
    """Tell systemd about a state change when run as Type=notify; a no-op otherwise."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    import sdnotify  # only under systemd: its import is not paid otherwise

    sdnotify.SystemdNotifier().notify(state)


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (``WATCHDOG_USEC``) when it is watching this
    process, as sd_watchdog_enabled(3) advises; None otherwise."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def ping_watchdog(every: float) -> None:
    """WATCHDOG=1 while the control process's trio loop runs: a hung loop (and with it
    reloads, health checks and the control API) gets the unit restarted by systemd."""
    while True:
        sd_notify("WATCHDOG=1")
        await trio.sleep(every)


class Ebb:
    """When a burst of flows has ebbed: the open flows fell to half of a peak of at least
    ``least`` since the last ebb. Then the memory the burst held is free, but the C
    allocator keeps it for the process (glibc returns only what is at the top of its
    heaps), so the process would stay at its high-water mark: HAProxy trims its pools
    then too."""

    def __init__(self, least: int = 1000) -> None:
        self.least = least
        self.peak = 0

    def ebbed(self, open_now: int) -> bool:
        """Whether the flows ebbed since the last call that said so (``open_now`` open);
        the peak then starts again from ``open_now``."""
        self.peak = max(self.peak, open_now)
        if self.peak >= self.least and open_now <= self.peak // 2:
            self.peak = open_now
            return True
        return False


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None) \
            if name else None
    except OSError:
        return None
    return trim


_TRIM = _malloc_trim()


def give_back_memory() -> bool:
    """Return the C allocator's free memory to the OS (glibc's ``malloc_trim``); False
    where there is no such call (another libc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
