"""Flows that survive a failover: conntrackd (Debian's, the field's engine) replicates the
kernel's conntrack entries to the peer box, which injects them into its own table as they
come (FTFW, no external cache). When the VIPs move, the new master already holds every
established flow, with its NAT, and forwards it on. The source NAT address must move with
the VIPs (``kernel.snat_addresses``, one of the VRRP addresses), or the backends' replies
go to the box that died.

``config`` (pure) writes conntrackd's file; ``ConntrackSync`` runs conntrackd as a child
and starts it again if it dies."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass

import trio

from ...files import replace_file
from .tools import run_tool

log = logging.getLogger("edgelb.kernel")

# A conntrackd that dies at once must not become a fork loop.
RESTART_DELAY = 2.0
MULTICAST_GROUP = "225.0.0.50"
PORT = 3780


def stop_stale(path: str) -> bool:
    """Ask a conntrackd left on this config by an edgelb that was killed (SIGKILL leaves
    its child running) to exit, through its control socket, before starting ours: two
    would sync the same flows. Whether one answered."""
    try:
        r = run_tool(["conntrackd", "-C", path, "-k"], 5)
    except OSError:
        return False
    if r.returncode == 0:
        log.warning("a conntrackd left running on %s was told to exit", path)
        return True
    return False


@dataclass(frozen=True)
class SyncSpec:
    """Where conntrackd syncs: ``interface``, from ``address`` (this box's own there),
    to ``peers`` (unicast) or the multicast group when there are none; its files in
    ``run_dir``."""

    interface: str
    address: str
    peers: tuple[str, ...]
    run_dir: str


def config(spec: SyncSpec) -> str:
    """conntrackd.conf for ``spec``: FTFW (reliable, acknowledged) with the external cache
    off, so that the peer's kernel holds the flows before it is needed; TCP and UDP
    entries, loopback ignored."""
    if spec.peers:
        transport = (f"\tUDP {{\n\t\tIPv4_address {spec.address}\n"
                     f"\t\tIPv4_Destination_Address {spec.peers[0]}\n\t\tPort {PORT}\n"
                     f"\t\tInterface {spec.interface}\n")
    else:
        transport = (f"\tMulticast {{\n\t\tIPv4_address {MULTICAST_GROUP}\n"
                     f"\t\tGroup {PORT}\n\t\tIPv4_interface {spec.address}\n"
                     f"\t\tInterface {spec.interface}\n")
    transport += ("\t\tSndSocketBuffer 1249280\n\t\tRcvSocketBuffer 1249280\n"
                  "\t\tChecksum on\n\t}\n")
    d = spec.run_dir
    return f"""# Written by edgelb: replaced at each start.
Sync {{
\tMode FTFW {{
\t\tDisableExternalCache on
\t\tStartupResync on
\t}}
{transport}}}
General {{
\tHashSize 32768
\tHashLimit 524288
\tLogFile {d}/conntrackd.log
\tSyslog off
\tLockFile {d}/conntrackd.lock
\tUNIX {{
\t\tPath {d}/conntrackd.ctl
\t}}
\tNetlinkBufferSize 2097152
\tNetlinkBufferSizeMaxGrowth 8388608
\tFilter From Kernelspace {{
\t\tProtocol Accept {{
\t\t\tTCP
\t\t\tUDP
\t\t}}
\t\tAddress Ignore {{
\t\t\tIPv4_address 127.0.0.0/8
\t\t\tIPv6_address ::1
\t\t}}
\t}}
}}
"""


def interface_address(interface: str) -> str | None:
    """The first IPv4 address of ``interface`` (conntrackd syncs over IPv4)."""
    try:
        r = run_tool(["ip", "-j", "-4", "addr", "show", "dev", interface], 10)
    except OSError:
        return None
    if r.returncode != 0:
        return None
    for link in json.loads(r.stdout or "[]"):
        for a in link.get("addr_info", []):
            return str(a["local"])
    return None


class ConntrackSync:
    """conntrackd as a child of the daemon, for as long as the daemon runs."""

    def __init__(self, spec: SyncSpec) -> None:
        self.spec = spec
        self.starts = 0
        self.proc: trio.Process | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        path = os.path.join(self.spec.run_dir, "conntrackd.conf")
        await trio.to_thread.run_sync(replace_file, path, config(self.spec).encode(), 0o600)
        await trio.to_thread.run_sync(stop_stale, path)
        for stale in ("conntrackd.lock", "conntrackd.ctl"):
            try:
                os.unlink(os.path.join(self.spec.run_dir, stale))
            except FileNotFoundError:
                pass
        task_status.started()
        while True:
            self.starts += 1
            log.info("conntrackd syncing flows over %s (%s)", self.spec.interface,
                     ", ".join(self.spec.peers) or f"multicast {MULTICAST_GROUP}")
            try:
                self.proc = await trio.lowlevel.open_process(
                    ["conntrackd", "-C", path], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError as e:
                log.error("conntrackd could not start: %s; flows will not survive a "
                          "failover", e)
                return
            try:
                code = await self.proc.wait()
            finally:
                if self.proc.returncode is None:
                    self.proc.terminate()
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await self.proc.wait()
            log.warning("conntrackd exited %s; starting it again in %gs", code,
                        RESTART_DELAY)
            await trio.sleep(RESTART_DELAY)
