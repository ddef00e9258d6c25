"""Rates of the daemon's counters, on the daemon's own clock: sampled once a second by
the control plane, each rate taken over the last ``WINDOW`` seconds. A console that asks
twice in a row gets the same rate, not a count divided by the gap between its asks (a
refresh right after an action showed 366/s for a real 15/s). Pure: the caller gives the
time and the counters."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..views import Traffic

# Kernel counters are read every 2 s and worker counters come every 0.5 s: a window of
# whole multiples of both holds the same number of their steps each time, so a steady
# load reads steady.
WINDOW = 4.0
# The points of history kept for the console's graphs: a minute at one a second.
HISTORY = 60


@dataclass(frozen=True)
class Counts:
    """One listener's counters at one moment: new connections, requests, bytes."""

    connections: int = 0
    requests: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Rate:
    """Per second over the window."""

    connections: float = 0.0
    requests: float = 0.0
    bytes: float = 0.0

    def as_json(self) -> dict[str, float]:
        return {"connections": round(self.connections, 1),
                "requests": round(self.requests, 1), "bytes": round(self.bytes)}


def counts(traffic: Traffic) -> dict[str, Counts]:
    """Each listener's counters out of the datapath's."""
    out = {}
    for name, st in traffic.items():
        moved = sum(b.bytes_in + b.bytes_out for b in st.backends.values())
        out[name] = Counts(st.accepted, st.requests, moved)
    return out


@dataclass
class RateMeter:
    """Samples in, rates out: per listener, in total, and the last minute of totals."""

    window: float = WINDOW
    samples: deque[tuple[float, dict[str, Counts]]] = field(default_factory=deque)
    taken: int = 0  # samples so far: a reader sees whether the rates moved on
    listeners: dict[str, Rate] = field(default_factory=dict)
    total: Rate = Rate()
    # Flows (new connections + requests) and bytes per second, a point per sample.
    history: deque[tuple[float, float]] = field(
        default_factory=lambda: deque([(0.0, 0.0)] * HISTORY, maxlen=HISTORY))

    def sample(self, now: float, current: dict[str, Counts]) -> None:
        """Take the counters as they are at ``now`` (seconds, monotonic)."""
        self.samples.append((now, current))
        # The window starts at the newest sample about a window old: the samples come a
        # second apart give or take the loop's jitter, and waiting for one at least a
        # full window old would make it a second longer every other time.
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window - 0.5:
            self.samples.popleft()
        self.taken += 1
        then, before = self.samples[0]
        span = now - then
        if span <= 0:
            return
        rates = {}
        for name, c in current.items():
            b = before.get(name, Counts())
            # A counter that went down started again (a listener removed and added back,
            # a worker respawned): its rate restarts from zero, never goes negative.
            rates[name] = Rate(max(0, c.connections - b.connections) / span,
                               max(0, c.requests - b.requests) / span,
                               max(0, c.bytes - b.bytes) / span)
        self.listeners = rates
        self.total = Rate(sum(r.connections for r in rates.values()),
                          sum(r.requests for r in rates.values()),
                          sum(r.bytes for r in rates.values()))
        self.history.append((self.total.connections + self.total.requests, self.total.bytes))

    def as_json(self) -> dict[str, object]:
        """The totals, the window and the history, for the status."""
        return {**self.total.as_json(), "window": self.window, "samples": self.taken,
                "flows_history": [round(f, 1) for f, _ in self.history],
                "bytes_history": [round(b) for _, b in self.history]}
