"""The daemon: the control process (config, health checks, metrics, signals) and the
datapath, either in-process (``workers: 1``) or in N worker processes that each hold
their own SO_REUSEPORT listeners and receive every new Snapshot.

Signals: SIGHUP reloads (an invalid config is refused and the old Snapshot keeps
serving), SIGTERM and SIGINT drain (stop accepting, let flows finish until
``drain_timeout``, exit 0). With NOTIFY_SOCKET set, systemd hears READY, RELOADING and
STOPPING.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import sys
import time

import trio

from . import __version__
from .config import ConfigError, load_file
from .datapath.checks import HealthChecker
from .datapath.flows import ListenerStats, merge
from .datapath.worker import Worker
from .ipc import Channel
from .model import Snapshot

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

    # -- start and stop ------------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Start everything, run until SIGTERM/SIGINT, drain, return."""
        snap = load_file(self.config_path, version=1)
        raise_fd_limit()
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._start_datapath(nursery, snap)
                self.snapshot = snap
                await nursery.start(self.health.run, snap)
                if snap.metrics_bind:
                    self._start_metrics(snap.metrics_bind)
                log.info("edgelb %s serving snapshot v%d (%s): %d listeners, %d workers",
                         __version__, snap.version, snap.digest, len(snap.listeners),
                         snap.workers)
                sd_notify("READY=1")
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

    def stats(self) -> dict[str, ListenerStats]:
        """The counters of every worker added up."""
        if self.local is not None:
            return merge([self.local.stats])
        return merge([self.retired, *(wp.stats for wp in self.procs)])

    async def reload(self) -> bool:
        """Re-read the config; put it in force if valid, else keep the old Snapshot."""
        assert self.snapshot is not None
        assert self._nursery is not None
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            snap = load_file(self.config_path, version=self.snapshot.version + 1)
        except ConfigError as e:
            for issue in e.issues:
                log.error("reload refused, %s: %s", e.source, issue)
            log.error("reload refused: still serving snapshot v%d", self.snapshot.version)
            sd_notify("READY=1")
            return False
        if snap.workers != self.snapshot.workers:
            log.warning("workers changed from %d to %d: takes effect on restart",
                        self.snapshot.workers, snap.workers)
        if snap.metrics_bind != self.snapshot.metrics_bind:
            log.warning("metrics.bind changed: takes effect on restart")
        if self.local is not None:
            self.local.apply(snap)
        for wp in self.procs:
            await wp.channel.send("snapshot", snap)
        self.snapshot = snap
        await self._nursery.start(self.health.run, snap)
        log.info("reloaded: serving snapshot v%d (%s)", snap.version, snap.digest)
        sd_notify("READY=1")
        return True

    async def drain(self) -> None:
        """Stop accepting, let flows finish until the drain deadline, stop the workers."""
        assert self.snapshot is not None
        self.draining = True
        sd_notify("STOPPING=1")
        timeout = self.snapshot.drain_timeout
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
            elif kind == "drain":
                await worker.drain(trio.current_time() + float(payload))
                await channel.send("stats", worker.stats)
                nursery.cancel_scope.cancel()
                return

