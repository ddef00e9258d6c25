"""What happened, for the events view and ``ctl events``: start, reloads, health, HA,
worker restarts, actions, drain. A ring of the last ``MAX_EVENTS``; every service records
into it (it is their ``EventSink``) and followers wait for the next one."""

from __future__ import annotations

import collections
import time
from typing import Any

import trio

MAX_EVENTS = 2000


class Events:
    """The events ring; each event gets the next sequence number."""

    def __init__(self, keep: int = MAX_EVENTS) -> None:
        self.ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.seq = 0
        self._new = trio.Event()

    def event(self, kind: str, message: str, **fields: Any) -> None:
        """Record an event (HA state, reloads, health, actions ...)."""
        self.seq += 1
        self.ring.append({"seq": self.seq, "time": time.time(), "kind": kind,
                          "message": message, **fields})
        self._new.set()
        self._new = trio.Event()

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [e for e in self.ring if e["seq"] > seq]

    async def wait(self, seq: int) -> None:
        """Until there is an event after ``seq``."""
        if self.seq <= seq:
            await self._new.wait()
