"""Health verdicts: pure state machines for active checks (rise/fall) and passive
ejection (consecutive connect failures with exponential backoff). Time is passed in."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import PassiveSpec


@dataclass
class ActiveState:
    """A backend's active-check state. It starts up, as HAProxy's servers do, so that a
    restart does not black-hole traffic for ``rise`` intervals; ``fall`` failures take it
    down and ``rise`` successes bring it back."""

    rise: int
    fall: int
    up: bool = True
    streak: int = 0
    last_error: str = ""

    def observe(self, ok: bool, error: str = "") -> bool:
        """Record one check result; True when the up/down verdict changed."""
        if ok == self.up:
            self.streak = 0
            if ok:
                self.last_error = ""
            return False
        if not ok:
            self.last_error = error
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.up = ok
            self.streak = 0
            return True
        return False


@dataclass
class PassiveState:
    """Passive ejection from real traffic: after ``failures`` consecutive failed connects
    the backend is ejected; each ejection in a row doubles the backoff."""

    spec: PassiveSpec
    consecutive: int = 0
    ejections: int = 0
    ejected_until: float = 0.0

    def failure(self, now: float) -> bool:
        """Record a failed connect; True when this failure ejected the backend."""
        if self.spec.failures <= 0:
            return False
        self.consecutive += 1
        if self.consecutive >= self.spec.failures:
            backoff = min(self.spec.backoff * (2 ** self.ejections), self.spec.max_backoff)
            self.ejected_until = now + backoff
            self.ejections += 1
            self.consecutive = 0
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.ejections = 0

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


def http_verdict(response_head: bytes, expect_status: int) -> tuple[bool, str]:
    """Judge an HTTP health-check response by its status line."""
    line = response_head.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False, f"not an HTTP response: {line[:60]!r}"
    status = int(parts[1])
    if status != expect_status:
        return False, f"status {status}, expected {expect_status}"
    return True, ""
