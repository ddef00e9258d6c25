"""Two datapaths side by side: the kernel (nftables DNAT and conntrack) serves the tcp and
udp listeners it can, user space (this process or its workers) serves the rest. Without
nftables (no CAP_NET_ADMIN, no nf_tables, no ``nft``), user space serves every listener.
Both answer as one ``Datapath``."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import trio

from ..model import Listener, Snapshot
from ..views import FlowRow, PathsView, Traffic
from .kernel.service import KernelDatapath
from .kernel.sync import ConntrackSync, SyncSpec, interface_address
from .workers import Datapath, Down

log = logging.getLogger("edgelb")


def split(snap: Snapshot, kernel: bool) -> tuple[tuple[Listener, ...], Snapshot]:
    """The listeners the kernel serves, and the Snapshot user space serves (the rest):
    with ``kernel``, those whose ``datapath`` is not ``user`` and whose features the
    kernel has."""
    if not kernel:
        return (), snap
    ours = tuple(lst for lst in snap.listeners
                 if lst.datapath != "user" and lst.kernel_refusal is None)
    if not ours:
        return (), snap
    names = {lst.name for lst in ours}
    return ours, replace(snap, listeners=tuple(lst for lst in snap.listeners
                                               if lst.name not in names))


class SplitDatapath:
    """User space and the kernel, each serving its listeners."""

    def __init__(self, user: Datapath, kernel: KernelDatapath) -> None:
        self.user = user
        self.kernel = kernel
        self.kernel_ok = False
        self.kernel_listeners: tuple[Listener, ...] = ()
        self.served: dict[str, str] = {}
        self.sync: ConntrackSync | None = None
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery, snap: Snapshot) -> None:
        self._nursery = nursery
        self.kernel_ok = await self.kernel.probe()
        ours, rest = split(snap, self.kernel_ok)
        await self.user.start(nursery, rest)
        if self.kernel_ok:
            await nursery.start(self.kernel.run)
            errors = await self.kernel.apply(ours, snap.drain_timeout)
            if errors:
                raise OSError(errors[0])
            await self._start_sync(nursery, snap)
        self._served(snap, ours)

    async def _start_sync(self, nursery: trio.Nursery, snap: Snapshot) -> None:
        """conntrackd, with VRRP and ``kernel.conntrack_sync``: the peer holds our flows."""
        iface = snap.kernel.conntrack_sync
        if snap.ha.mode != "vrrp" or not iface:
            return
        address = await trio.to_thread.run_sync(interface_address, iface)
        if address is None:
            log.error("kernel.conntrack_sync: %s has no IPv4 address; flows will not "
                      "survive a failover", iface)
            return
        spec = SyncSpec(iface, address, snap.ha.unicast_peers,
                        os.path.dirname(snap.control.socket))
        self.sync = ConntrackSync(spec)
        await nursery.start(self.sync.run)

    async def apply(self, snap: Snapshot, all_or_nothing: bool = False) -> list[str]:
        ours, rest = split(snap, self.kernel_ok)
        before = self.kernel_listeners
        errors = await self.kernel.apply(ours, snap.drain_timeout) if self.kernel_ok else []
        if errors:
            return errors
        user_errors = await self.user.apply(rest, all_or_nothing)
        if user_errors and all_or_nothing and self.kernel_ok:
            # The user side stays as it was: so does the kernel side.
            await self.kernel.apply(before, snap.drain_timeout)
            return user_errors
        self._served(snap, ours)
        return user_errors

    def _served(self, snap: Snapshot, ours: tuple[Listener, ...]) -> None:
        self.kernel_listeners = ours
        kernel = {lst.name for lst in ours}
        self.served = {lst.name: "kernel" if lst.name in kernel else "user"
                       for lst in snap.listeners}
        for lst in snap.listeners:
            if lst.datapath == "kernel" and lst.name not in kernel:
                log.warning("listener %s: datapath kernel, served in user space: %s",
                            lst.name, self.kernel.why_not or lst.kernel_refusal)

    def set_health(self, down: Down) -> None:
        self.user.set_health(down)
        if self.kernel_ok and self._nursery is not None:
            self._nursery.start_soon(self.kernel.set_health, set(down))

    def reopen_logs(self) -> None:
        self.user.reopen_logs()

    def traffic(self) -> Traffic:
        """Both paths' counters, to be read only (the kernel's are shared)."""
        if not self.kernel_ok:
            return self.user.traffic()
        out = self.user.traffic()
        for name, st in self.kernel.traffic().items():
            if name in out:  # moved between the paths: both sides' counts
                out[name].add(st)
            else:
                out[name] = st
        return out

    async def flow_rows(self) -> list[FlowRow]:
        rows = await self.user.flow_rows()
        if self.kernel_ok:
            rows = rows + await self.kernel.flow_rows()
        return rows

    async def cut_flow(self, flow_id: str) -> bool:
        if flow_id.startswith("k."):
            return self.kernel_ok and await self.kernel.cut_flow(flow_id)
        return await self.user.cut_flow(flow_id)

    async def drain(self, grace: float) -> None:
        """User space drains as it does; the kernel takes no new flows at once, lets its
        flows run for ``grace`` (or until none is left), then removes its table."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.user.drain, grace)
            if self.kernel_ok:
                nursery.start_soon(self._drain_kernel, grace)

    async def _drain_kernel(self, grace: float) -> None:
        await self.kernel.apply((), grace)
        with trio.move_on_after(grace):
            # The kernel's flows are not ours to wait on: conntrack is asked again.
            while True:
                if not await self.kernel.flow_rows():
                    break
                await trio.sleep(0.5)
        await self.kernel.stop()

    def view(self) -> PathsView:
        k = self.kernel
        return PathsView(self.kernel_ok, k.why_not or "", dict(self.served), k.changes,
                         k.last_seconds, k.failures)
