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
# Puts a Snapshot in force; the listeners it could not bind. With all_or_nothing (a
# reload) the Snapshot in force stays whole when any could not be bound.
PutInForce = Callable[[Snapshot, bool], Awaitable[list[str]]]


class ConfigService:
    """Owns the config file and the composition of Snapshots."""

    def __init__(self, path: str, events: EventSink) -> None:
        self.path = path
        self.events = events
        # The operators' backend changes (set once the control plane exists).
        self.edit: Edit = lambda listeners: listeners
        self.put_in_force: PutInForce | None = None
        self.static: Snapshot | None = None  # the file's, as last loaded
        self.dynamic: tuple[Listener, ...] = ()  # learned from the cluster
        self.snapshot: Snapshot | None = None  # in force
        self.draining = False
        self.reload_failures = 0  # reloads refused: config errors, or a bind that failed
        self.bind_errors: tuple[str, ...] = ()  # listeners of the Snapshot not bound
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
                            self.draining, self.reload_failures, self.bind_errors)

    async def reload(self) -> list[str]:
        """Re-read the file (off the event loop); put it in force if valid, else keep the
        running Snapshot. Returns the file's errors (none when the reload took effect)."""
        assert self.snapshot is not None
        try:
            static = await trio.to_thread.run_sync(load_file, self.path)
        except ConfigError as e:
            return self._refused([f"{e.source}: {issue}" for issue in e.issues])
        except Exception as e:  # a fault of ours must not stop the daemon either
            log.exception("reading %s failed", self.path)
            return self._refused([f"{self.path}: cannot be read ({type(e).__name__})"])
        old = self.snapshot
        if old.listeners and not (static.listeners or self.dynamic) and \
                not static.allow_no_listeners:
            return self._refused([f"{self.path}: has no listeners while {len(old.listeners)} "
                                  "serve; set allow_no_listeners: true to stop them all"])
        for changed, what in ((static.workers != old.workers, "workers changed from "
                               f"{old.workers} to {static.workers}"),
                              (static.metrics_bind != old.metrics_bind, "metrics.bind changed"),
                              (static.cluster != old.cluster, "the cluster section changed")):
            if changed:
                log.warning("%s: takes effect on restart", what)
        was, self.static = self.static, static
        snap, errors = await self._publish(force=True, all_or_nothing=True)
        if errors:
            self.static = was
            return self._refused(errors)
        log.info("reloaded: serving snapshot v%d (%s)", snap.version, snap.digest)
        self.events.event("reload", f"reloaded: serving snapshot v{snap.version}")
        return []

    def _refused(self, errors: list[str]) -> list[str]:
        assert self.snapshot is not None
        self.reload_failures += 1
        for error in errors:
            log.error("reload refused, %s", error)
        log.error("reload refused: still serving snapshot v%d", self.snapshot.version)
        self.events.event("reload", f"reload refused: {len(errors)} errors; still serving "
                          f"snapshot v{self.snapshot.version}")
        return errors

    async def set_dynamic(self, listeners: tuple[Listener, ...]) -> None:
        """The listeners learned from the cluster changed."""
        was, self.dynamic = self.dynamic, listeners
        before = self.snapshot
        snap, _ = await self._publish()
        if snap is not before:
            log.info("cluster change: serving snapshot v%d (%s): %d listeners from the "
                     "cluster", snap.version, snap.digest, len(listeners))
            self.events.event("cluster", f"snapshot v{snap.version} from the cluster: "
                              f"{cluster_change(was, listeners)}")

    async def recompose(self) -> None:
        """Put the operators' latest backend changes in force."""
        await self._publish()

    def _compose(self, version: int) -> Snapshot:
        assert self.static is not None
        return replace(self.static, version=version,
                       listeners=self.edit(self.static.listeners + self.dynamic))

    async def _publish(self, force: bool = False, all_or_nothing: bool = False
                       ) -> tuple[Snapshot, list[str]]:
        """Compose the next Snapshot and put it in force, unless it would forward exactly
        as the one in force does (and ``force`` is off). Returns the Snapshot in force and
        the listeners that could not be bound (with ``all_or_nothing``, then the Snapshot
        in force stays as it was)."""
        async with self._applying:
            assert self.snapshot is not None
            assert self.put_in_force is not None
            snap = self._compose(self.snapshot.version + 1)
            if not force and snap.digest == self.snapshot.digest:
                return self.snapshot, []
            errors = await self.put_in_force(snap, all_or_nothing)
            if errors and all_or_nothing:
                return self.snapshot, errors
            # Cluster and operator changes bind what they can; what they cannot stays
            # visible (an alert) until a later Snapshot binds it.
            self.bind_errors = tuple(errors)
            self.snapshot = snap
            return snap, errors


def cluster_change(was: tuple[Listener, ...], now: tuple[Listener, ...], limit: int = 3
                   ) -> str:
    """What a cluster change did to the listeners, in a few words: which came, went or
    changed (names, up to ``limit`` of each)."""
    before = {lst.name: lst for lst in was}
    after = {lst.name: lst for lst in now}
    parts = []
    for what, names in (("added", [n for n in after if n not in before]),
                        ("removed", [n for n in before if n not in after]),
                        ("changed", [n for n in after if n in before
                                     and after[n] != before[n]])):
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more"
                                               if len(names) > limit else "")
            parts.append(f"{what} {shown}")
    return "; ".join(parts) or "backends or addresses changed"

