"""The daemon: the control process. It wires the services together, turns signals into
reloads and drains, and tells systemd how it is doing. Each job is a service of its own
that publishes a view; the control API and the metrics read only those views.

    config    ConfigService    the config file, reloads, the Snapshot in force
    datapath  Datapath         forwarding: in this process, or in worker processes
    health    HealthChecker    active health checks, verdicts to the datapath
    cluster   ClusterService   following the cluster, status write-back (optional)
    ha        HaService        who leads: standalone, a Lease, or VRRP
    control   ControlPlane     the control API and metrics, over the views

Signals: SIGHUP reloads (an invalid config is refused and the old Snapshot keeps
serving) and reopens the access log file, SIGUSR1 only reopens it (logrotate), SIGTERM
and SIGINT drain (stop accepting, let flows finish until
``drain_timeout``, exit 0). With NOTIFY_SOCKET set, systemd hears READY, RELOADING and
STOPPING.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time

import trio

from . import __version__
from .config.service import ConfigService
from .control.admin import AdminState
from .control.audit import AuditLog
from .control.events import Events
from .control.metrics import open_metrics_socket, serve_metrics
from .control.plane import ControlPlane, Operations, Views, restore_admin
from .control.server import open_control_socket, serve_control
from .datapath.checks import HealthChecker
from .datapath.kernel.service import KernelDatapath
from .datapath.paths import SplitDatapath
from .datapath.workers import Datapath, LocalDatapath, datapath_for
from .files import trusted_dir
from .ha.bgp_runner import BgpRunner
from .ha.lease_runner import LeaseRunner
from .ha.service import HaService, Standalone, tracked_failures
from .ha.vrrp_runner import VrrpRunner
from .model import Listener, Snapshot
from .process import ping_watchdog, raise_fd_limit, sd_notify, watchdog_interval
from .sync.kube import api_client
from .sync.service import ClusterService
from .views import SyncView

log = logging.getLogger("edgelb")


class Daemon:
    """One edgelb instance: ``await Daemon(path).serve()`` runs until drained."""

    def __init__(self, config_path: str, log_format: str = "text") -> None:
        self.log_format = log_format
        self.events = Events()
        self.admin = AdminState()
        self.config = ConfigService(config_path, self.events)
        self.health = HealthChecker(self._health_changed)
        # Replaced at start by the ones the config asks for.
        self.datapath: Datapath = LocalDatapath()
        self.ha: HaService = Standalone()
        self._nursery: trio.Nursery | None = None
        self._down_seen: set[tuple[str, str]] = set()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Start everything, run until SIGTERM/SIGINT, drain, return."""
        static = self.config.load()
        soft, hard, failed = raise_fd_limit()
        log.log(logging.WARNING if failed else logging.INFO,
                "descriptors: %d (hard limit %d)%s; each flow needs 2, 4 while it splices",
                soft, hard, f"; could not raise: {failed}" if failed else "")
        control_sock = open_control_socket(static.control)
        for directory, mode in self._written_dirs(static):
            trusted_dir(directory, mode)
        restore_admin(self.admin, static.control.state_file)
        self.config.edit = self.admin.apply
        self.config.put_in_force = self._put_in_force
        snap = self.config.compose_first()
        kernel = snap.kernel
        datapath = SplitDatapath(datapath_for(snap, self.log_format, self.events),
                                 KernelDatapath(kernel.table, (kernel.snat_address(4),
                                                               kernel.snat_address(6))))
        ha, cluster = self._leadership(snap)
        views = Views(snapshot=self.config.view, traffic=datapath.traffic,
                      health=self.health.view, ha=ha.view,
                      sync=cluster.view if cluster is not None else _no_sync,
                      flows=datapath.flow_rows, paths=datapath.view)
        plane = ControlPlane(self.events, self.admin, views,
                             Operations(self.reload, self.config.recompose, ha.act,
                                        datapath.cut_flow),
                             AuditLog(snap.control.audit_log), snap.control.state_file)
        metrics_sock = open_metrics_socket(snap.metrics_bind) if snap.metrics_bind else None
        self.datapath, self.ha = datapath, ha
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM,
                                       signal.SIGINT) as sigs:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(serve_control, control_sock, snap.control, plane)
                await nursery.start(plane.keep_rates)
                await datapath.start(nursery, snap)
                await nursery.start(self.health.run, snap)
                if cluster is not None:
                    await nursery.start(cluster.run)
                await nursery.start(ha.run)
                if metrics_sock is not None:
                    await nursery.start(serve_metrics, metrics_sock, views,
                                        lambda: plane.streams.open)
                self._started(snap, nursery)
                task_status.started()
                async for signum in sigs:
                    if signum in (signal.SIGHUP, signal.SIGUSR1):
                        datapath.reopen_logs()  # logrotate's signal, either of them
                    if signum == signal.SIGHUP:
                        await self.reload()
                    elif signum != signal.SIGUSR1:
                        await self.drain()
                        nursery.cancel_scope.cancel()
                        break

    @staticmethod
    def _written_dirs(snap: Snapshot) -> list[tuple[str, int]]:
        """The directories the daemon writes into besides the control socket's and the
        audit log's (checked as they open): refused at start if others could write."""
        out = []
        if snap.control.state_file:
            out.append((os.path.dirname(snap.control.state_file), 0o750))
        if snap.cluster is not None:
            out.append((snap.cluster.tls_dir, 0o700))
        return out

    def _leadership(self, snap: Snapshot) -> tuple[HaService, ClusterService | None]:
        """The HA service of ``ha.mode`` and, with a cluster section, the cluster service
        (which writes status only while the HA service says this box leads)."""
        spec = snap.ha
        cluster: ClusterService | None = None
        ha: HaService

        def learned() -> list[str]:
            """The VIPs of the listeners learned from the cluster."""
            return [lst.bind[0] for lst in self.config.dynamic]

        if spec.mode == "lease" and snap.cluster is not None:
            ha = LeaseRunner(spec, functools.partial(api_client, snap.cluster), self.events,
                             lambda: cluster.write_now() if cluster is not None else None)
        elif spec.mode == "bgp":
            def served() -> tuple[list[str], tuple[Listener, ...], set[tuple[str, str]]]:
                snap = self.config.snapshot
                return [*spec.vips, *learned()], snap.listeners if snap else (), \
                    self.health.down

            ha = BgpRunner(spec, self.events, served)
        elif spec.mode == "vrrp":
            def track() -> list[str]:
                return tracked_failures(spec, self.config.snapshot, self.health.down,
                                        cluster.view() if cluster is not None else None,
                                        time.monotonic())

            ha = VrrpRunner(spec, self.events, track, learned,
                            lambda: cluster.ours() if cluster is not None else (),
                            lambda: cluster.write_now() if cluster is not None else None)
        else:
            ha = Standalone()
        if snap.cluster is not None:
            cluster = ClusterService(snap.cluster, ha.is_leader, self.config.set_dynamic)
        return ha, cluster

    def _started(self, snap: Snapshot, nursery: trio.Nursery) -> None:
        log.info("edgelb %s serving snapshot v%d (%s): %d listeners, %d workers",
                 __version__, snap.version, snap.digest, len(snap.listeners), snap.workers)
        self.events.event("start", f"edgelb {__version__} serving snapshot v{snap.version}: "
                          f"{len(snap.listeners)} listeners")
        sd_notify("READY=1")
        every = watchdog_interval()
        if every is not None:
            nursery.start_soon(ping_watchdog, every)

    async def _put_in_force(self, snap: Snapshot, all_or_nothing: bool) -> list[str]:
        errors = await self.datapath.apply(snap, all_or_nothing)
        if errors and all_or_nothing:
            return errors
        assert self._nursery is not None
        await self._nursery.start(self.health.run, snap)
        return errors

    async def reload(self) -> list[str]:
        """Re-read the config (SIGHUP, or the control API's reload); the file's errors
        when it was refused and the old Snapshot keeps serving."""
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            return await self.config.reload()
        finally:
            sd_notify("READY=1")

    async def drain(self) -> None:
        """Hand leadership over, stop accepting, let flows finish for ``drain_timeout``."""
        assert self.config.snapshot is not None
        grace = self.config.snapshot.drain_timeout
        self.config.draining = True
        await self.ha.stop()
        sd_notify("STOPPING=1")
        self.events.event("drain", f"draining: up to {grace:g}s for open flows")
        log.info("draining: up to %gs for open flows", grace)
        await self.datapath.drain(grace)
        log.info("drained, exiting")

    def _health_changed(self, down: set[tuple[str, str]]) -> None:
        was = self._down_seen
        for lst, key in sorted(down - was):
            self.events.event("health", f"listener {lst}: backend {key} is down",
                              listener=lst, backend=key, health="down")
        for lst, key in sorted(was - down):
            self.events.event("health", f"listener {lst}: backend {key} is up",
                              listener=lst, backend=key, health="up")
        self._down_seen = set(down)
        self.datapath.set_health(down)


def _no_sync() -> SyncView | None:
    return None
