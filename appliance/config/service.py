"""Config and reload, as a service: the Snapshot in force is the config file's listeners
plus those learned from the cluster, with the operators' backend changes applied. Each
new composition gets the next version and is handed to ``put_in_force`` (the datapath
and the health checks) one at a time; a bad reload leaves the running Snapshot as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from ..model import Listener, Snapshot
from ..views import EventSink, SnapshotView
from .build import load_file
from .source import ConfigError

log = logging.getLogger("edgelb")

Edit = Callable[[tuple[Listener, ...]], tuple[Listener, ...]]


class ConfigService:
    """Owns the config file and the composition of Snapshots."""

    def __init__(self, path: str, events: EventSink) -> None:
        self.path = path
        self.events = events
        # The operators' backend changes (set once the control plane exists).
        self.edit: Edit = lambda listeners: listeners
        self.put_in_force: Callable[[Snapshot], Awaitable[None]] | None = None
        self.static: Snapshot | None = None  # the file's, as last loaded
        self.dynamic: tuple[Listener, ...] = ()  # learned from the cluster
        self.snapshot: Snapshot | None = None  # in force
        self.draining = False
        self._applying = trio.Lock()

    def load(self) -> Snapshot:
        """The file as it is (raises ConfigError): what the daemon needs before the first
        Snapshot can be composed (the control socket, the operators' saved changes)."""
        self.static = load_file(self.path, version=1)
        return self.static

    def compose_first(self) -> Snapshot:
        """Snapshot v1: the file's listeners with the operators' changes."""
        self.snapshot = self._compose(1)
        return self.snapshot

    def view(self) -> SnapshotView:
        snap = self.snapshot
        raw = self.static.listeners + self.dynamic if self.static else ()
        return SnapshotView(snap.version if snap else 0, snap.digest if snap else "",
                            snap.workers if snap else 0, raw, len(self.dynamic), self.path,
                            self.draining)

    async def reload(self) -> list[str]:
        """Re-read the file (off the event loop); put it in force if valid, else keep the
        running Snapshot. Returns the file's errors (none when the reload took effect)."""
        assert self.snapshot is not None
        try:
            static = await trio.to_thread.run_sync(load_file, self.path)
        except ConfigError as e:
            for issue in e.issues:
                log.error("reload refused, %s: %s", e.source, issue)
            log.error("reload refused: still serving snapshot v%d", self.snapshot.version)
            self.events.event("reload", f"reload refused: {len(e.issues)} config errors; "
                              f"still serving snapshot v{self.snapshot.version}")
            return [f"{e.source}: {issue}" for issue in e.issues]
        old = self.snapshot
        for changed, what in ((static.workers != old.workers, "workers changed from "
                               f"{old.workers} to {static.workers}"),
                              (static.metrics_bind != old.metrics_bind, "metrics.bind changed"),
                              (static.cluster != old.cluster, "the cluster section changed")):
            if changed:
                log.warning("%s: takes effect on restart", what)
        self.static = static
        snap = await self._publish(force=True)
        log.info("reloaded: serving snapshot v%d (%s)", snap.version, snap.digest)
        self.events.event("reload", f"reloaded: serving snapshot v{snap.version}")
        return []

    async def set_dynamic(self, listeners: tuple[Listener, ...]) -> None:
        """The listeners learned from the cluster changed."""
        self.dynamic = listeners
        before = self.snapshot
        snap = await self._publish()
        if snap is not before:
            log.info("cluster change: serving snapshot v%d (%s): %d listeners from the "
                     "cluster", snap.version, snap.digest, len(listeners))

    async def recompose(self) -> None:
        """Put the operators' latest backend changes in force."""
        await self._publish()

    def _compose(self, version: int) -> Snapshot:
        assert self.static is not None
        return replace(self.static, version=version,
                       listeners=self.edit(self.static.listeners + self.dynamic))

    async def _publish(self, force: bool = False) -> Snapshot:
        """Compose the next Snapshot and put it in force, unless it would forward exactly
        as the one in force does (and ``force`` is off). Returns the Snapshot in force."""
        async with self._applying:
            assert self.snapshot is not None
            assert self.put_in_force is not None
            snap = self._compose(self.snapshot.version + 1)
            if force or snap.digest != self.snapshot.digest:
                await self.put_in_force(snap)
                self.snapshot = snap
            return self.snapshot
