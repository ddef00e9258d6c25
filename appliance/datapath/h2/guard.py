"""What one HTTP/2 client connection may do before it is sent away. Pure.

The HTTP/2 attacks that cost a server more than the attacker (rapid reset,
CVE-2023-44487; SETTINGS and PING floods) are each legal frame by frame: only their
rate tells them apart. Each kind is counted over a fixed window, and past its limit the
connection gets GOAWAY ENHANCE_YOUR_CALM, as HAProxy's "glitches" and nginx's
per-connection limits do.
"""

from __future__ import annotations

WINDOW = 10.0  # seconds


class FloodGuard:
    """Counts of ``limits``' kinds over the current window."""

    def __init__(self, limits: dict[str, int], start: float) -> None:
        self.limits = limits
        self.since = start
        self.counts: dict[str, int] = {}

    def note(self, kind: str, now: float) -> bool:
        """One more of ``kind`` at ``now``; True when that is over its limit."""
        if now - self.since >= WINDOW:
            self.since = now
            self.counts.clear()
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        return n > self.limits[kind]
