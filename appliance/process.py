"""What an edgelb process asks of its host: descriptors, and systemd's notify protocol
(READY, RELOADING, STOPPING, WATCHDOG) when it runs as a Type=notify unit."""

from __future__ import annotations

import os
import resource

import trio


def raise_fd_limit(want: int = 1 << 20) -> int:
    """Lift RLIMIT_NOFILE: every flow costs two descriptors and two more for its splice
    pipes while it moves data. As root (CAP_SYS_RESOURCE) the hard limit is raised too,
    up to ``fs.nr_open``, as HAProxy does from its maxconn; otherwise soft goes to hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = min(want, int(f.read()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


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
