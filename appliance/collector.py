"""The cycle collector held off while work that makes no cyclic garbage runs: reading a
config (a parse allocates hundreds of thousands of objects, and each collection they set
off walked the whole heap: at 5,000 listeners four pauses of ~95 ms per reload, holding
the GIL and so stalling the event loop and its traffic) and putting kernel rules in
force (a collection in the middle doubled the time to the kernel)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_pause_lock = threading.Lock()
_pauses = 0  # blocks under way that hold the collector off
_paused = False  # whether it was on when the first of them began


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """No cycle collection in this block, in any thread (nested and concurrent blocks
    allowed); the collector runs after, if it was on."""
    global _pauses, _paused
    with _pause_lock:
        if _pauses == 0:
            _paused = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _paused:
                gc.enable()
