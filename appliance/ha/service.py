"""High availability as a service: who leads (and so writes status to the cluster), and
what an operator may do about it. Three modes answer the same calls: ``Standalone`` (this
box always leads), ``LeaseRunner`` (a coordination.k8s.io Lease) and ``VrrpRunner``
(VRRPv3, the VIPs on the master)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

import trio

from ..model import HaSpec, Snapshot
from ..views import ActionRefused, HaView, SyncView

# The operator's choices; "" is none (the configured priority, preemption decides).
OVERRIDES = ("demote", "promote")


class HaService(Protocol):
    def is_leader(self) -> bool:
        """Whether this box leads now (and may write status)."""

    def view(self) -> HaView: ...

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Take part until cancelled."""

    async def act(self, action: str, who: str) -> str:
        """An operator's ``failover``, ``demote``, ``promote`` or ``auto``; returns what
        happened, raises ActionRefused when it cannot be done."""

    async def stop(self) -> None:
        """On a clean stop: hand leadership over at once."""


class Standalone:
    """No peer: this box always leads."""

    def is_leader(self) -> bool:
        return True

    def view(self) -> HaView:
        return HaView()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()

    async def act(self, action: str, who: str) -> str:
        raise ActionRefused(409, "ha.mode is standalone: there is no peer to fail over to")

    async def stop(self) -> None:
        pass


def tracked_failures(ha: HaSpec, snap: Snapshot | None, down: Collection[tuple[str, str]],
                     sync: SyncView | None, now: float) -> list[str]:
    """The tracked conditions that fail now, each as a reason: a listener whose actively
    checked backends are all down, the cluster API unreachable for too long."""
    out = []
    for name in ha.track_listeners:
        lst = snap.listener(name) if snap else None
        if lst is not None and lst.no_healthy_backend(down):
            out.append(f"listener {name} has no healthy backend")
    if ha.track_api_timeout and sync is not None:
        stale = sync.stale(now, ha.track_api_timeout)
        if stale:
            out.append(f"cluster API unreachable for over {ha.track_api_timeout:g}s "
                       f"({', '.join(stale)})")
    return out
