"""Cluster sync as a service: follow the cluster (``kube``), translate what it holds
(``translate``, pure), hand the listeners learned to the config service, and, while this
box leads, write status and Events back (``status``). An API outage keeps the last good
state serving: nothing learned is dropped while the watches retry."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from kubernetes import client

from ..files import replace_file
from ..logs import Causes
from ..model import ClusterSpec, Listener
from ..views import SyncView, WatchView
from .ipam import Ipam
from .kube import MAX_BACKOFF, ClusterSync, api_client
from .status import StatusBook, StatusChange, post_events, status_changes, write_status
from .translate import Cluster, Problem, Translation, seed_ipam, translate

log = logging.getLogger("edgelb")


def write_secret_file(path: str, content: bytes) -> None:
    """Write a certificate or key from a Secret, readable by edgelb only (in ``tls_dir``,
    which the daemon checked it can trust at start)."""
    if os.path.exists(path):
        return  # named by content hash: the same name is the same content
    replace_file(path, content, 0o600)


class ClusterService:
    """Follows one cluster; ``on_listeners`` gets every new set of learned listeners."""

    def __init__(self, spec: ClusterSpec, is_leader: Callable[[], bool],
                 on_listeners: Callable[[tuple[Listener, ...]], Awaitable[None]]) -> None:
        self.spec = spec
        self.is_leader = is_leader
        self.on_listeners = on_listeners
        self.ipam = Ipam(spec.address_pools)
        self.book = StatusBook()
        self.sync: ClusterSync | None = None
        self.api: client.ApiClient | None = None  # the client for writes (status, Events)
        self.translation: Translation | None = None
        self.problems_seen: set[Problem] = set()
        self._seeded = False
        self._nursery: trio.Nursery | None = None
        # Set when the service stops: a write thread left behind stops at its next object.
        self._stop = threading.Event()
        self._warn = Causes(logging.getLogger("edgelb.sync"))
        self._retrying = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Follow until cancelled; started once every collection is being followed."""
        self.api = await trio.to_thread.run_sync(api_client, self.spec)
        self.sync = ClusterSync(self.spec, self._changed, self._quiet)
        log.info("following the cluster (%s)", self.spec.kubeconfig or "in-cluster")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.sync.run)
                task_status.started()
        finally:
            self._stop.set()

    def view(self) -> SyncView:
        sync = self.sync
        return SyncView(synced=bool(sync and sync.synced), changes=sync.changes if sync else 0,
                        watches=tuple(WatchView(f.name, f.state, f.detail, f.errors, f.since)
                                      for f in list(sync.follows if sync else ())),
                        vips=self.ipam.held(), status_writes=self.book.writes,
                        problems=len(self.problems_seen))

    def write_now(self) -> None:
        """Write what we serve (this box just became the leader)."""
        if self.sync is not None and self.sync.synced:
            self._changed(self.sync.cluster)

    def _changed(self, cluster: Cluster) -> None:
        """A debounced change of the cluster: translate, hand the listeners on, then write
        status and Events (only the leader writes)."""
        if not self._seeded:
            seed_ipam(cluster, self.spec, self.ipam)
            self._seeded = True
        t = translate(cluster, self.spec, self.ipam)
        self.translation = t
        for path, content in t.tls_files.items():
            write_secret_file(path, content)
        assert self._nursery is not None
        self._nursery.start_soon(self.on_listeners, tuple(t.listeners))
        new = set(t.problems) - self.problems_seen
        for p in sorted(new, key=str):
            log.warning("%s %s/%s: %s: %s", p.kind, p.namespace, p.name, p.reason, p.message)
        self.problems_seen = set(t.problems)
        if self.is_leader():
            self._nursery.start_soon(self._write_back, cluster, t, sorted(new, key=str))

    def _quiet(self, collection: str, obj: dict[str, Any]) -> None:
        """A Service or Ingress changed only outside what translation reads: confirm a
        status we wrote, or put ours back if someone else changed it."""
        t = self.translation
        if t is None or collection not in ("services", "ingresses"):
            return
        kind = "Service" if collection == "services" else "Ingress"
        meta = obj.get("metadata") or {}
        k = (kind, meta.get("namespace", ""), meta.get("name", ""))
        want = t.status.get(k)
        if want is None:
            return
        want = list(dict.fromkeys(want))
        if self.book.needs_write(k, obj, want, self.is_leader()):
            assert self._nursery is not None
            self._nursery.start_soon(self._write, [(*k, want)])

    def ours(self) -> set[str]:
        """The addresses edgelb hands out: a status showing one is ours to take back."""
        return set(self.ipam.pool) | {a[0] for a in (*self.spec.ingress_http,
                                                     *self.spec.ingress_https)}

    async def _write_back(self, cluster: Cluster, t: Translation,
                          problems: list[Problem]) -> None:
        changes = status_changes(cluster, t, self.ours(), self.book)
        if changes:
            await self._write(changes)
        if problems:
            assert self.api is not None
            await trio.to_thread.run_sync(post_events, self.api, problems, "edgelb",
                                          self._stop, self._warn, abandon_on_cancel=True)

    async def _write(self, changes: list[StatusChange]) -> list[StatusChange]:
        """Write ``changes`` in a thread; returns those not written, which are tried again
        with backoff. A stop does not wait for the thread (it stops at its next object)."""
        assert self.api is not None  # set before the sync starts
        failed = await trio.to_thread.run_sync(write_status, self.api, changes, self._stop,
                                               self._warn, abandon_on_cancel=True)
        self.book.written(len(changes) - len(failed), failed)
        if failed and not self._retrying and self._nursery is not None:
            self._retrying = True
            self._nursery.start_soon(self._write_again)
        again = set(failed)
        return [c for c in changes if c[:3] in again]

    async def _write_again(self) -> None:
        """Failed status writes again, with backoff, until none fails. Nothing else would
        make them: a cluster that does not change (an API back after an outage, with the
        same objects) brings no new translation."""
        delay = 1.0
        try:
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                t, sync = self.translation, self.sync
                if not self.is_leader() or t is None or sync is None:
                    return  # a box that becomes the leader writes everything anyway
                changes = status_changes(sync.cluster, t, self.ours(), self.book)
                if not changes or not await self._write(changes):
                    return
        finally:
            self._retrying = False
