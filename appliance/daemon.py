"""The daemon: the control process (config, health checks, metrics, signals) and the
datapath, either in-process (``workers: 1``) or in N worker processes that each hold
their own SO_REUSEPORT listeners and receive every new Snapshot.

Signals: SIGHUP reloads (an invalid config is refused and the old Snapshot keeps
serving), SIGTERM and SIGINT drain (stop accepting, let flows finish until
``drain_timeout``, exit 0). With NOTIFY_SOCKET set, systemd hears READY, RELOADING and
STOPPING.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import trio

from . import __version__
from .config import ConfigError, load_file
from .control.plane import ControlPlane
from .datapath.checks import HealthChecker
from .datapath.flows import ListenerStats, merge
from .datapath.worker import Worker
from .ipc import Channel
from .model import ClusterSpec, Listener, Snapshot

log = logging.getLogger("edgelb")


def raise_fd_limit(want: int = 1 << 20) -> int:
    """Lift RLIMIT_NOFILE: every flow costs two descriptors and two more for its splice
    pipes while it moves data. As root (CAP_SYS_RESOURCE) the hard limit is raised too,
    up to ``fs.nr_open``, as HAProxy does from its maxconn; otherwise soft goes to hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = min(want, int(f.read()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


def _write_secret_file(path: str, content: bytes) -> None:
    """Write a certificate or key from a Secret, readable by edgelb only."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.exists(path):
        return  # named by content hash: the same name is the same content
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, path)


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (``WATCHDOG_USEC``) when it is watching this
    process, as sd_watchdog_enabled(3) advises; None otherwise."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def ping_watchdog(every: float) -> None:
    """WATCHDOG=1 while the control process's trio loop runs: a hung loop (and with it
    reloads, health checks and the control API) gets the unit restarted by systemd."""
    while True:
        sd_notify("WATCHDOG=1")
        await trio.sleep(every)


def sd_notify(state: str) -> None:
    """Tell systemd about a state change when run as Type=notify; a no-op otherwise."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    import sdnotify

    sdnotify.SystemdNotifier().notify(state)


class _WorkerProcess:
    def __init__(self, wid: int, proc: trio.Process, channel: Channel) -> None:
        self.wid = wid
        self.proc = proc
        self.channel = channel
        self.stats: dict[str, ListenerStats] = {}
        self.applied = trio.Event()
        self.errors: list[str] = []
        self.asked = 0
        self.answers: dict[int, tuple[trio.Event, list[Any]]] = {}

    async def ask_flows(self) -> list[tuple[Any, ...]]:
        """The worker's open flows (none if it does not answer within 2 s)."""
        self.asked += 1
        n = self.asked
        done = trio.Event()
        rows: list[Any] = []
        self.answers[n] = (done, rows)
        try:
            await self.channel.send("flows", n)
            with trio.move_on_after(2):
                await done.wait()
        except OSError:
            pass
        finally:
            self.answers.pop(n, None)
        return rows


class Daemon:
    """One edgelb instance: ``await Daemon(path).serve()`` runs until drained."""

    def __init__(self, config_path: str, log_format: str = "text") -> None:
        self.config_path = config_path
        self.log_format = log_format
        self.snapshot: Snapshot | None = None
        self.local: Worker | None = None
        self.procs: list[_WorkerProcess] = []
        self.health = HealthChecker(self._health_changed)
        self.ready = trio.Event()
        self.draining = False
        # Counters of workers that died, so that totals never go backwards.
        self.retired: dict[str, ListenerStats] = {}
        self._nursery: trio.Nursery | None = None
        # The config's own listeners, and those learned from the cluster.
        self.static: Snapshot | None = None
        self.dynamic: tuple[Listener, ...] = ()
        self.sync: Any = None  # ClusterSync, imported only when a cluster is configured
        self.ipam: Any = None
        self.sync_api: Any = None
        self.seeded = False
        self.problems_seen: set[Any] = set()
        self.is_leader: Callable[[], bool] = lambda: True  # standalone: always
        self.leadership: Any = None
        self.vrrps: list[tuple[Any, Any]] = []  # (machine, its action runner)
        self.applying = trio.Lock()
        self.status_writes = 0
        self.pending_status: dict[tuple[str, str, str], list[str]] = {}
        self.last_translation: Any = None
        self.plane = ControlPlane(self)
        # The listeners before operators' changes (a disabled backend is still listed).
        self.raw_listeners: tuple[Listener, ...] = ()
        self.ha_override = ""  # "", "demote" or "promote": an operator's HA choice
        self.vrrp_peers: dict[str, dict[str, Any]] = {}  # by peer address
        self._lease_io: Any = None  # (read, write) of the Lease, once lease mode runs
        self.down_seen: set[tuple[str, str]] = set()

    # -- start and stop ------------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Start everything, run until SIGTERM/SIGINT, drain, return."""
        raw = load_file(self.config_path, version=1)
        raise_fd_limit()
        from .control.server import open_control_socket, serve_control

        control_sock = open_control_socket(raw.control)
        self.plane.configure(raw.control.audit_log, raw.control.state_file)
        snap = replace(raw, listeners=self.plane.admin.apply(raw.listeners))
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(serve_control, control_sock, snap.control, self.plane)
                await self._start_datapath(nursery, snap)
                self.snapshot = snap
                self.static = raw
                self.raw_listeners = raw.listeners
                await nursery.start(self.health.run, snap)
                if snap.ha.mode == "lease":
                    from .ha.lease import Leadership

                    # Not the leader until the Lease says so: set before sync can write.
                    self.leadership = Leadership(snap.ha.lease_duration)
                    self.is_leader = self.leadership.leading
                if snap.cluster is not None:
                    await nursery.start(self._run_sync, snap.cluster)
                if snap.ha.mode == "lease" and snap.cluster is not None:
                    nursery.start_soon(self._run_lease, snap.ha, snap.cluster)
                if snap.ha.mode == "vrrp":
                    # One virtual router per address family, as RFC 5798 has it.
                    for version in sorted({ipaddress.ip_interface(v).version
                                           for v in snap.ha.vips}):
                        await nursery.start(self._run_vrrp, snap.ha, version)
                if snap.metrics_bind:
                    self._start_metrics(snap.metrics_bind)
                log.info("edgelb %s serving snapshot v%d (%s): %d listeners, %d workers",
                         __version__, snap.version, snap.digest, len(snap.listeners),
                         snap.workers)
                self.plane.event("start", f"edgelb {__version__} serving snapshot "
                                 f"v{snap.version}: {len(snap.listeners)} listeners")
                sd_notify("READY=1")
                every = watchdog_interval()
                if every is not None:
                    nursery.start_soon(ping_watchdog, every)
                self.ready.set()
                task_status.started()
                async for signum in sigs:
                    if signum == signal.SIGHUP:
                        await self.reload()
                    else:
                        await self.drain()
                        nursery.cancel_scope.cancel()
                        break

    async def _start_datapath(self, nursery: trio.Nursery, snap: Snapshot) -> None:
        if snap.workers == 1:
            self.local = Worker(nursery)
            self.local.apply(snap, strict=True)
            return
        for wid in range(snap.workers):
            self.procs.append(await self._spawn(nursery, wid))
        for wp in self.procs:
            await wp.channel.send("snapshot", snap)
        for wp in self.procs:
            with trio.fail_after(30):
                await wp.applied.wait()
            if wp.errors:
                for wp2 in self.procs:
                    wp2.proc.kill()
                raise OSError(wp.errors[0])

    async def _spawn(self, nursery: trio.Nursery, wid: int) -> _WorkerProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "appliance.cli", "--log-format", self.log_format,
                 "_worker", "--fd", str(theirs.fileno()), "--id", str(wid)],
                pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        wp = _WorkerProcess(wid, proc, Channel(trio.socket.from_stdlib_socket(ours)))
        nursery.start_soon(self._listen_worker, wp)
        return wp

    async def _listen_worker(self, wp: _WorkerProcess) -> None:
        while True:
            try:
                kind, payload = await wp.channel.receive()
            except (EOFError, OSError):
                await self._replace_worker(wp)
                return
            if kind == "stats":
                wp.stats = payload
            elif kind == "applied":
                wp.errors = payload
                wp.applied.set()
            elif kind == "flows":
                n, rows = payload
                waiting = wp.answers.get(n)
                if waiting is not None:
                    waiting[1].extend(rows)
                    waiting[0].set()

    async def _replace_worker(self, wp: _WorkerProcess) -> None:
        """A worker died (a crash, an OOM kill): its flows are lost, but its listeners'
        other workers keep accepting; start another in its place, as nginx's master
        does, with the Snapshot and health in force."""
        code = await wp.proc.wait()
        # Counted traffic stays counted; its open flows are gone.
        for st in wp.stats.values():
            for b in st.backends.values():
                b.active = 0
        self.retired = merge([self.retired, wp.stats])
        if self.draining or self._nursery is None or self.snapshot is None:
            return
        self.plane.event("worker", f"worker {wp.wid} (pid {wp.proc.pid}) exited with "
                         f"status {code}; starting a new one")
        log.error("worker %d (pid %d) exited with status %s; starting a new one", wp.wid,
                  wp.proc.pid, code)
        # A worker that dies at once must not turn into a fork loop.
        await trio.sleep(1.0)
        new = await self._spawn(self._nursery, wp.wid)
        self.procs[self.procs.index(wp)] = new
        await new.channel.send("snapshot", self.snapshot)
        await new.channel.send("health", self.health.down)

    def stats_snapshot(self) -> dict[str, ListenerStats]:
        """``stats()`` from another thread (the metrics server): the trio thread may
        grow the dicts mid-copy on a reload, so a torn read is retried."""
        for _ in range(5):
            try:
                return self.stats()
            except RuntimeError:
                continue
        return {}

    async def flow_rows(self) -> list[tuple[Any, ...]]:
        """Every open flow of every worker, as rows of the control API's flow table."""
        if self.local is not None:
            return self.local.flow_rows()
        parts: list[list[tuple[Any, ...]]] = [[] for _ in self.procs]

        async def one(i: int, wp: _WorkerProcess) -> None:
            parts[i] = await wp.ask_flows()

        async with trio.open_nursery() as nursery:
            for i, wp in enumerate(self.procs):
                nursery.start_soon(one, i, wp)
        return [r for part in parts for r in part]

    def stats(self) -> dict[str, ListenerStats]:
        """The counters of every worker added up."""
        if self.local is not None:
            return merge([self.local.stats])
        return merge([self.retired, *(wp.stats for wp in self.procs)])

    async def reload(self) -> list[str]:
        """Re-read the config; put it in force if valid, else keep the old Snapshot.
        Returns the config's issues (none when the reload took effect)."""
        assert self.snapshot is not None
        assert self._nursery is not None
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            snap = load_file(self.config_path, version=self.snapshot.version + 1)
        except ConfigError as e:
            for issue in e.issues:
                log.error("reload refused, %s: %s", e.source, issue)
            log.error("reload refused: still serving snapshot v%d", self.snapshot.version)
            self.plane.event("reload", f"reload refused: {len(e.issues)} config errors; "
                             f"still serving snapshot v{self.snapshot.version}")
            sd_notify("READY=1")
            return [f"{e.source}: {issue}" for issue in e.issues]
        if snap.workers != self.snapshot.workers:
            log.warning("workers changed from %d to %d: takes effect on restart",
                        self.snapshot.workers, snap.workers)
        if snap.metrics_bind != self.snapshot.metrics_bind:
            log.warning("metrics.bind changed: takes effect on restart")
        if snap.cluster != self.snapshot.cluster:
            log.warning("the cluster section changed: takes effect on restart")
        self.static = snap
        await self._put_in_force(self._compose(snap.version))
        log.info("reloaded: serving snapshot v%d (%s)", self.snapshot.version,
                 self.snapshot.digest)
        self.plane.event("reload", f"reloaded: serving snapshot v{self.snapshot.version}")
        sd_notify("READY=1")
        return []

    def _compose(self, version: int) -> Snapshot:
        """The static config plus the listeners learned from the cluster, with the
        operators' backend changes."""
        assert self.static is not None
        self.raw_listeners = self.static.listeners + self.dynamic
        return replace(self.static, version=version,
                       listeners=self.plane.admin.apply(self.raw_listeners))

    async def recompose(self) -> None:
        """Put the operators' latest backend changes in force."""
        assert self.snapshot is not None
        snap = self._compose(self.snapshot.version + 1)
        if snap.digest != self.snapshot.digest:
            await self._put_in_force(snap)

    async def _put_in_force(self, snap: Snapshot) -> None:
        async with self.applying:
            if self.local is not None:
                self.local.apply(snap)
            for wp in self.procs:
                await wp.channel.send("snapshot", snap)
            self.snapshot = snap
            assert self._nursery is not None
            await self._nursery.start(self.health.run, snap)

    # -- the cluster ---------------------------------------------------------------------

    async def _run_sync(self, spec: ClusterSpec,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .sync.ipam import Ipam
        from .sync.kube import ClusterSync, api_client

        self.ipam = Ipam(spec.address_pools)
        self.sync_api = await trio.to_thread.run_sync(api_client, spec)
        self.sync = ClusterSync(spec, self._cluster_changed, self._status_echo)
        log.info("following the cluster (%s)", spec.kubeconfig or "in-cluster")
        await self.sync.run(task_status=task_status)

    def _cluster_changed(self, cluster: Any) -> None:
        """A debounced change of the cluster: translate, put the new Snapshot in force,
        then write status and events (only the leader writes)."""
        from .sync.translate import seed_ipam, translate

        assert self.static is not None
        assert self.static.cluster is not None
        spec = self.static.cluster
        if not self.seeded:
            seed_ipam(cluster, spec, self.ipam)
            self.seeded = True
        t = translate(cluster, spec, self.ipam)
        self.last_translation = t
        for path, content in t.tls_files.items():
            _write_secret_file(path, content)
        self.dynamic = tuple(t.listeners)
        assert self.snapshot is not None
        assert self._nursery is not None
        snap = self._compose(self.snapshot.version + 1)
        if snap.digest != self.snapshot.digest:
            self._nursery.start_soon(self._apply_learned, snap)
        new = set(t.problems) - self.problems_seen
        for p in sorted(new, key=str):
            log.warning("%s %s/%s: %s: %s", p.kind, p.namespace, p.name, p.reason, p.message)
        self.problems_seen = set(t.problems)
        if self.is_leader():
            self._nursery.start_soon(self._write_back, cluster, t, sorted(new, key=str))

    async def _run_lease(self, ha: Any, spec: ClusterSpec) -> None:
        """Lead while holding the Lease; renew every third of its duration."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from .ha.lease import decide
        from .sync.kube import api_client

        leadership = self.leadership
        api = await trio.to_thread.run_sync(api_client, spec)
        coord = client.CoordinationV1Api(api)

        def read() -> dict[str, Any] | None:
            try:
                resp: Any = coord.read_namespaced_lease(ha.lease_name, ha.lease_namespace,
                                                        _preload_content=False)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
            lease: dict[str, Any] = json.loads(resp.data)
            return lease

        def write(action: str, body: dict[str, Any]) -> None:
            if action == "create":
                coord.create_namespaced_lease(ha.lease_namespace, cast(Any, body),
                                              _preload_content=False)
            else:
                coord.replace_namespaced_lease(ha.lease_name, ha.lease_namespace,
                                               cast(Any, body), _preload_content=False)

        self._lease_io = (read, write)
        was = False
        while True:
            now = time.time()
            if self.ha_override == "demote":
                # Held back by an operator: not competing (the lease was released).
                leadership.lost()
                if was:
                    log.warning("not leading: demoted by an operator")
                    self.plane.event("ha", "lease: not leading (demoted by an operator)",
                                     state="standby")
                    was = False
                await trio.sleep(ha.lease_duration / 3)
                continue
            try:
                lease = await trio.to_thread.run_sync(read)
                d = decide(ha.identity, ha.lease_name, ha.lease_namespace, lease, now,
                           ha.lease_duration)
                if d.body is not None:
                    await trio.to_thread.run_sync(write, d.action, d.body)
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
                    log.warning("lease %s/%s: %s %s", ha.lease_namespace, ha.lease_name,
                                e.status, e.reason)
            except Exception as e:  # the API is unreachable: leadership runs out by itself
                log.warning("lease %s/%s: %s", ha.lease_namespace, ha.lease_name, e)
            now_leading = leadership.leading()
            if now_leading != was:
                self.plane.event("ha", f"lease {ha.lease_namespace}/{ha.lease_name}: "
                                 f"{'leading' if now_leading else 'not leading'} (holder "
                                 f"{leadership.holder or 'nobody'})",
                                 state="leader" if now_leading else "standby")
                if now_leading:
                    log.info("leading: holding lease %s/%s as %s", ha.lease_namespace,
                             ha.lease_name, ha.identity)
                    if self.sync is not None and self.sync.synced:
                        self._cluster_changed(self.sync.cluster)  # write what we serve
                else:
                    log.warning("not leading: lease %s/%s is held by %s", ha.lease_namespace,
                                ha.lease_name, leadership.holder or "nobody")
                was = now_leading
            await trio.sleep(ha.lease_duration / 3)

    async def _run_vrrp(self, ha: Any, version: int,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """VRRPv3 on ``ha.interface`` for the VIPs of one IP ``version``: they are on this
        box only while it is master."""
        from .ha.vrrp import (
            Advert,
            BecomeBackup,
            BecomeMaster,
            Reannounce,
            SendAdvert,
            Vrrp,
            VrrpConfig,
            wanted_priority,
        )
        from .ha.vrrp_io import (
            Vips,
            VrrpSocket,
            VrrpSocket6,
            gratuitous_arp,
            primary_address,
        )

        source = primary_address(ha.interface, version)
        vips = Vips(ha.interface, tuple(v for v in ha.vips
                                        if ipaddress.ip_interface(v).version == version))
        peers = tuple(p for p in ha.unicast_peers
                      if ipaddress.ip_address(p).version == version)
        removed = await trio.to_thread.run_sync(vips.remove)
        if removed:
            log.warning("removed VIPs left from an earlier run: %s", ", ".join(removed))
        machine = Vrrp(VrrpConfig(ha.vrid, ha.priority, tuple(str(v.ip) for v in
                                                               vips.addresses),
                                  max(1, round(ha.advert_interval * 100)), ha.preempt,
                                  ha.preempt_delay), source)
        sock: Any = (VrrpSocket if version == 4 else VrrpSocket6)(ha.interface, source, peers)
        self.vrrps.append((machine, None))
        self.is_leader = lambda: any(m.state == "master" for m, _ in self.vrrps)
        wake = trio.Event()

        # Actions are carried out one batch at a time, in the order the machine made them:
        # the timer and the receiver both drive it, and a VIP added after it was removed
        # (two batches interleaved at a thread hop) would stay on a backup.
        in_order = trio.Lock()

        def announce(count: int, interval: float) -> None:
            """Gratuitous ARP / unsolicited NA for the VIPs, from a thread (scapy blocks)."""
            self._nursery_start(trio.to_thread.run_sync, gratuitous_arp, ha.interface,
                                [str(v) for v in vips.addresses], count, interval)

        async def act(actions: list[Any]) -> None:
            if not actions:
                return
            async with in_order:
                await carry_out(actions)
            # The timer loop sleeps until the deadline it last saw: an operator's
            # promotion (or any change made outside it) must wake it.
            wake.set()

        async def carry_out(actions: list[Any]) -> None:
            for a in actions:
                if isinstance(a, SendAdvert):
                    adv = Advert(ha.vrid, a.priority, machine.config.interval_cs,
                                 machine.config.addresses)
                    await sock.send(adv)
                elif isinstance(a, BecomeMaster):
                    added = await trio.to_thread.run_sync(vips.add)
                    log.info("VRRP master (vrid %d, priority %d): %s; VIPs %s", ha.vrid,
                             machine.priority, a.reason, ", ".join(added) or "present")
                    self.plane.event("ha", f"IPv{version} VRRP master: {a.reason}",
                                     state="master", family=version)
                    announce(ha.garp_count, ha.garp_interval)
                elif isinstance(a, Reannounce):
                    log.warning("VRRP: %s; announcing the VIPs again", a.reason)
                    self.plane.event("ha", f"IPv{version} VRRP: {a.reason}; announcing "
                                     "the VIPs again", state="master", family=version)
                    announce(ha.garp_count, ha.garp_interval)
                elif isinstance(a, BecomeBackup):
                    gone = await trio.to_thread.run_sync(vips.remove)
                    log.info("VRRP backup (vrid %d, priority %d): %s%s", ha.vrid,
                             machine.priority, a.reason,
                             f"; VIPs removed: {', '.join(gone)}" if gone else "")
                    self.plane.event("ha", f"IPv{version} VRRP backup: {a.reason}",
                                     state="backup", family=version)

        self.vrrps[-1] = (machine, act)
        try:
            async with trio.open_nursery() as nursery:
                async def receive() -> None:
                    while True:
                        adv, src = await sock.receive()
                        self.vrrp_peers[src] = {"address": src, "priority": adv.priority,
                                                "interval": adv.interval_cs / 100,
                                                "seen": time.time()}
                        await act(machine.on_advert(adv, src, trio.current_time()))
                        wake.set()

                async def refresh() -> None:
                    while ha.garp_refresh > 0:
                        await trio.sleep(ha.garp_refresh)
                        if machine.state == "master":
                            announce(1, 0.0)

                async def track() -> None:
                    """Lower the priority for each tracked condition that fails; hold an
                    operator's demotion or promotion."""
                    while True:
                        await trio.sleep(0.2)
                        failing = self._track_failures(ha)
                        want = wanted_priority(ha.priority, len(failing), ha.track_weight,
                                               self.ha_override)
                        if want != machine.priority:
                            why = (f"operator: {self.ha_override}" if self.ha_override
                                   else "; ".join(failing) or "tracked conditions recovered")
                            log.warning("VRRP priority %d -> %d: %s", machine.priority, want,
                                        why)
                            self.plane.event("ha", f"IPv{version} VRRP priority "
                                             f"{machine.priority} -> {want}: {why}",
                                             priority=want, family=version)
                            await act(machine.set_priority(want, trio.current_time(), why))

                nursery.start_soon(receive)
                nursery.start_soon(refresh)
                nursery.start_soon(track)
                await act(machine.start(trio.current_time()))
                task_status.started()
                while True:
                    deadline = machine.next_deadline()
                    with trio.move_on_at(deadline if deadline is not None else math.inf):
                        await wake.wait()
                    wake = trio.Event()
                    await act(machine.on_timer(trio.current_time()))
        finally:
            sock.close()

    async def ha_action(self, action: str, who: str) -> str:
        """An operator's ``failover`` (hand over if master, take over if backup),
        ``demote`` (stay backup: priority 1 until ``auto``), ``promote`` (become master:
        priority 254 until ``auto``) or ``auto`` (back to the configured priority).
        Returns what happened; raises AdminError when there is no HA to act on."""
        from .control.admin import AdminError
        from .ha.vrrp import wanted_priority

        assert self.static is not None
        ha = self.static.ha
        if ha.mode == "standalone":
            raise AdminError(409, "ha.mode is standalone: there is no peer to fail over to")
        if ha.mode == "vrrp" and ha.priority == 255 and action in ("demote", "failover"):
            raise AdminError(409, "this box is the address owner (priority 255) and "
                                  "always masters its VIPs (RFC 5798)")
        leading = self.is_leader()
        if action == "failover":
            action = "demote" if leading else "promote"
        self.ha_override = "" if action == "auto" else action
        why = f"operator {who}: {action}"
        self.plane.event("ha", why, override=self.ha_override)
        if ha.mode == "lease":
            if action == "demote":
                await self._release_lease()
                return "demoted: lease released; not competing for it until promote or auto"
            holder = self.leadership.holder if self.leadership else None
            return (f"competing for the lease again (held by {holder or 'nobody'}; taken "
                    "when it is free or expires)")
        now = trio.current_time()
        want = wanted_priority(ha.priority, len(self._track_failures(ha)), ha.track_weight,
                               self.ha_override)
        for machine, act in self.vrrps:
            if act is None:
                continue
            await act(machine.set_priority(want, now, why))
            if action == "demote":
                await act(machine.step_down(now, why))
            elif action == "promote":
                await act(machine.take_over(now, why))
        states = ", ".join(f"{m.state} at priority {m.priority}" for m, _ in self.vrrps)
        return {"demote": f"demoted: {states}; stays backup until promote or auto",
                "promote": f"promoted: {states}; stays preferred until demote or auto",
                "auto": f"configured priority again: {states}"}[action]

    def ha_view(self) -> dict[str, Any]:
        """HA state for the status endpoint, with alerts under ``alerts``."""
        ha = self.static.ha if self.static else None
        if ha is None or ha.mode == "standalone":
            return {"mode": "standalone", "leader": True, "alerts": []}
        alerts = []
        if self.ha_override:
            alerts.append(f"HA held by an operator: {self.ha_override} (ctl ha auto to "
                          "release)")
        out: dict[str, Any] = {"mode": ha.mode, "leader": self.is_leader(),
                               "override": self.ha_override}
        if ha.mode == "lease":
            lead = self.leadership
            out.update(identity=ha.identity, lease=f"{ha.lease_namespace}/{ha.lease_name}",
                       holder=lead.holder if lead else None)
        else:
            now = time.time()
            routers = []
            for m, _ in self.vrrps:
                fam = ipaddress.ip_address(m.config.addresses[0]).version \
                    if m.config.addresses else 4
                routers.append({"family": f"IPv{fam}", "vrid": m.config.vrid,
                                "state": m.state, "priority": m.priority,
                                "configured_priority": m.config.priority,
                                "reason": m.reason, "vips": list(m.config.addresses)})
                if m.priority < m.config.priority and not self.ha_override:
                    alerts.append(f"VRRP IPv{fam} priority lowered to {m.priority}: "
                                  f"{m.reason}")
            peers = [{**p, "seen_ago": round(now - p["seen"], 1)}
                     for p in self.vrrp_peers.values()]
            out.update(interface=ha.interface, vrid=ha.vrid, routers=routers, peers=peers)
            if not any(p["seen_ago"] < 3 * p["interval"] + 1 for p in peers):
                alerts.append("no VRRP peer heard: this box has no standby")
        out["alerts"] = alerts
        return out

    def sync_view(self) -> dict[str, Any] | None:
        """The cluster sync's state for the status endpoint (None without a cluster)."""
        sync = self.sync
        if sync is None:
            return None
        return {"synced": sync.synced, "changes": sync.changes,
                "watches": [{"name": f.name, "state": f.state, "detail": f.detail,
                             "errors": f.errors} for f in list(sync.follows)],
                "vips": len(self.ipam.by_service) if self.ipam is not None else 0,
                "status_writes": self.status_writes, "problems": len(self.problems_seen)}

    def no_healthy_backend(self, lst: Listener) -> bool:
        """Every actively checked backend of ``lst`` is down (False without checks)."""
        keys = [k for k, _, _ in lst.checked()]
        return bool(keys) and all((lst.name, k) in self.health.down for k in keys)

    def _track_failures(self, ha: Any) -> list[str]:
        """The tracked conditions that fail now, each as a reason."""
        out = []
        snap = self.snapshot
        for name in ha.track_listeners:
            lst = snap.listener(name) if snap else None
            if lst is not None and self.no_healthy_backend(lst):
                out.append(f"listener {name} has no healthy backend")
        if ha.track_api_timeout and self.sync is not None:
            now = time.monotonic()
            stale = [f.name for f in self.sync.follows
                     if f.state != "synced" and now - f.since > ha.track_api_timeout]
            if stale:
                out.append(f"cluster API unreachable for over {ha.track_api_timeout:g}s "
                           f"({', '.join(stale)})")
        return out

    def _nursery_start(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _stop_vrrp(self) -> None:
        """On shutdown: advertise priority 0 so that a backup takes over at once, and
        give the VIPs up."""
        with trio.move_on_after(2):
            for machine, act in self.vrrps:
                if act is not None:
                    await act(machine.shutdown(trio.current_time()))

    async def _release_lease(self) -> None:
        """Give the Lease up on a clean stop, so that another box takes over at once."""
        from .ha.lease import decide

        assert self.static is not None
        ha = self.static.ha
        io = self._lease_io
        if io is None or self.leadership is None or not self.leadership.leading():
            return
        read, write = io
        with trio.move_on_after(2):
            try:
                lease = await trio.to_thread.run_sync(read)
                d = decide(ha.identity, ha.lease_name, ha.lease_namespace, lease, time.time(),
                           ha.lease_duration, release=True)
                if d.body is not None:
                    await trio.to_thread.run_sync(write, d.action, d.body)
                    log.info("released lease %s/%s", ha.lease_namespace, ha.lease_name)
            except Exception as e:
                log.warning("lease not released: %s", e)
        self.leadership.lost()

    def _status_echo(self, collection: str, obj: dict[str, Any]) -> None:
        """A Service or Ingress changed only outside what translation reads: confirm a
        status we wrote, or put ours back if someone else changed it."""
        from .sync.status import needs_write, write_status

        t = self.last_translation
        if t is None or collection not in ("services", "ingresses"):
            return
        kind = "Service" if collection == "services" else "Ingress"
        meta = obj.get("metadata") or {}
        k = (kind, meta.get("namespace", ""), meta.get("name", ""))
        want = t.status.get(k)
        if want is None:
            return
        want = list(dict.fromkeys(want))
        if needs_write(self.pending_status, k, obj, want, self.is_leader()):
            assert self._nursery is not None
            self._nursery.start_soon(trio.to_thread.run_sync, write_status, self.sync_api,
                                     [(*k, want)])

    async def _apply_learned(self, snap: Snapshot) -> None:
        await self._put_in_force(snap)
        log.info("cluster change: serving snapshot v%d (%s): %d listeners from the cluster",
                 snap.version, snap.digest, len(self.dynamic))

    async def _write_back(self, cluster: Any, t: Any, problems: list[Any]) -> None:
        from .sync.status import post_events, status_changes, write_status

        pool = set(self.ipam.pool)
        if self.static is not None and self.static.cluster is not None:
            pool |= {a[0] for a in (self.static.cluster.ingress_http,
                                    self.static.cluster.ingress_https) if a}
        changes = status_changes(cluster, t, pool, self.pending_status)
        if changes:
            failed = await trio.to_thread.run_sync(write_status, self.sync_api, changes)
            self.status_writes += len(changes) - len(failed)
            for k in failed:
                self.pending_status.pop(k, None)
        if problems:
            await trio.to_thread.run_sync(post_events, self.sync_api, problems, "edgelb")

    async def drain(self) -> None:
        """Stop accepting, let flows finish until the drain deadline, stop the workers."""
        assert self.snapshot is not None
        self.draining = True
        await self._release_lease()
        await self._stop_vrrp()
        sd_notify("STOPPING=1")
        timeout = self.snapshot.drain_timeout
        self.plane.event("drain", f"draining: up to {timeout:g}s for open flows")
        log.info("draining: up to %gs for open flows", timeout)
        deadline = trio.current_time() + timeout
        if self.local is not None:
            await self.local.drain(deadline)
        for wp in self.procs:
            try:
                await wp.channel.send("drain", timeout)
            except OSError:
                pass
        with trio.move_on_at(deadline + 5):
            for wp in self.procs:
                await wp.proc.wait()
        for wp in self.procs:
            if wp.proc.returncode is None:
                wp.proc.kill()
        log.info("drained, exiting")

    def _health_changed(self, down: set[tuple[str, str]]) -> None:
        was = self.down_seen
        for lst, key in sorted(down - was):
            self.plane.event("health", f"listener {lst}: backend {key} is down",
                             listener=lst, backend=key, health="down")
        for lst, key in sorted(was - down):
            self.plane.event("health", f"listener {lst}: backend {key} is up",
                             listener=lst, backend=key, health="up")
        self.down_seen = set(down)
        if self.local is not None:
            self.local.set_health(down)
        if self._nursery is not None:
            for wp in self.procs:
                self._nursery.start_soon(wp.channel.send, "health", down)

    def _start_metrics(self, bind: tuple[str, int]) -> None:
        from .metrics import start_metrics_server

        start_metrics_server(bind, self)


async def worker_main(fd: int, wid: int) -> None:
    """A worker process: serve the Snapshots the control process sends until told to
    drain, or until the control process goes away."""
    # The control process owns signals: Ctrl-C in a terminal reaches the whole process
    # group, and the workers must drain when told, not die on the spot.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise_fd_limit()
    sock = socket.socket(fileno=fd)
    channel = Channel(trio.socket.from_stdlib_socket(sock))
    async with trio.open_nursery() as nursery:
        worker = Worker(nursery, wid)

        async def report() -> None:
            while True:
                await channel.send("stats", worker.stats)
                await trio.sleep(0.5)

        first = True
        while True:
            try:
                kind, payload = await channel.receive()
            except (EOFError, OSError):
                nursery.cancel_scope.cancel()
                return
            if kind == "snapshot":
                errors = worker.apply(payload)
                await channel.send("applied", errors)
                if first:
                    nursery.start_soon(report)
                    first = False
            elif kind == "health":
                worker.set_health(payload)
            elif kind == "flows":
                await channel.send("flows", (payload, worker.flow_rows()))
            elif kind == "drain":
                await worker.drain(trio.current_time() + float(payload))
                await channel.send("stats", worker.stats)
                nursery.cancel_scope.cancel()
                return

