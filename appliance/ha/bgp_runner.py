"""BGP mode: every box serves, and announces through BIRD the VIPs it serves well. edgelb
runs its own BIRD as a child that dies with it (a parent-death signal): a killed or
crashed edgelb takes its BIRD along, the sessions close, and the routers withdraw its
routes at once, so no router goes on sending flows to a box where nothing serves. The
config is written whole and put in force with ``birdc configure``; the sessions and
their BFD state are read back with ``birdc show``."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import trio

from ..files import replace_file
from ..model import HaSpec, Listener
from ..views import ActionRefused, BgpSessionView, EventSink, HaMode, HaView, VipView
from .bgp import bird_config, decide, parse_bfd, parse_sessions
from .vrrp_io import Vips

log = logging.getLogger("edgelb")

DECIDE_EVERY = 0.2  # how often what to announce is decided, seconds
READ_EVERY = 1.0  # how often the sessions are read back
BIRDC_TIMEOUT = 10.0
RESPAWN_DELAY = 1.0  # a BIRD that exits is started again after this
PR_SET_PDEATHSIG = 1

# What the daemon tells: the candidate VIPs, the listeners and the backends down.
Served = Callable[[], tuple[Iterable[str], Iterable[Listener], Collection[tuple[str, str]]]]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when edgelb dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # edgelb died before this line: do not outlive it
        os._exit(1)


class BirdError(Exception):
    """birdc failed or refused the config."""


class BgpRunner:
    """This box's announcements, through a BIRD of its own."""

    def __init__(self, ha: HaSpec, events: EventSink, served: Served) -> None:
        self.ha = ha
        self.events = events
        self.served = served
        self.dir = Path(ha.bird_directory)
        self.conf = self.dir / "bird.conf"
        self.sock = str(self.dir / "bird.ctl")
        self.proc: trio.Process | None = None
        self.states: dict[str, str] = {}  # VIP -> "" announced, else why withdrawn
        self.in_force: tuple[str, ...] | None = None  # the VIPs BIRD announces now
        self.drained = ""  # why every VIP is withdrawn ("" while the box serves)
        self.sessions: tuple[BgpSessionView, ...] = ()
        self.on_lo: set[str] = set()
        self.bird_down = ""  # why BIRD is not running ("" while it is)
        self.wake = trio.Event()

    # -- HaService ----------------------------------------------------------------------

    def is_leader(self) -> bool:
        # Every box serves in bgp mode; each writes the same status from the same IPAM.
        return True

    def view(self) -> HaView:
        alerts = [f"BGP session to {s.peer} is {s.state}"
                  for s in self.sessions if not s.established]
        if self.bird_down:
            alerts.append(f"{self.bird_down}: nothing is announced")
        if self.drained:
            alerts.append(f"every VIP withdrawn: {self.drained}")
        alerts += [f"VIP {vip} withdrawn: {why}" for vip, why in self.states.items()
                   if why and not self.drained]
        return HaView(mode=HaMode.BGP, leader=True, alerts=tuple(alerts), asn=self.ha.asn,
                      router_id=self.ha.router_id, sessions=self.sessions,
                      vips=tuple(VipView(v, not why, why) for v, why in self.states.items()),
                      drained=self.drained)

    async def act(self, action: str, who: str) -> str:
        if action == "drain-box":
            if self.drained:
                raise ActionRefused(409, f"the box is drained already ({self.drained})")
            await self.withdraw_all(f"drained by {who}")
            return "every VIP withdrawn: the routers send no new flows here"
        if action == "undrain-box":
            if not self.drained:
                raise ActionRefused(409, "the box is not drained")
            self.drained = ""
            self.events.event("ha", f"box undrained by {who}: announcing again")
            await self._decide()
            return "announcing again the VIPs this box serves"
        raise ActionRefused(409, "ha.mode is bgp: every box serves; drain-box withdraws "
                                 "this one's routes")

    async def stop(self) -> None:
        """Withdraw every VIP and give the routers ``withdraw_wait`` to move new flows
        elsewhere, before the datapath drains."""
        if self.proc is None or self.proc.returncode is not None:
            return
        await self.withdraw_all("edgelb stopping")
        await trio.sleep(self.ha.withdraw_wait)

    async def withdraw_all(self, why: str) -> None:
        self.drained = why
        self.events.event("ha", f"withdrawing every VIP: {why}")
        log.warning("BGP: withdrawing every VIP: %s", why)
        await self._decide()

    # -- running --------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._keep_bird)
                nursery.start_soon(self._read_back)
                await self._decide()
                task_status.started()
                while True:
                    with trio.move_on_after(DECIDE_EVERY):
                        await self.wake.wait()
                    self.wake = trio.Event()
                    await self._decide()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_bird()
                await trio.to_thread.run_sync(self._remove_vips, set(self.on_lo))

    def _prepare(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # the config may hold peers' passwords
        # A socket left by a BIRD that died with an earlier run.
        (self.dir / "bird.ctl").unlink(missing_ok=True)

    async def _start_bird(self) -> None:
        ha = self.ha
        self.proc = await trio.lowlevel.open_process(
            [ha.bird_binary, "-f", "-c", str(self.conf), "-s", self.sock],
            preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
        sock = trio.Path(self.sock)
        with trio.move_on_after(10):
            while not await sock.exists():
                if self.proc.returncode is not None:
                    break
                await trio.sleep(0.05)
        if not await sock.exists():
            await self._stop_bird()
            raise OSError(f"{ha.bird_binary} made no control socket {self.sock}"
                          + (f" (it exited {self.proc.returncode})"
                             if self.proc.returncode is not None else ""))
        log.info("BGP: BIRD %d started (%s)", self.proc.pid, self.conf)

    async def _keep_bird(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Run BIRD, and start it again a second after it exits or fails to start (with
        what should be announced then). Meanwhile this box announces nothing, which is
        safe, and says why; the daemon serves on."""
        first = True
        while True:
            started = False
            try:
                await trio.to_thread.run_sync(self._prepare)
                self.in_force = None
                await self._write([])
                await self._start_bird()
                started = True
            except OSError as e:
                self._bird_down(f"BIRD not started: {e}")
            else:
                self.wake.set()
            if first:
                task_status.started()
                first = False
            if started and self.proc is not None:
                # Waited for even when it has exited already: one that exits right after
                # making its socket (a config it refuses) must be reported too.
                await self.proc.wait()
                self._bird_down(f"BIRD exited ({self.proc.returncode})")
            self.sessions = ()
            await trio.sleep(RESPAWN_DELAY)

    def _bird_up(self) -> None:
        """BIRD answered: it runs (only this clears a failure, so that a BIRD that starts
        and exits at once, over and over, is reported once)."""
        if self.bird_down:
            self.bird_down = ""
            self.wake.set()

    def _bird_down(self, why: str) -> None:
        """Say once why nothing is announced (a BIRD that keeps failing says it once)."""
        if why != self.bird_down:
            self.events.event("ha", f"{why}: no VIP is announced from this box; starting "
                              "BIRD again")
            log.error("BGP: %s; nothing is announced; starting BIRD again", why)
        self.bird_down = why

    async def _stop_bird(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        with trio.move_on_after(5):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()

    async def _birdc(self, *args: str) -> str:
        try:
            with trio.fail_after(BIRDC_TIMEOUT):
                r = await trio.run_process([self.ha.birdc_binary, "-s", self.sock, *args],
                                           capture_stdout=True, capture_stderr=True,
                                           check=False)
        except trio.TooSlowError:
            raise BirdError(f"birdc {' '.join(args)}: no answer in {BIRDC_TIMEOUT:g}s") \
                from None
        out = r.stdout.decode(errors="replace")
        if r.returncode != 0:
            raise BirdError(f"birdc {' '.join(args)}: {r.stderr.decode().strip() or out}")
        return out

    async def _write(self, announced: list[str]) -> None:
        text = bird_config(self.ha, announced)
        await trio.to_thread.run_sync(replace_file, str(self.conf), text.encode(), 0o600)

    async def _decide(self) -> None:
        """Announce what should be, withdraw what should not; say what changed."""
        vips, listeners, down = self.served()
        # A VIP BIRD cannot announce is withdrawn, and says why.
        states = decide(vips, listeners, down, self.drained or self.bird_down)
        # Withdrawn VIPs stay on the loopback: flows a router still sends (or sent before
        # the withdrawal) are served, not dropped.
        await self._place_vips(set(states))
        announced = tuple(v for v, why in states.items() if not why)
        if announced != self.in_force and self.proc is not None \
                and self.proc.returncode is None:
            try:
                await self._write(list(announced))
                out = await self._birdc("configure")
                if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
                    raise BirdError(out.strip().splitlines()[-1] if out.strip() else "?")
            except (BirdError, OSError) as e:
                log.error("BGP: announcements not changed: %s", e)
                return
            self.in_force = announced
            self._bird_up()
        for vip, why in states.items():
            was = self.states.get(vip)
            if was == why:
                continue
            if not why:
                msg = f"VIP {vip} announced"
            else:
                msg = f"VIP {vip} withdrawn: {why}"
            log.info("BGP: %s", msg)
            self.events.event("ha", msg, vip=vip, announced=not why)
        self.states = states

    async def _place_vips(self, wanted: set[str]) -> None:
        """The VIPs on the loopback, so that this box takes their traffic."""
        add, drop = wanted - self.on_lo, self.on_lo - wanted
        if add:
            await trio.to_thread.run_sync(Vips("lo", tuple(sorted(add))).add)
        if drop:
            await trio.to_thread.run_sync(self._remove_vips, drop)
        self.on_lo = set(wanted)

    @staticmethod
    def _remove_vips(vips: set[str]) -> None:
        if vips:
            Vips("lo", tuple(sorted(vips))).remove()

    async def _read_back(self) -> None:
        """The sessions and their BFD state, once a second; a session that changes is an
        event."""
        names = {f"edgelb_peer{i}": p for i, p in enumerate(self.ha.peers, 1)}
        while True:
            await trio.sleep(READ_EVERY)
            if self.proc is None or self.proc.returncode is not None:
                continue
            try:
                protocols = parse_sessions(await self._birdc("show", "protocols", "all"))
                bfd = {b.peer: b.state for b in parse_bfd(
                    await self._birdc("show", "bfd", "sessions"))}
            except BirdError as e:
                log.warning("BGP: sessions not read: %s", e)
                continue
            views = []
            for s in protocols:
                peer = names.get(s.name)
                if peer is None:
                    continue
                views.append(BgpSessionView(peer.address, peer.asn, s.info or s.state,
                                            s.since, bfd.get(peer.address, "")
                                            if peer.bfd else "", s.exported,
                                            s.established))
            before = {s.peer: s.state for s in self.sessions}
            for v in views:
                if before.get(v.peer) != v.state:
                    self.events.event("ha", f"BGP session to {v.peer} (as {v.asn}): "
                                      f"{v.state}", peer=v.peer, state=v.state)
            self.sessions = tuple(views)
            self._bird_up()
