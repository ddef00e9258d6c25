"""VRRP mode: one virtual router per address family (RFC 5798 keeps IPv4 and IPv6 apart),
each the pure ``vrrp.Vrrp`` machine driven by its advertisements, its timer, the tracked
conditions and the operator, with its actions carried out by ``vrrp_io`` (the raw socket,
the VIPs, the announcements)."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable

import trio

from ..model import HaSpec
from ..views import ActionRefused, EventSink, HaMode, HaView, PeerView, RouterView
from .vrrp import (
    MASTER,
    Action,
    Advert,
    BecomeBackup,
    BecomeMaster,
    Reannounce,
    SendAdvert,
    Vrrp,
    VrrpConfig,
    wanted_priority,
)
from .vrrp_io import (
    Vips,
    VrrpSocket,
    VrrpSocket6,
    gratuitous_arp,
    primary_address,
    remove_leftovers,
)

log = logging.getLogger("edgelb")

TRACK_EVERY = 0.2  # how often the tracked conditions are evaluated, seconds
STOP_PATIENCE = 2.0  # the shutdown advertisement may take this long


class VrrpRunner:
    """The virtual routers of this box, one per address family of ``ha.vips``. The VIPs
    learned from a cluster (``learned``) go with the router of their family, or with the
    first router when there is none of it (keepalived's ``virtual_ipaddress_excluded``):
    on the interface while it is master, never in its advertisements (their addresses
    are the configured ones, as a keepalived peer's must be)."""

    def __init__(self, ha: HaSpec, events: EventSink, track: Callable[[], list[str]],
                 learned: Callable[[], Iterable[str]] = tuple,
                 ours: Callable[[], Collection[str]] = frozenset,
                 on_leading: Callable[[], None] = lambda: None) -> None:
        self.ha = ha
        self.events = events
        self.track = track  # the tracked conditions failing now, as reasons
        self.learned = learned  # the VIPs the cluster's listeners are on now
        self.ours = ours  # every address the cluster may hand out (for leftovers)
        self.on_leading = on_leading  # this box just became the leader (writes status)
        self.routers: list[VrrpRouter] = []
        self.override = ""  # an operator's "demote" or "promote", held until "auto"
        self.peers: dict[str, PeerView] = {}  # by address, as last heard

    def is_leader(self) -> bool:
        return any(r.machine.state == MASTER for r in self.routers)

    def wanted_priority(self) -> tuple[int, list[str]]:
        """The priority to run at now, and the tracked conditions that fail."""
        failing = self.track()
        return wanted_priority(self.ha.priority, len(failing), self.ha.track_weight,
                               self.override), failing

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        families = sorted({ipaddress.ip_interface(v).version for v in self.ha.vips})
        async with trio.open_nursery() as nursery:
            for version in families:
                carries = {version} if version != families[0] else \
                    {version} | ({4, 6} - set(families))
                router = VrrpRouter(self, version, frozenset(carries))
                self.routers.append(router)
                await nursery.start(router.run)
            task_status.started()

    def view(self) -> HaView:
        ha = self.ha
        now = time.time()
        alerts = [f"HA held by an operator: {self.override} (ctl ha auto to release)"] \
            if self.override else []
        routers = []
        for r in self.routers:
            m = r.machine
            routers.append(RouterView(f"IPv{r.version}", m.config.vrid, m.state,
                                      m.priority, m.config.priority, m.reason,
                                      m.config.addresses, tuple(sorted(r.learned))))
            if m.priority < m.config.priority and not self.override:
                alerts.append(f"VRRP IPv{r.version} priority lowered to {m.priority}: "
                              f"{m.reason}")
        peers = tuple(self.peers.values())
        if not any(now - p.seen < 3 * p.interval + 1 for p in peers):
            alerts.append("no VRRP peer heard: this box has no standby")
        return HaView(mode=HaMode.VRRP, leader=self.is_leader(), override=self.override,
                      alerts=tuple(alerts), interface=ha.interface, vrid=ha.vrid,
                      routers=tuple(routers), peers=peers)

    async def act(self, action: str, who: str) -> str:
        if self.ha.priority == 255 and action in ("demote", "failover"):
            raise ActionRefused(409, "this box is the address owner (priority 255) and "
                                     "always masters its VIPs (RFC 5798)")
        if action == "failover":
            action = "demote" if self.is_leader() else "promote"
        self.override = "" if action == "auto" else action
        why = f"operator {who}: {action}"
        self.events.event("ha", why, override=self.override)
        now = trio.current_time()
        want, _ = self.wanted_priority()
        for r in self.routers:
            await r.act(r.machine.set_priority(want, now, why))
            if action == "demote":
                await r.act(r.machine.step_down(now, why))
            elif action == "promote":
                await r.act(r.machine.take_over(now, why))
        states = ", ".join(f"{r.machine.state} at priority {r.machine.priority}"
                           for r in self.routers)
        return {"demote": f"demoted: {states}; stays backup until promote or auto",
                "promote": f"promoted: {states}; stays preferred until demote or auto",
                "auto": f"configured priority again: {states}"}[action]

    async def stop(self) -> None:
        """Advertise priority 0, so that a backup takes over at once, and give the VIPs up."""
        with trio.move_on_after(STOP_PATIENCE):
            for r in self.routers:
                await r.act(r.machine.shutdown(trio.current_time()))


class VrrpRouter:
    """One virtual router: the VIPs of one address family (and the learned ones of the
    ``families`` it carries) are on this box only while it is master."""

    def __init__(self, runner: VrrpRunner, version: int, families: frozenset[int]) -> None:
        ha = runner.ha
        self.runner = runner
        self.ha = ha
        self.version = version
        self.families = families
        self.learned: frozenset[str] = frozenset()  # on the interface while master
        self.source = primary_address(ha.interface, version)
        self.vips = Vips(ha.interface, tuple(v for v in ha.vips
                                             if ipaddress.ip_interface(v).version == version))
        self.peers = tuple(p for p in ha.unicast_peers
                           if ipaddress.ip_address(p).version == version)
        self.machine = Vrrp(VrrpConfig(ha.vrid, ha.priority,
                                       tuple(str(v.ip) for v in self.vips.addresses),
                                       max(1, round(ha.advert_interval * 100)), ha.preempt,
                                       ha.preempt_delay), self.source)
        self.sock: VrrpSocket | VrrpSocket6 | None = None
        self.wake = trio.Event()
        # Actions are carried out one batch at a time, in the order the machine made them:
        # the timer and the receiver both drive it, and a VIP added after it was removed
        # (two batches interleaved at a thread hop) would stay on a backup.
        self.in_order = trio.Lock()
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        removed = await trio.to_thread.run_sync(self.vips.remove)
        ours = [a for a in self.runner.ours()
                if ipaddress.ip_address(a).version in self.families]
        removed += await trio.to_thread.run_sync(remove_leftovers, self.ha.interface, ours)
        if removed:
            log.warning("removed VIPs left from an earlier run: %s", ", ".join(removed))
        ha = self.ha
        self.sock = (VrrpSocket if self.version == 4 else VrrpSocket6)(
            ha.interface, self.source, self.peers)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive)
                nursery.start_soon(self._refresh)
                nursery.start_soon(self._track)
                nursery.start_soon(self._follow)
                await self.act(self.machine.start(trio.current_time()))
                task_status.started()
                await self._timer()
        finally:
            self.sock.close()

    async def _timer(self) -> None:
        while True:
            deadline = self.machine.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self.wake.wait()
            self.wake = trio.Event()
            await self.act(self.machine.on_timer(trio.current_time()))

    async def act(self, actions: list[Action]) -> None:
        if not actions:
            return
        async with self.in_order:
            for a in actions:
                await self._carry_out(a)
        # The timer loop sleeps until the deadline it last saw: an operator's promotion
        # (or any change made outside it) must wake it.
        self.wake.set()

    async def _carry_out(self, a: Action) -> None:
        ha, m, fam = self.ha, self.machine, f"IPv{self.version}"
        if isinstance(a, SendAdvert):
            assert self.sock is not None
            await self.sock.send(Advert(ha.vrid, a.priority, m.config.interval_cs,
                                        m.config.addresses))
        elif isinstance(a, BecomeMaster):
            # The machine is master already: did another router of this box lead?
            leading = any(r.machine.state == MASTER for r in self.runner.routers
                          if r is not self)
            added = await trio.to_thread.run_sync(self.vips.add)
            added += await trio.to_thread.run_sync(self._learned_vips(self.learned).add)
            log.info("VRRP master (vrid %d, priority %d): %s; VIPs %s", ha.vrid, m.priority,
                     a.reason, ", ".join(added) or "present")
            self.runner.events.event("ha", f"{fam} VRRP master: {a.reason}", state="master",
                                     family=self.version)
            self._announce(ha.garp_count, ha.garp_interval)
            if not leading:
                # The cluster's status is written by the leader: what changed while no
                # box led (or what the old leader could not write) is written now.
                self.runner.on_leading()
        elif isinstance(a, Reannounce):
            log.warning("VRRP: %s; announcing the VIPs again", a.reason)
            self.runner.events.event("ha", f"{fam} VRRP: {a.reason}; announcing the VIPs "
                                     "again", state="master", family=self.version)
            self._announce(ha.garp_count, ha.garp_interval)
        elif isinstance(a, BecomeBackup):
            gone = await trio.to_thread.run_sync(self.vips.remove)
            gone += await trio.to_thread.run_sync(self._learned_vips(self.learned).remove)
            log.info("VRRP backup (vrid %d, priority %d): %s%s", ha.vrid, m.priority,
                     a.reason, f"; VIPs removed: {', '.join(gone)}" if gone else "")
            self.runner.events.event("ha", f"{fam} VRRP backup: {a.reason}", state="backup",
                                     family=self.version)

    def _announce(self, count: int, interval: float, only: Iterable[str] | None = None
                  ) -> None:
        """Gratuitous ARP / unsolicited NA for the VIPs (or ``only`` these), from a
        thread (it sleeps between rounds)."""
        addresses = list(only) if only is not None else \
            [str(v.ip) for v in self.vips.addresses] + sorted(self.learned)
        if self._nursery is not None and addresses:
            self._nursery.start_soon(trio.to_thread.run_sync, gratuitous_arp,
                                     self.ha.interface, addresses, count, interval)

    def _learned_vips(self, addresses: Iterable[str]) -> Vips:
        """Learned VIPs as host addresses (/32, /128): no configured prefix holds them."""
        return Vips(self.ha.interface, tuple(sorted(addresses)))

    def wanted(self) -> frozenset[str]:
        """The learned VIPs this router carries now: those of its families that are not
        configured VIPs already (nor a wildcard)."""
        static = {str(v.ip) for v in self.vips.addresses}
        out = set()
        for a in self.runner.learned():
            try:
                ip = ipaddress.ip_address(a)
            except ValueError:
                continue
            if ip.version in self.families and not ip.is_unspecified and str(ip) not in static:
                out.add(str(ip))
        return frozenset(out)

    async def _follow(self) -> None:
        """Carry the cluster's VIPs as they come and go: while master, a new one is added
        and announced at once, and one that is gone is removed."""
        while True:
            await trio.sleep(TRACK_EVERY)
            want = self.wanted()
            if want == self.learned:
                continue
            async with self.in_order:
                new, gone = want - self.learned, self.learned - want
                self.learned = want
                if self.machine.state != MASTER:
                    continue
                if new:
                    await trio.to_thread.run_sync(self._learned_vips(new).add)
                    self._announce(self.ha.garp_count, self.ha.garp_interval, sorted(new))
                if gone:
                    await trio.to_thread.run_sync(self._learned_vips(gone).remove)
                log.info("VRRP IPv%d master: cluster VIPs%s%s", self.version,
                         f" added {', '.join(sorted(new))}" if new else "",
                         f" removed {', '.join(sorted(gone))}" if gone else "")

    async def _receive(self) -> None:
        assert self.sock is not None
        while True:
            adv, src = await self.sock.receive()
            self.runner.peers[src] = PeerView(src, adv.priority, adv.interval_cs / 100,
                                              time.time())
            await self.act(self.machine.on_advert(adv, src, trio.current_time()))
            self.wake.set()

    async def _refresh(self) -> None:
        while self.ha.garp_refresh > 0:
            await trio.sleep(self.ha.garp_refresh)
            if self.machine.state == MASTER:
                self._announce(1, 0.0)

    async def _track(self) -> None:
        """Lower the priority for each tracked condition that fails; hold an operator's
        demotion or promotion."""
        m = self.machine
        while True:
            await trio.sleep(TRACK_EVERY)
            want, failing = self.runner.wanted_priority()
            if want == m.priority:
                continue
            override = self.runner.override
            why = (f"operator: {override}" if override
                   else "; ".join(failing) or "tracked conditions recovered")
            log.warning("VRRP priority %d -> %d: %s", m.priority, want, why)
            self.runner.events.event("ha", f"IPv{self.version} VRRP priority {m.priority} -> "
                                     f"{want}: {why}", priority=want, family=self.version)
            await self.act(m.set_priority(want, trio.current_time(), why))
