"""The kernel's command-line tools (nft, conntrack, conntrackd, ip), each run with a
bound on its time. One that hangs raises TimeoutError, an OSError like a tool that is
missing, so every caller's ``except OSError`` covers both: subprocess's own
TimeoutExpired is not an OSError, and a hung ``conntrack -L`` would have ended the task
that reads the kernel's counters and flows, and the daemon with it."""

from __future__ import annotations

import subprocess


def run_tool(cmd: list[str], timeout: float,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end (text in and out, both captured) within ``timeout``."""
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{cmd[0]} did not finish within {timeout:g}s") from None
