"""The datapath as the control process runs it: inside this process (``workers: 1``), or
as N worker processes, each a trio loop with its own SO_REUSEPORT listeners, sent every
Snapshot and health verdict, asked for its flows, and replaced when it dies (as nginx's
master does). Both answer the same ``Datapath`` calls.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any, Protocol

import trio

from ..model import Snapshot
from ..process import raise_fd_limit
from ..views import EventSink, FlowRow, Traffic, merge
from .ipc import Channel
from .worker import Worker

log = logging.getLogger("edgelb")

Down = set[tuple[str, str]]
# A worker that does not answer a flows request within this long is left out of the page.
FLOWS_PATIENCE = 2.0
# A worker binds and composes a Snapshot within this long, or it failed to apply it.
APPLY_PATIENCE = 30.0
# A worker that dies at once must not turn into a fork loop.
RESPAWN_DELAY = 1.0


class Datapath(Protocol):
    """What the control process asks of the datapath."""

    async def start(self, nursery: trio.Nursery, snap: Snapshot) -> None:
        """Bind every listener of the first Snapshot (raises OSError when one cannot be)."""

    async def apply(self, snap: Snapshot, all_or_nothing: bool = False) -> list[str]:
        """Put ``snap`` in force; the listeners that could not be bound. With
        ``all_or_nothing`` the Snapshot in force stays whole when any could not be."""

    def set_health(self, down: Down) -> None: ...

    def reopen_logs(self) -> None:
        """Open the access log file again (logrotate moved it)."""

    def traffic(self) -> Traffic:
        """The counters, added up: new objects, the caller's own."""

    async def flow_rows(self) -> list[FlowRow]: ...

    async def cut_flow(self, flow_id: str) -> bool:
        """Cut the open flow ``flow_id`` (a flows row's id) now; False when none is."""

    async def drain(self, grace: float) -> None: ...


def datapath_for(snap: Snapshot, log_format: str, events: EventSink) -> Datapath:
    """In this process for ``workers: 1``; worker processes otherwise."""
    if snap.workers == 1:
        return LocalDatapath()
    return WorkerPool(snap.workers, log_format, events)


class LocalDatapath:
    """The datapath inside the control process."""

    def __init__(self) -> None:
        self.worker: Worker | None = None

    async def start(self, nursery: trio.Nursery, snap: Snapshot) -> None:
        self.worker = Worker(nursery)
        self.worker.apply(snap, strict=True)

    async def apply(self, snap: Snapshot, all_or_nothing: bool = False) -> list[str]:
        assert self.worker is not None
        return self.worker.apply(snap, all_or_nothing=all_or_nothing)

    def set_health(self, down: Down) -> None:
        if self.worker is not None:
            self.worker.set_health(down)

    def reopen_logs(self) -> None:
        if self.worker is not None:
            self.worker.access.reopen()

    def traffic(self) -> Traffic:
        return merge([self.worker.stats]) if self.worker is not None else {}

    async def flow_rows(self) -> list[FlowRow]:
        return self.worker.flow_rows() if self.worker is not None else []

    async def cut_flow(self, flow_id: str) -> bool:
        number = _flow_number(flow_id, 0)
        return self.worker is not None and number is not None and \
            self.worker.cut_flow(number)

    async def drain(self, grace: float) -> None:
        if self.worker is not None:
            await self.worker.drain(trio.current_time() + grace)


