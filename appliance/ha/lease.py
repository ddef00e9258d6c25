"""Leader election on a coordination.k8s.io Lease, for sites where VRRP is not allowed.
Pure: the decision from the Lease as read and the time; the daemon does the I/O.

The holder renews every ``duration / 3``; anyone may take the Lease once
``renewTime + leaseDurationSeconds`` has passed (or it was released). Writes carry the
resourceVersion they read, so two candidates that decide at once cannot both win: the
API server refuses the second with 409. A leader that cannot renew steps down when its
own lease would have expired, before anyone else may take it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


def micro_time(t: float) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float:
    """A Kubernetes (Micro)Time as epoch seconds; 0 when absent or unreadable. Clients
    re-serialize times (``...Z`` or ``...+00:00``), so any RFC 3339 form is read."""
    if not text:
        return 0.0
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Decision:
    """What to do: ``action`` is create, renew, acquire, release or wait; ``body`` is the
    Lease to write (None for wait)."""

    action: str
    body: Obj | None
    holder: str | None  # who holds the Lease as read


def decide(identity: str, name: str, namespace: str, lease: Obj | None, now: float,
           duration: float, release: bool = False) -> Decision:
    """The next step for ``identity`` given the Lease as read (None: it does not exist)."""
    spec: Obj = (lease or {}).get("spec") or {}
    holder = spec.get("holderIdentity") or None
    renewed = parse_time(spec.get("renewTime"))
    held_for = float(spec.get("leaseDurationSeconds") or duration)
    expired = holder is None or now >= renewed + held_for
    base_meta: Obj = {"name": name, "namespace": namespace}
    if lease is not None:
        base_meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
    if release:
        if holder != identity or lease is None:
            return Decision("wait", None, holder)
        body = {"metadata": base_meta, "spec": dict(spec, holderIdentity=None,
                                                     renewTime=micro_time(now))}
        return Decision("release", body, holder)
    mine = dict(spec, holderIdentity=identity, leaseDurationSeconds=int(duration),
                renewTime=micro_time(now))
    if lease is None:
        mine.update(acquireTime=micro_time(now), leaseTransitions=0)
        return Decision("create", {"metadata": base_meta, "spec": mine}, None)
    if holder == identity:
        return Decision("renew", {"metadata": base_meta, "spec": mine}, holder)
    if expired:
        mine.update(acquireTime=micro_time(now),
                    leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1)
        return Decision("acquire", {"metadata": base_meta, "spec": mine}, holder)
    return Decision("wait", None, holder)


class Leadership:
    """Whether we lead, by the last Lease write that succeeded: a leader that cannot
    renew stops leading when its lease runs out (``now`` is wall-clock seconds)."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.renewed_at: float | None = None
        self.holder: str | None = None

    def won(self, now: float) -> None:
        self.renewed_at = now

    def lost(self) -> None:
        self.renewed_at = None

    def leading(self, now: float | None = None) -> bool:
        if self.renewed_at is None:
            return False
        # Step down a little before the others may take over (clock skew, slow writes).
        return (now if now is not None else time.time()) < \
            self.renewed_at + self.duration * 0.9
