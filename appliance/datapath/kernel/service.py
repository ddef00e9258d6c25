"""The kernel datapath as a service: it keeps edgelb's nftables table in step with the
Snapshot in force and the health verdicts, one transaction per change, and reads back
what the kernel did (counters, conntrack flows).

A backend that leaves a listener (removed by a reload, disabled by an operator, or its
listener gone) keeps its established flows until ``drain_timeout``; then its conntrack
entries are deleted, unless it came back meanwhile. A backend that is down or drained
(weight 0) only leaves the dispatch map: its flows run to their end, as in user space.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ...collector import cycle_collection_paused
from ...model import Listener
from ...views import BackendStats, FlowRow, ListenerStats, Traffic
from . import conntrack, nft
from .rules import (
    CUT_BIT,
    ID_MASK,
    MARK,
    MARK_MASK,
    Dispatch,
    Ids,
    KernelListener,
    Ruleset,
    dispatch_of,
    plan,
    render_change,
    render_full,
)

log = logging.getLogger("edgelb.kernel")

Down = set[tuple[str, str]]
# How often the counters and the flow count per backend are read back.
POLL_EVERY = 2.0
# Flow rows younger than this are answered as they are; older ones are answered while a
# new read runs; from ROWS_STALE on, the caller waits for the read.
ROWS_FRESH = 1.0
ROWS_STALE = 3.0


@dataclass(frozen=True)
class Retired:
    """A backend that left a kernel listener: its flows are cut at ``deadline``."""

    listener: str
    lid: int
    proto: str
    key: str
    address: tuple[str, int]
    deadline: float


class KernelDatapath:
    """edgelb's nftables table (``table``) and what it counted."""

    def __init__(self, table: str, snat: tuple[str | None, str | None] = (None, None),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.snat4, self.snat6 = snat
        self.clock = clock
        self.why_not: str | None = None  # set by probe(): why the kernel cannot serve
        self.listeners: tuple[Listener, ...] = ()
        self.down: Down = set()
        self.ids = Ids()
        self._plans: dict[str, tuple[tuple[object, ...], KernelListener, object]] = {}
        self.ruleset = Ruleset()
        self.installed = False  # the table holds self.ruleset
        self.retired: dict[tuple[str, str], Retired] = {}
        self.counters = nft.Counters()
        self.base: dict[tuple[str, str], BackendStats] = {}  # counts before a full reload
        self.base_listener: dict[str, ListenerStats] = {}
        self.active: dict[tuple[int, str, int], int] = {}
        self._traffic: tuple[tuple[object, ...], Traffic] | None = None
        self._rows: list[FlowRow] = []
        self._flows: dict[int, conntrack.KernelFlow] = {}  # the open ones, by conntrack id
        self._rows_at = -1e9
        self._reading: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self.changes = 0  # transactions applied
        self.failures = 0  # transactions refused
        self.last_seconds = 0.0  # the last one, from its Snapshot to rules in force

    # -- lifecycle ------------------------------------------------------------------------

    async def probe(self) -> bool:
        """Whether nftables can be programmed here; says why not once."""
        self.why_not = await trio.to_thread.run_sync(nft.unavailable)
        if self.why_not is not None:
            log.warning("kernel datapath unavailable (%s): every listener is served in user "
                        "space", self.why_not)
        return self.why_not is None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Read the counters and flows back, and cut retired backends' flows at their
        deadline."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(POLL_EVERY)
                if not self.installed:
                    continue
                await self._cut_due()
                try:
                    self.counters = await trio.to_thread.run_sync(
                        nft.read_counters, self.table, ID_MASK)
                except (OSError, nft.NftError, ValueError) as e:
                    log.warning("kernel counters not read: %s", e)
                    continue
                await self._read_flows()

    async def _read_flows(self) -> None:
        """Read conntrack once (a reader that comes while a read is under way waits for
        it): the flows, their rows for the flows table and the open ones per backend."""
        if self._reading is not None:
            await self._reading.wait()
            return
        self._reading = trio.Event()
        try:
            flows = await trio.to_thread.run_sync(conntrack.list_flows, MARK, MARK_MASK)
        except OSError as e:
            log.warning("kernel flows not read: %s", e)
            return
        finally:
            done, self._reading = self._reading, None
            done.set()
        active: dict[tuple[int, str, int], int] = {}
        names = {i: n for n, i in self.ids.by_name.items()}
        rows: list[FlowRow] = []
        flows = [f for f in flows if f.open and not f.mark & CUT_BIT]
        for f in flows:
            lid = f.mark & ID_MASK
            k = (lid, f.backend[0], f.backend[1])
            active[k] = active.get(k, 0) + 1
            rows.append((f"k.{f.id}", names.get(lid, f"#{lid}"), f.proto, _text(f.client),
                         _text(f.vip), _text(f.backend), f.bytes_in, f.bytes_out, f.age,
                         f.state, "kernel"))
        self.active, self._rows, self._rows_at = active, rows, self.clock()
        self._flows = {f.id: f for f in flows}

    async def cut_flow(self, flow_id: str) -> bool:
        """Cut the flow listed as ``flow_id`` ("k.N"): its conntrack entry is marked, and
        the table answers each of its packets with a reset (TCP) or drops it."""
        number = flow_id.removeprefix("k.")
        flow = self._flows.get(int(number)) if number.isdigit() else None
        if flow is None:
            return False
        try:
            cut = await trio.to_thread.run_sync(conntrack.mark_flow, flow,
                                                flow.mark | CUT_BIT)
        except OSError as e:
            log.warning("flow %s not cut: %s", flow_id, e)
            return False
        if cut:
            self._flows.pop(flow.id, None)
            self._rows = [r for r in self._rows if r[0] != flow_id]
        return cut

    async def stop(self) -> None:
        """Remove the table: the kernel forwards nothing more for edgelb."""
        if self.why_not is None:
            async with self._lock:
                try:
                    await trio.to_thread.run_sync(nft.delete_table, self.table)
                except nft.NftError as e:
                    log.error("kernel table %s not removed: %s", self.table, e)
                self.installed = False

    # -- putting listeners in force ---------------------------------------------------------

    async def apply(self, listeners: tuple[Listener, ...], drain_timeout: float) -> list[str]:
        """Serve ``listeners`` in the kernel (in one transaction); the errors, when nft
        refused (the table then holds what it held)."""
        started = time.perf_counter()
        async with self._lock:
            with cycle_collection_paused():
                self._retire(listeners, drain_timeout)
                self.listeners = listeners
                errors = await self._install()
        self._count(started, errors)
        return errors

    def _count(self, started: float, errors: list[str]) -> None:
        if errors:
            self.failures += 1
        else:
            self.changes += 1
            self.last_seconds = time.perf_counter() - started

    async def set_health(self, down: Down) -> None:
        """New verdicts: backends down leave the dispatch maps, their flows stay."""
        started = time.perf_counter()
        async with self._lock:
            serving = {lst.name for lst in self.listeners}
            mine = {(n, k) for n, k in down if n in serving}
            if mine == {(n, k) for n, k in self.down if n in serving}:
                self.down = set(down)
                return
            self.down = set(down)
            errors = await self._install()
            for e in errors:
                log.error("kernel rules not updated for health: %s", e)
        self._count(started, errors)

    def _ruleset(self) -> Ruleset:
        """The rules of the listeners and verdicts in force. A listener whose backends,
        verdicts and settings did not change keeps its plan (and the very object, which
        makes the change from the rules in force cheap to find): at 5,000 listeners a
        change costs what the changed listeners cost."""
        down: dict[str, set[str]] = {}
        for n, k in self.down:
            down.setdefault(n, set()).add(k)
        # A tuple of nodes shared by thousands of nodePort listeners is dispatched once
        # (the memo keeps the tuple, so that its id cannot be reused meanwhile).
        memo: dict[tuple[int, str, bool, str, frozenset[str]],
                   tuple[object, Dispatch | None]] = {}
        plans: dict[int, KernelListener] = {}
        cache: dict[str, tuple[tuple[object, ...], KernelListener, object]] = {}
        for lst in self.listeners:
            lid = self.ids.of(lst.name)
            mine = frozenset(down.get(lst.name, ()))
            # A long tuple (the nodes) by identity: comparing thousands of backends for
            # each of thousands of listeners would cost more than the plan does.
            token = lst.backends if len(lst.backends) <= 64 else id(lst.backends)
            key = (lst.bind, lst.protocol, lst.balance, lst.snat, lst.backend_port, token,
                   mine)
            had = self._plans.get(lst.name)
            if had is not None and had[0] == key:
                plans[lid] = had[1]
                cache[lst.name] = had
                continue
            mk = (id(lst.backends), lst.balance, bool(lst.backend_port), lst.protocol, mine)
            hit = memo.get(mk)
            if hit is None or hit[0] is not lst.backends:
                usable = None if not mine else {
                    lst.backend_key(b) for b in lst.backends} - mine
                hit = (lst.backends, dispatch_of(lst, usable))
                memo[mk] = hit
            plans[lid] = plan(lst, lid, hit[1])
            # The tuple is kept with its plan, so that its id is not reused meanwhile.
            cache[lst.name] = (key, plans[lid], lst.backends)
        self._plans = cache
        return Ruleset(plans, self.snat4, self.snat6)

    async def _install(self) -> list[str]:
        new = self._ruleset()
        if not new.listeners and not self.installed:
            self.ruleset = new
            return []
        if self.installed:
            script = render_change(self.ruleset, new, self.table)
            if script is None:
                return []
        else:
            script = None
        try:
            if script is not None:
                await trio.to_thread.run_sync(nft.run, script)
            else:
                await self._full(new)
        except nft.NftError as e:
            if script is None:
                return [f"kernel rules not applied: {e}"]
            log.warning("kernel rules: the change was refused (%s); replacing the table", e)
            try:
                await self._full(new)
            except nft.NftError as e2:
                return [f"kernel rules not applied: {e2}"]
        self.ruleset = new
        self.installed = True
        return []

    async def _full(self, new: Ruleset) -> None:
        """Replace the whole table; the counters it held are kept as a base first."""
        if self.installed:
            self._fold_counters()
        await trio.to_thread.run_sync(nft.run, render_full(new, self.table))

    def _fold_counters(self) -> None:
        traffic = self.traffic()
        self.base_listener = {}
        self.base = {}
        for name, st in traffic.items():
            self.base_listener[name] = ListenerStats(accepted=st.accepted,
                                                     no_backend=st.no_backend)
            for key, b in st.backends.items():
                self.base[(name, key)] = BackendStats(0, b.connections, 0, b.bytes_in,
                                                      b.bytes_out)
        self.counters = nft.Counters()

    # -- retiring backends ------------------------------------------------------------------

    def _retire(self, new: tuple[Listener, ...], drain_timeout: float) -> None:
        """Backends that leave (by listener) get a drain deadline; retired ones that come
        back lose theirs. Only listeners whose backends changed are looked into: the
        nodes of thousands of nodePort listeners are one shared tuple."""
        now = self.clock()
        by_name = {lst.name: lst for lst in new}
        back = [k for k in self.retired if k[0] in by_name and k[1] in
                {by_name[k[0]].backend_key(b) for b in by_name[k[0]].backends}]
        for key in back:
            del self.retired[key]  # back before its deadline: its flows stay
        for lst in self.listeners:
            nl = by_name.get(lst.name)
            if nl is not None and (nl.backends is lst.backends or (
                    nl.backend_port == lst.backend_port and nl.backends == lst.backends)):
                continue
            lid = self.ids.by_name.get(lst.name)
            if lid is None:
                continue
            wanted = {nl.backend_key(b) for b in nl.backends} if nl is not None else set()
            for b in lst.backends:
                key = (lst.name, lst.backend_key(b))
                if key[1] not in wanted and key not in self.retired:
                    self.retired[key] = Retired(lst.name, lid, lst.transport, key[1],
                                                lst.backend_address(b), now + drain_timeout)

    async def _cut_due(self) -> None:
        now = self.clock()
        due = [r for r in self.retired.values() if r.deadline <= now]
        for r in due:
            try:
                n = await trio.to_thread.run_sync(
                    conntrack.delete_flows, MARK | r.lid, MARK_MASK | ID_MASK, r.proto,
                    r.address)
            except OSError as e:
                log.warning("flows of %s %s not cut: %s", r.listener, r.key, e)
                continue
            self.retired.pop((r.listener, r.key), None)
            if n:
                log.info("listener %s: %d flows to %s cut at the drain deadline",
                         r.listener, n, r.key)

    # -- what the kernel did ----------------------------------------------------------------

    def traffic(self) -> Traffic:
        """The kernel listeners' counters, read only: shared by every caller until the
        counters, flows or listeners change (at 5,000 listeners, building them took
        40 ms of the loop for each status request). A kernel listener's backend key is
        its address, so the counters' addresses name them."""
        key = (self.counters, self.active, self.base, self.base_listener, self.listeners)
        if self._traffic is not None and all(
                a is b for a, b in zip(self._traffic[0], key, strict=True)):
            return self._traffic[1]
        out = self._count_traffic()
        self._traffic = (key, out)
        return out

    def _count_traffic(self) -> Traffic:
        out: Traffic = {}
        by_id = {self.ids.by_name[lst.name]: lst.name for lst in self.listeners
                 if lst.name in self.ids.by_name}
        for lid, name in by_id.items():
            st = out.setdefault(name, ListenerStats())
            base = self.base_listener.get(name)
            st.accepted = self.counters.accepted.get(lid, 0) + (base.accepted if base else 0)
            st.no_backend = self.counters.no_backend.get(lid, 0) + \
                (base.no_backend if base else 0)
        for (name, key), prev in self.base.items():
            if name in out:
                out[name].backends[key] = BackendStats(0, prev.connections, 0,
                                                       prev.bytes_in, prev.bytes_out)
        seen = set(self.counters.backends) | set(self.active)
        for lid, host, port in seen:
            owner = by_id.get(lid)
            if owner is None:
                continue
            row = self.counters.backends.get((lid, host, port), [0, 0, 0])
            bs = out[owner].backends.setdefault(_text((host, port)), BackendStats())
            bs.add(BackendStats(active=self.active.get((lid, host, port), 0),
                                connections=row[0], bytes_in=row[1], bytes_out=row[2]))
        return out

    async def flow_rows(self) -> list[FlowRow]:
        """The kernel's flows of edgelb's listeners, as rows of the flows table. Reading
        conntrack costs ~70 ms at 10,000 flows, so a read serves the callers of the next
        second (a console refreshes once a second); older rows are still answered at once
        while a new read runs, until they are too old to show."""
        if not self.installed:
            return []
        age = self.clock() - self._rows_at
        if age >= ROWS_STALE:
            await self._read_flows()
        elif age >= ROWS_FRESH and self._reading is None and self._nursery is not None:
            self._nursery.start_soon(self._read_flows)
        return self._rows


def _text(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
