"""The daemon's side of the control API (the API's ``Plant``): what the endpoints show,
read from the views the services publish, and the actions, carried out through the
operations the daemon hands over. The operators' backend changes and the audit log live
here; the events ring is ``events``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import __version__
from ..files import replace_file
from ..views import (
    FLOW_FIELDS,
    FlowRow,
    HaView,
    HealthView,
    PathsView,
    SnapshotView,
    SyncView,
    Traffic,
)
from .admin import AdminError, AdminState, admin_alerts
from .api import Streams
from .audit import AuditLog
from .events import Events
from .present import listener_detail, listener_summary, route_views
from .rates import RateMeter, counts
from .roles import Caller

log = logging.getLogger("edgelb.control")

# Each backend action and the state it sets (weight keeps the state).
_BACKEND_ACTIONS = {"drain": "drain", "undrain": "ready", "disable": "maint",
                    "enable": "ready", "weight": None}


@dataclass(frozen=True)
class Views:
    """How the control plane reads the services: each call returns a fresh view (the
    counters from ``traffic`` are read only: the kernel's are shared between calls)."""

    snapshot: Callable[[], SnapshotView]
    traffic: Callable[[], Traffic]
    health: Callable[[], HealthView]
    ha: Callable[[], HaView]
    sync: Callable[[], SyncView | None]
    flows: Callable[[], Awaitable[list[FlowRow]]]
    paths: Callable[[], PathsView] = PathsView


@dataclass(frozen=True)
class Operations:
    """What the control plane may ask of the services."""

    reload: Callable[[], Awaitable[list[str]]]  # the config file's errors, if refused
    recompose: Callable[[], Awaitable[None]]  # put the operators' changes in force
    ha_action: Callable[[str, str], Awaitable[str]]  # (action, who) -> what happened
    cut_flow: Callable[[str], Awaitable[bool]]  # a flows row's id -> whether one was cut


class ControlPlane:
    """Implements the API's ``Plant``."""

    def __init__(self, events: Events, admin: AdminState, views: Views, ops: Operations,
                 audit_log: AuditLog | None = None, state_file: str = "") -> None:
        self.events_ring = events
        self.admin = admin  # the operators' changes, restored from ``state_file``
        self.views = views
        self.ops = ops
        self.audit_log = audit_log
        self.state_file = state_file  # where the operators' changes are kept
        self.started = time.time()
        self.streams = Streams()
        self.rates = RateMeter()

    async def keep_rates(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Sample the counters once a second, for the rates the API shows."""
        task_status.started()
        while True:
            self.rates.sample(time.monotonic(), counts(self.views.traffic()))
            await trio.sleep(1)

    # -- reads ---------------------------------------------------------------------------

    def events(self, since: int) -> list[dict[str, Any]]:
        return self.events_ring.since(since)

    async def wait_event(self, since: int) -> None:
        await self.events_ring.wait(since)

    def status(self) -> dict[str, Any]:
        snap = self.views.snapshot()
        totals = self.views.traffic()
        down = self.views.health().down
        backends = [b for st in totals.values() for b in st.backends.values()]
        # Only a listener with a backend down can have none healthy (at 5,000 listeners,
        # asking each one cost 12 ms of the loop per request).
        with_down = {name for name, _ in down}
        alerts = [f"listener {lst.name}: no healthy backend" for lst in snap.listeners
                  if lst.name in with_down and lst.no_healthy_backend(down)]
        alerts += [f"{error} (not serving)" for error in snap.bind_errors]
        ha = self.views.ha()
        alerts += ha.alerts
        sync = self.views.sync()
        if sync is not None:
            alerts += [f"cluster watch {w.name}: {w.state} {w.detail}".rstrip()
                       for w in sync.watches if w.state != "synced"]
        alerts += admin_alerts(self.admin.backends)
        return {
            "version": __version__, "pid": os.getpid(), "config": snap.config_path,
            "uptime": round(time.time() - self.started, 1),
            "snapshot": {"version": snap.version, "digest": snap.digest,
                         "listeners": len(snap.listeners), "from_cluster": snap.from_cluster},
            "workers": snap.workers, "draining": snap.draining,
            "reload_failures": snap.reload_failures,
            "datapath": self.views.paths().as_json(),
            "ha": ha.as_json(time.time()), "sync": sync.as_json() if sync else None,
            "totals": {"accepted": sum(st.accepted for st in totals.values()),
                       "requests": sum(st.requests for st in totals.values()),
                       "active": sum(b.active for b in backends),
                       "bytes_in": sum(b.bytes_in for b in backends),
                       "bytes_out": sum(b.bytes_out for b in backends)},
            "rates": self.rates.as_json(),
            "alerts": alerts, "last_event": self.events_ring.seq,
        }

    def listeners(self) -> list[dict[str, Any]]:
        totals = self.views.traffic()
        down = self.views.health().down
        paths = self.views.paths().listeners
        rates = self.rates.listeners
        return [listener_summary(lst, totals.get(lst.name), down, self.admin,
                                 paths.get(lst.name, "user"), rates.get(lst.name))
                for lst in self.views.snapshot().listeners]

    def listener(self, name: str) -> dict[str, Any] | None:
        lst = next((x for x in self.views.snapshot().listeners if x.name == name), None)
        if lst is None:
            return None
        return listener_detail(lst, self.views.traffic().get(name),
                               self.views.health().down, self.admin,
                               self.views.paths().listeners.get(name, "user"),
                               self.rates.listeners.get(name))

    def routes(self) -> list[dict[str, Any]]:
        return route_views(self.views.snapshot().listeners)

    async def flow_rows(self) -> list[FlowRow]:
        return await self.views.flows()

    # -- actions -------------------------------------------------------------------------

    def audit(self, caller: Caller, action: str, target: dict[str, Any], result: str) -> None:
        if self.audit_log is not None:
            self.audit_log.record(caller, action, target, result)

    async def act(self, caller: Caller, action: str, args: dict[str, Any]) -> dict[str, Any]:
        who = f"{caller.user} ({caller.role})"
        if action in _BACKEND_ACTIONS:
            return await self._backend_action(caller, who, action, args)
        if action == "cut":
            return await self._cut(caller, who, args)
        if action == "reload":
            issues = await self.ops.reload()
            self.events_ring.event("action", f"{who}: reload -> "
                                   f"{'refused' if issues else 'ok'}", action=action,
                                   user=caller.user)
            version = self.views.snapshot().version
            if issues:
                raise AdminError(409, f"reload refused, still serving snapshot v{version}: "
                                 + "; ".join(issues))
            return {"result": "ok", "snapshot": version}
        if action in ("drain-box", "undrain-box") and self.views.ha().mode != "bgp":
            raise AdminError(409, f"{action} is for ha.mode bgp (a VRRP box hands over "
                                  "with failover)")
        # failover, demote, promote, auto; drain-box, undrain-box
        result = await self.ops.ha_action(action, who)
        self.events_ring.event("action", f"{who}: {action} -> {result}", action=action,
                               user=caller.user)
        return {"result": result}

    async def _cut(self, caller: Caller, who: str, args: dict[str, Any]) -> dict[str, Any]:
        flow = args.get("flow")
        if not isinstance(flow, str):
            raise AdminError(400, "cut needs \"flow\" (a flow's id, as the flows list shows)")
        row = next((r for r in await self.views.flows() if r[0] == flow), None)
        if row is None or not await self.ops.cut_flow(flow):
            raise AdminError(404, f"no open flow {flow!r}")
        f = dict(zip(FLOW_FIELDS, row, strict=True))
        self.events_ring.event("action", f"{who}: cut flow {flow} of {f['listener']} "
                               f"({f['client']} -> {f['backend'] or '-'})", action="cut",
                               listener=f["listener"], flow=flow, user=caller.user)
        return {"result": "cut", "flow": flow, "listener": f["listener"],
                "client": f["client"], "backend": f["backend"]}

    async def _backend_action(self, caller: Caller, who: str, action: str,
                              args: dict[str, Any]) -> dict[str, Any]:
        listener, backend = args.get("listener"), args.get("backend")
        if not isinstance(listener, str) or not isinstance(backend, str):
            raise AdminError(400, f"{action} needs \"listener\" and \"backend\" (strings)")
        weight = None
        if action == "weight":
            if "weight" not in args:
                raise AdminError(400, "weight needs \"weight\" (0-256, or null for the "
                                      "configured weight)")
            weight = args["weight"]
        a = self.admin.set(self.views.snapshot().listeners, listener, backend,
                           _BACKEND_ACTIONS[action], weight,
                           reset_weight=action == "weight" and weight is None)
        save_admin(self.admin, self.state_file)
        await self.ops.recompose()
        msg = (f"{who}: {action} {listener} {backend}" +
               (f" to {weight}" if action == "weight" else "") +
               f" -> state {a.state}, weight "
               f"{a.weight if a.weight is not None else 'as configured'}")
        self.events_ring.event("action", msg, action=action, listener=listener,
                               backend=backend, user=caller.user)
        return {"result": "ok", "listener": listener, "backend": backend,
                "state": a.state, "admin_weight": a.weight}


def restore_admin(admin: AdminState, state_file: str) -> None:
    """The operators' changes as the last run left them in ``state_file``."""
    if not state_file or not os.path.exists(state_file):
        return
    try:
        with open(state_file) as f:
            admin.loads(f.read())
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error("backend state %s not restored: %s", state_file, e)
    else:
        if admin.backends:
            log.info("restored %d operator backend changes from %s", len(admin.backends),
                     state_file)


def save_admin(admin: AdminState, state_file: str) -> None:
    """Keep the operators' changes for the next run (written whole, then renamed)."""
    if not state_file:
        return
    try:
        replace_file(state_file, admin.dumps().encode(), 0o640)
    except OSError as e:
        log.error("backend state %s not saved: %s", state_file, e.strerror or e)