class _WorkerProcess:
    def __init__(self, wid: int, proc: trio.Process, channel: Channel) -> None:
        self.wid = wid
        self.proc = proc
        self.channel = channel
        self.stats: Traffic = {}
        self.asked = 0
        self.answers: dict[int, tuple[trio.Event, list[Any]]] = {}

    async def ask(self, kind: str, payload: Any, patience: float) -> list[Any] | None:
        """Send a numbered request; the items of the worker's answer, or None when it does
        not answer within ``patience`` seconds (or is gone)."""
        self.asked += 1
        n = self.asked
        done = trio.Event()
        items: list[Any] = []
        self.answers[n] = (done, items)
        try:
            await self.channel.send(kind, (n, payload))
            with trio.move_on_after(patience):
                await done.wait()
        except OSError:
            pass
        finally:
            self.answers.pop(n, None)
        return items if done.is_set() else None

    async def ask_flows(self) -> list[FlowRow]:
        """The worker's open flows (none if it does not answer in time)."""
        return await self.ask("flows", None, FLOWS_PATIENCE) or []

    def receive(self, kind: str, payload: Any) -> None:
        if kind == "stats":
            self.stats = payload
        elif kind in ("flows", "applied", "cut"):
            n, items = payload
            waiting = self.answers.get(n)
            if waiting is not None:
                waiting[1].extend(items)
                waiting[0].set()


class WorkerPool:
    """N worker processes, each serving every listener."""

    def __init__(self, count: int, log_format: str, events: EventSink) -> None:
        self.count = count
        self.log_format = log_format
        self.events = events
        self.procs: list[_WorkerProcess] = []
        self.snapshot: Snapshot | None = None
        self.down: Down = set()
        self.draining = False
        # Counters of workers that died, so that totals never go backwards.
        self.retired: Traffic = {}
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery, snap: Snapshot) -> None:
        self._nursery = nursery
        for wid in range(self.count):
            self.procs.append(await self._spawn(wid))
        errors = await self._send_all(snap, strict=True)
        if errors:
            for wp in self.procs:
                wp.proc.kill()
            raise OSError(errors[0])
        self.snapshot = snap

    async def apply(self, snap: Snapshot, all_or_nothing: bool = False) -> list[str]:
        errors = await self._send_all(snap, all_or_nothing=all_or_nothing)
        if errors and all_or_nothing and self.snapshot is not None:
            # The workers that took it go back to the Snapshot in force: a worker that
            # could not bind changed nothing, so all serve the same Snapshot again.
            await self._send_all(self.snapshot)
            return errors
        self.snapshot = snap
        return errors

    async def _send_all(self, snap: Snapshot, strict: bool = False,
                        all_or_nothing: bool = False) -> list[str]:
        """``snap`` to every worker at once; the bind errors they answer (a worker that
        does not answer within APPLY_PATIENCE is one)."""
        answers: list[list[str] | None] = [None] * len(self.procs)

        async def one(i: int, wp: _WorkerProcess) -> None:
            answers[i] = await wp.ask("snapshot", (snap, strict, all_or_nothing),
                                      APPLY_PATIENCE)

        async with trio.open_nursery() as nursery:
            for i, wp in enumerate(self.procs):
                nursery.start_soon(one, i, wp)
        errors: list[str] = []
        for wp, got in zip(self.procs, answers, strict=True):
            if got is None:
                errors.append(f"worker {wp.wid} did not apply snapshot v{snap.version}")
            errors += [e for e in got or [] if e not in errors]
        return errors

    def set_health(self, down: Down) -> None:
        self.down = set(down)
        if self._nursery is not None:
            for wp in self.procs:
                self._nursery.start_soon(wp.channel.send, "health", self.down)

    def reopen_logs(self) -> None:
        if self._nursery is not None:
            for wp in self.procs:
                self._nursery.start_soon(wp.channel.send, "reopen", None)

    def traffic(self) -> Traffic:
        return merge([self.retired, *(wp.stats for wp in self.procs)])

    async def flow_rows(self) -> list[FlowRow]:
        parts: list[list[FlowRow]] = [[] for _ in self.procs]

        async def one(i: int, wp: _WorkerProcess) -> None:
            parts[i] = await wp.ask_flows()

        async with trio.open_nursery() as nursery:
            for i, wp in enumerate(self.procs):
                nursery.start_soon(one, i, wp)
        return [r for part in parts for r in part]

    async def cut_flow(self, flow_id: str) -> bool:
        wid = flow_id.partition(".")[0]
        for wp in self.procs:
            number = _flow_number(flow_id, wp.wid)
            if str(wp.wid) == wid and number is not None:
                return await wp.ask("cut", number, FLOWS_PATIENCE) == [True]
        return False

    async def drain(self, grace: float) -> None:
        self.draining = True
        for wp in self.procs:
            try:
                await wp.channel.send("drain", grace)
            except OSError:
                pass
        with trio.move_on_after(grace + 5):
            for wp in self.procs:
                await wp.proc.wait()
        for wp in self.procs:
            if wp.proc.returncode is None:
                wp.proc.kill()

    async def _spawn(self, wid: int) -> _WorkerProcess:
        assert self._nursery is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "appliance.cli", "--log-format", self.log_format,
                 "_worker", "--fd", str(theirs.fileno()), "--id", str(wid)],
                pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        wp = _WorkerProcess(wid, proc, Channel(trio.socket.from_stdlib_socket(ours)))
        self._nursery.start_soon(self._listen, wp)
        return wp

    async def _listen(self, wp: _WorkerProcess) -> None:
        while True:
            try:
                kind, payload = await wp.channel.receive()
            except (EOFError, OSError):
                await self._replace(wp)
                return
            wp.receive(kind, payload)

    async def _replace(self, wp: _WorkerProcess) -> None:
        """A worker died (a crash, an OOM kill): its flows are lost, but the other
        workers keep accepting on its listeners; another starts in its place with the
        Snapshot and health in force."""
        code = await wp.proc.wait()
        # Counted traffic stays counted; its open flows are gone.
        for st in wp.stats.values():
            for b in st.backends.values():
                b.active = 0
        self.retired = merge([self.retired, wp.stats])
        if self.draining or self.snapshot is None:
            return
        self.events.event("worker", f"worker {wp.wid} (pid {wp.proc.pid}) exited with "
                          f"status {code}; starting a new one")
        log.error("worker %d (pid %d) exited with status %s; starting a new one", wp.wid,
                  wp.proc.pid, code)
        await trio.sleep(RESPAWN_DELAY)
        new = await self._spawn(wp.wid)
        self.procs[self.procs.index(wp)] = new
        await new.ask("snapshot", (self.snapshot, False, False), APPLY_PATIENCE)
        await new.channel.send("health", self.down)


