"""The daemon's side of the control API: events, operators' backend changes, the audit
log, and the views the API serves, read from the daemon in the trio thread."""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from .admin import AdminError, AdminState
from .audit import AuditLog
from .roles import Caller
from .views import listener_detail, listener_summary, route_views

if TYPE_CHECKING:
    from ..daemon import Daemon

log = logging.getLogger("edgelb.control")

MAX_EVENTS = 2000
# Each backend action and the state it sets (weight keeps the state).
_BACKEND_ACTIONS = {"drain": "drain", "undrain": "ready", "disable": "maint",
                    "enable": "ready", "weight": None}


class ControlPlane:
    """Implements the API's ``Plant`` for one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.admin = AdminState()
        self.audit_log: AuditLog | None = None
        self.state_file = ""
        self.started = time.time()
        self.events_ring: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_EVENTS)
        self.seq = 0
        self._new_event = trio.Event()

    def configure(self, audit_path: str, state_file: str) -> None:
        """Open the audit log and restore the operators' changes from ``state_file``."""
        self.audit_log = AuditLog(audit_path)
        self.state_file = state_file
        if state_file and os.path.exists(state_file):
            try:
                with open(state_file) as f:
                    self.admin.loads(f.read())
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("backend state %s not restored: %s", state_file, e)
            else:
                if self.admin.backends:
                    log.info("restored %d operator backend changes from %s",
                             len(self.admin.backends), state_file)

    # -- events ------------------------------------------------------------------------

    def event(self, kind: str, message: str, **fields: Any) -> None:
        """Record an event (HA state, reloads, health, actions ...) for the events view."""
        self.seq += 1
        self.events_ring.append({"seq": self.seq, "time": time.time(), "kind": kind,
                                 "message": message, **fields})
        self._new_event.set()
        self._new_event = trio.Event()

    def events(self, since: int) -> list[dict[str, Any]]:
        return [e for e in self.events_ring if e["seq"] > since]

    async def wait_event(self, since: int) -> None:
        if self.seq <= since:
            await self._new_event.wait()

    # -- views -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        d = self.daemon
        snap = d.snapshot
        totals = d.stats()
        backends = [b for st in totals.values() for b in st.backends.values()]
        alerts = [f"listener {lst.name}: no healthy backend" for lst in d.raw_listeners
                  if d.no_healthy_backend(lst)]
        ha = d.ha_view()
        alerts += ha.pop("alerts", [])
        sync = d.sync_view()
        if sync is not None:
            alerts += [f"cluster watch {w['name']}: {w['state']} {w['detail']}".rstrip()
                       for w in sync["watches"] if w["state"] != "synced"]
        n_admin = len(self.admin.backends)
        if n_admin:
            alerts.append(f"{n_admin} backends drained, disabled or re-weighted by an "
                          "operator")
        return {
            "version": __version__, "pid": os.getpid(), "config": d.config_path,
            "uptime": round(time.time() - self.started, 1),
            "snapshot": {"version": snap.version if snap else 0,
                         "digest": snap.digest if snap else "",
                         "listeners": len(snap.listeners) if snap else 0,
                         "from_cluster": len(d.dynamic)},
            "workers": snap.workers if snap else 0, "draining": d.draining,
            "ha": ha, "sync": sync,
            "totals": {"accepted": sum(st.accepted for st in totals.values()),
                       "requests": sum(st.requests for st in totals.values()),
                       "active": sum(b.active for b in backends),
                       "bytes_in": sum(b.bytes_in for b in backends),
                       "bytes_out": sum(b.bytes_out for b in backends)},
            "alerts": alerts, "last_event": self.seq,
        }

    def listeners(self) -> list[dict[str, Any]]:
        d = self.daemon
        totals = d.stats()
        down = d.health.down
        return [listener_summary(lst, totals.get(lst.name), down, self.admin)
                for lst in d.raw_listeners]

    def listener(self, name: str) -> dict[str, Any] | None:
        d = self.daemon
        lst = next((x for x in d.raw_listeners if x.name == name), None)
        if lst is None:
            return None
        return listener_detail(lst, d.stats().get(name), d.health.down, self.admin)

    def routes(self) -> list[dict[str, Any]]:
        return route_views(self.daemon.raw_listeners)

    async def flow_rows(self) -> list[tuple[Any, ...]]:
        return await self.daemon.flow_rows()

    # -- actions -----------------------------------------------------------------------

    def audit(self, caller: Caller, action: str, target: dict[str, Any], result: str) -> None:
        if self.audit_log is not None:
            self.audit_log.record(caller, action, target, result)

    async def act(self, caller: Caller, action: str, args: dict[str, Any]) -> dict[str, Any]:
        d = self.daemon
        who = f"{caller.user} ({caller.role})"
        if action in _BACKEND_ACTIONS:
            listener, backend = args.get("listener"), args.get("backend")
            if not isinstance(listener, str) or not isinstance(backend, str):
                raise AdminError(400, f"{action} needs \"listener\" and \"backend\" (strings)")
            state = _BACKEND_ACTIONS[action]
            weight = None
            reset = False
            if action == "weight":
                if "weight" not in args:
                    raise AdminError(400, "weight needs \"weight\" (0-256, or null for the "
                                          "configured weight)")
                weight = args["weight"]
                reset = weight is None
            a = self.admin.set(d.raw_listeners, listener, backend, state, weight, reset)
            self._save()
            await d.recompose()
            msg = (f"{who}: {action} {listener} {backend}" +
                   (f" to {weight}" if action == "weight" else "") +
                   f" -> state {a.state}, weight {a.weight if a.weight is not None else 'config'}")
            self.event("action", msg, action=action, listener=listener, backend=backend,
                       user=caller.user)
            return {"result": "ok", "listener": listener, "backend": backend,
                    "state": a.state, "admin_weight": a.weight}
        if action == "reload":
            issues = await d.reload()
            self.event("action", f"{who}: reload -> "
                       f"{'refused' if issues else 'ok'}", action=action, user=caller.user)
            if issues:
                raise AdminError(409, "reload refused, still serving snapshot v"
                                 f"{d.snapshot.version if d.snapshot else 0}: "
                                 + "; ".join(issues))
            return {"result": "ok",
                    "snapshot": d.snapshot.version if d.snapshot else 0}
        # failover, demote, promote, auto
        result = await d.ha_action(action, who)
        self.event("action", f"{who}: {action} -> {result}", action=action,
                   user=caller.user)
        return {"result": result}

    def _save(self) -> None:
        if not self.state_file:
            return
        tmp = f"{self.state_file}.tmp"
        try:
            os.makedirs(os.path.dirname(self.state_file), exist_ok=True)
            with open(tmp, "w") as f:
                f.write(self.admin.dumps())
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.error("backend state %s not saved: %s", self.state_file, e.strerror or e)
