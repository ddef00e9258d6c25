"""Lease mode: lead while holding a coordination.k8s.io Lease, renewed every third of its
duration. The decisions are ``lease.decide``'s (pure); this shell reads and writes the
Lease with the official client, in a thread, and tells the rest when leadership changes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import trio
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..model import HaSpec
from ..views import EventSink, HaMode, HaView
from .lease import Leadership, decide

log = logging.getLogger("edgelb")

Lease = dict[str, Any]


class LeaseRunner:
    """One candidate for the Lease ``ha.lease_namespace/ha.lease_name``."""

    def __init__(self, ha: HaSpec, api: Callable[[], client.ApiClient], events: EventSink,
                 on_leading: Callable[[], None]) -> None:
        self.ha = ha
        self.api = api
        self.events = events
        self.on_leading = on_leading
        # Not the leader until the Lease says so: set before sync can write.
        self.leadership = Leadership(ha.lease_duration)
        self.override = ""  # "demote": an operator released the Lease and we stay out
        self._coord: client.CoordinationV1Api | None = None

    @property
    def name(self) -> str:
        return f"{self.ha.lease_namespace}/{self.ha.lease_name}"

    def is_leader(self) -> bool:
        return self.leadership.leading()

    def view(self) -> HaView:
        alerts = (f"HA held by an operator: {self.override} (ctl ha auto to release)",) \
            if self.override else ()
        return HaView(mode=HaMode.LEASE, leader=self.is_leader(), override=self.override,
                      alerts=alerts, identity=self.ha.identity, lease=self.name,
                      holder=self.leadership.holder)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Compete for the Lease until cancelled."""
        api = await trio.to_thread.run_sync(self.api)
        self._coord = client.CoordinationV1Api(api)
        task_status.started()
        was = False
        while True:
            if self.override == "demote":
                # Held back by an operator: not competing (the Lease was released).
                self.leadership.lost()
            else:
                await self._round()
            now_leading = self.is_leader()
            if now_leading != was:
                self._changed(now_leading)
                was = now_leading
            await trio.sleep(self.ha.lease_duration / 3)

    async def _round(self) -> None:
        """Read the Lease, and take or renew it when ``decide`` says so."""
        ha, leadership = self.ha, self.leadership
        now = time.time()
        try:
            lease = await trio.to_thread.run_sync(self._read)
            d = decide(ha.identity, ha.lease_name, ha.lease_namespace, lease, now,
                       ha.lease_duration)
            if d.body is not None:
                await trio.to_thread.run_sync(self._write, d.action, d.body)
                leadership.won(now)
                leadership.holder = ha.identity
            else:
                leadership.holder = d.holder
                if d.holder != ha.identity:
                    leadership.lost()
        except ApiException as e:
            if e.status == 409:  # someone else wrote first
                leadership.lost()
            else:
                log.warning("lease %s: %s %s", self.name, e.status, e.reason)
        except Exception as e:  # the API is unreachable: leadership runs out by itself
            log.warning("lease %s: %s", self.name, e)

    def _changed(self, leading: bool) -> None:
        holder = self.leadership.holder
        if self.override == "demote" and not leading:
            log.warning("not leading: demoted by an operator")
            self.events.event("ha", "lease: not leading (demoted by an operator)",
                              state="standby")
            return
        self.events.event("ha", f"lease {self.name}: {'leading' if leading else 'not leading'}"
                          f" (holder {holder or 'nobody'})",
                          state="leader" if leading else "standby")
        if leading:
            log.info("leading: holding lease %s as %s", self.name, self.ha.identity)
            self.on_leading()  # write what we serve
        else:
            log.warning("not leading: lease %s is held by %s", self.name, holder or "nobody")

    def _read(self) -> Lease | None:
        assert self._coord is not None
        try:
            resp: Any = self._coord.read_namespaced_lease(
                self.ha.lease_name, self.ha.lease_namespace, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        lease: Lease = json.loads(resp.data)
        return lease

    def _write(self, action: str, body: Lease) -> None:
        assert self._coord is not None
        ns = self.ha.lease_namespace
        if action == "create":
            self._coord.create_namespaced_lease(ns, cast(Any, body), _preload_content=False)
        else:
            self._coord.replace_namespaced_lease(self.ha.lease_name, ns, cast(Any, body),
                                                 _preload_content=False)

    async def act(self, action: str, who: str) -> str:
        if action == "failover":
            action = "demote" if self.is_leader() else "promote"
        self.override = "" if action == "auto" else action
        self.events.event("ha", f"operator {who}: {action}", override=self.override)
        if action == "demote":
            await self.stop()
            return "demoted: lease released; not competing for it until promote or auto"
        return (f"competing for the lease again (held by {self.leadership.holder or 'nobody'};"
                " taken when it is free or expires)")

    async def stop(self) -> None:
        """Give the Lease up, so that another box takes over at once."""
        ha = self.ha
        if self._coord is None or not self.is_leader():
            return
        with trio.move_on_after(2):
            try:
                lease = await trio.to_thread.run_sync(self._read)
                d = decide(ha.identity, ha.lease_name, ha.lease_namespace, lease, time.time(),
                           ha.lease_duration, release=True)
                if d.body is not None:
                    await trio.to_thread.run_sync(self._write, d.action, d.body)
                    log.info("released lease %s", self.name)
            except Exception as e:
                log.warning("lease not released: %s", e)
        self.leadership.lost()