# How often a worker process reports its counters to the control process.
REPORT_EVERY = 0.5


def _flow_number(flow_id: str, wid: int) -> int | None:
    """The number of worker ``wid``'s flow ``flow_id`` ("WID.N"), or None."""
    head, _, number = flow_id.partition(".")
    return int(number) if head == str(wid) and number.isdigit() else None


async def worker_main(fd: int, wid: int) -> None:
    """A worker process: serve the Snapshots the control process sends until told to
    drain, or until the control process goes away."""
    # The control process owns signals: Ctrl-C in a terminal reaches the whole process
    # group, and the workers must drain when told, not die on the spot.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the control process reopens the logs
    raise_fd_limit()
    channel = Channel(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
    async with trio.open_nursery() as nursery:
        worker = Worker(nursery, wid)

        async def report() -> None:
            while True:
                await channel.send("stats", worker.stats)
                await trio.sleep(REPORT_EVERY)

        reporting = False
        while True:
            try:
                kind, payload = await channel.receive()
            except (EOFError, OSError):
                nursery.cancel_scope.cancel()
                return
            if kind == "snapshot":
                n, (snap, strict, all_or_nothing) = payload
                try:
                    errors = worker.apply(snap, strict=strict, all_or_nothing=all_or_nothing)
                except OSError as e:
                    errors = [str(e.strerror or e)]
                await channel.send("applied", (n, errors))
                if not reporting:
                    nursery.start_soon(report)
                    reporting = True
            elif kind == "health":
                worker.set_health(payload)
            elif kind == "reopen":
                worker.access.reopen()
            elif kind == "flows":
                await channel.send("flows", (payload[0], worker.flow_rows()))
            elif kind == "cut":
                await channel.send("cut", (payload[0], [worker.cut_flow(payload[1])]))
            elif kind == "drain":
                await worker.drain(trio.current_time() + float(payload))
                await channel.send("stats", worker.stats)
                nursery.cancel_scope.cancel()
                return
