"""One WATCH of the simulated API server: the objects as of the resourceVersion asked
for (all of them for none or 0), then every change from the history as it happens, with
bookmarks, as chunked JSON lines; 410 Gone once the history was compacted past it."""

from __future__ import annotations

import bisect
import copy
import json
import time
from collections.abc import Callable
from io import BufferedIOBase
from typing import Any

from .store import ApiError, Faults, Kind, Store

Match = Callable[[str, dict[str, Any]], bool]


class Watch:
    """Writes one watch's events to ``out`` (the response, its head already sent)."""

    def __init__(self, store: Store, faults: Faults, bookmark_interval: float, out: BufferedIOBase,
                 kind: Kind, match: Match, q: dict[str, str]) -> None:
        self.store = store
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.out = out
        self.kind = kind
        self.match = match
        self.rv_text = q.get("resourceVersion", "")
        self.deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
        self.bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        self.epoch = faults.watch_epoch  # a dropped watch (a fault) bumps it

    def run(self) -> None:
        store = self.store
        initial: list[dict[str, Any]] | None
        with store.lock:
            if self.rv_text in ("", "0"):
                initial = [copy.deepcopy(o) for (p, _, _), o in sorted(store.objects.items())
                           if self.match(p, o)]
                since = store.rv
            else:
                initial = []
                since = int(self.rv_text)
                if since + 1 < store.compacted:
                    initial = None
        try:
            if initial is None:
                self.emit({"type": "ERROR", "object": ApiError(
                    410, "Expired", f"too old resource version: {since} "
                    f"({store.compacted - 1})").status()})
                return
            for obj in initial:
                self.emit({"type": "ADDED", "object": obj})
            self._follow(since)
        finally:
            try:
                self.out.write(b"0\r\n\r\n")
                self.out.flush()
            except OSError:
                pass

    def emit(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.out.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.out.flush()

    def _follow(self, since: int) -> None:
        """The changes after ``since`` as they happen, with bookmarks, until the deadline,
        a dropped watch or a compaction past ``since``."""
        last_bookmark = time.monotonic()
        while True:
            got = self._changes(since, last_bookmark if self.bookmarks else None)
            if got is None:
                return
            pending, current = got
            for rv, plural, event, obj in pending:
                since = rv
                if self.match(plural, obj):
                    self.emit({"type": event, "object": obj})
            if time.monotonic() >= self.deadline:
                return
            if self.bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval:
                since = max(since, current)
                self.emit({"type": "BOOKMARK", "object": {
                    "kind": self.kind.kind, "apiVersion": self.kind.api_version,
                    "metadata": {"resourceVersion": str(since)}}})
                last_bookmark = time.monotonic()

    def _changes(self, since: int, last_bookmark: float | None
                 ) -> tuple[list[Any], int] | None:
        """Wait for changes after ``since`` (or the deadline, or a bookmark being due):
        (the changes, the resourceVersion now), or None when the watch must end (with a
        410 sent for a compaction)."""
        store = self.store
        with store.lock:
            while True:
                if self.faults.watch_epoch != self.epoch:
                    return None
                if since + 1 < store.compacted:
                    break
                start = bisect.bisect_right(store.history, since, key=lambda h: h[0])
                pending = store.history[start:]
                now = time.monotonic()
                if pending or now >= self.deadline or (
                        last_bookmark is not None
                        and now - last_bookmark >= self.bookmark_interval):
                    return pending, store.rv
                store.lock.wait(min(self.deadline - now, 0.5))
        self.emit({"type": "ERROR", "object": ApiError(
            410, "Expired", "too old resource version").status()})
        return None
