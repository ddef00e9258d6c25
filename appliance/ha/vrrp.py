"""VRRPv3 (RFC 5798), sans-IO: the advertisement wire format and the router state
machine. The caller feeds received advertisements, timer expiries and operator actions
with the current time, and carries out the actions returned (send an advertisement, take
or release the virtual addresses); ``next_deadline`` says when to call ``on_timer``.

Interoperable with keepalived's ``vrrp_version 3``: the checksum covers the IP
pseudo-header for IPv4 as for IPv6 (RFC 5798 5.2.8).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from ..views import VrrpState

PROTOCOL = 112
GROUP_V4 = "224.0.0.18"
GROUP_V6 = "ff02::12"
TTL = 255

INITIALIZE, BACKUP, MASTER = VrrpState.INITIALIZE, VrrpState.BACKUP, VrrpState.MASTER


@dataclass(frozen=True)
class Advert:
    """A VRRPv3 advertisement."""

    vrid: int
    priority: int
    interval_cs: int  # Max Adver Int, centiseconds
    addresses: tuple[str, ...]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(src: str, dst: str, length: int, proto: int = PROTOCOL) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, proto)


ETH_P_ARP, ETH_P_IPV6, ICMPV6 = 0x0806, 0x86DD, 58
ALL_NODES = "ff02::1"


def announcement(mac: str, address: str) -> bytes:
    """The Ethernet frame that tells the LAN ``address`` is now at ``mac`` (RFC 5798
    8.1.2): a gratuitous ARP request for IPv4, an unsolicited neighbour advertisement
    with the override flag to all nodes for IPv6."""
    hw = bytes.fromhex(mac.replace(":", ""))
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, hw, ip.packed, bytes(6),
                          ip.packed)
        return b"\xff" * 6 + hw + struct.pack("!H", ETH_P_ARP) + arp
    # type 136, code 0, checksum, flags (override), target, option 2: our link address
    na = struct.pack("!BBHI16sBB6s", 136, 0, 0, 0x20000000, ip.packed, 2, 1, hw)
    csum = _checksum(_pseudo_header(address, ALL_NODES, len(na), ICMPV6) + na)
    na = na[:2] + struct.pack("!H", csum) + na[4:]
    head = struct.pack("!IHBB16s16s", 6 << 28, len(na), ICMPV6, 255, ip.packed,
                       ipaddress.ip_address(ALL_NODES).packed)
    return b"\x33\x33\x00\x00\x00\x01" + hw + struct.pack("!H", ETH_P_IPV6) + head + na


def encode(adv: Advert, src: str, dst: str) -> bytes:
    """The VRRP message (the IP payload) from ``src`` to ``dst``, with its checksum."""
    if not 1 <= adv.vrid <= 255 or not 0 <= adv.priority <= 255:
        raise ValueError("vrid 1-255 and priority 0-255")
    if not 1 <= adv.interval_cs <= 0xFFF:
        raise ValueError("advertisement interval 1-4095 centiseconds")
    addrs = b"".join(ipaddress.ip_address(a).packed for a in adv.addresses)
    head = struct.pack("!BBBBHH", 0x31, adv.vrid, adv.priority, len(adv.addresses),
                       adv.interval_cs & 0xFFF, 0)
    msg = head + addrs
    csum = _checksum(_pseudo_header(src, dst, len(msg)) + msg)
    return msg[:6] + struct.pack("!H", csum) + msg[8:]


def decode(msg: bytes, src: str, dst: str) -> Advert:
    """Parse and check a VRRP message; ValueError says why it is to be dropped."""
    if len(msg) < 8:
        raise ValueError("shorter than a VRRP header")
    vt, vrid, priority, count, rsvd_int, _ = struct.unpack("!BBBBHH", msg[:8])
    if vt >> 4 != 3:
        raise ValueError(f"VRRP version {vt >> 4}, not 3")
    if vt & 0xF != 1:
        raise ValueError(f"VRRP type {vt & 0xF}, not an advertisement")
    size = 4 if ipaddress.ip_address(src).version == 4 else 16
    if len(msg) != 8 + count * size:
        raise ValueError(f"length {len(msg)} does not fit {count} addresses")
    if _checksum(_pseudo_header(src, dst, len(msg)) + msg) != 0:
        raise ValueError("bad checksum")
    interval = rsvd_int & 0xFFF
    addrs = tuple(str(ipaddress.ip_address(msg[8 + i * size: 8 + (i + 1) * size]))
                  for i in range(count))
    return Advert(vrid, priority, interval, addrs)


@dataclass(frozen=True)
class VrrpConfig:
    vrid: int
    priority: int  # 1-254; 255 for the owner of the addresses
    addresses: tuple[str, ...]
    interval_cs: int = 100
    preempt: bool = True
    preempt_delay: float = 0.0  # seconds after start before preempting a lower master


@dataclass(frozen=True)
class SendAdvert:
    priority: int


@dataclass(frozen=True)
class BecomeMaster:
    reason: str


@dataclass(frozen=True)
class BecomeBackup:
    reason: str


@dataclass(frozen=True)
class Reannounce:
    """Send the gratuitous ARPs again: another master was heard (a split brain healing),
    and the hosts it announced to point at it."""

    reason: str


Action = SendAdvert | BecomeMaster | BecomeBackup | Reannounce


@dataclass
class Vrrp:
    """One virtual router of one box (RFC 5798 6.4)."""

    config: VrrpConfig
    primary_ip: str  # this box's address on the link: breaks priority ties
    priority: int = field(init=False)
    state: VrrpState = field(default=INITIALIZE, init=False)
    master_interval_cs: int = field(init=False)
    adver_timer: float | None = field(default=None, init=False)
    master_down_timer: float | None = field(default=None, init=False)
    started: float = field(default=0.0, init=False)
    reason: str = field(default="", init=False)
    last_reannounce: float = field(default=-1e9, init=False)

    def __post_init__(self) -> None:
        self.priority = self.config.priority
        self.master_interval_cs = self.config.interval_cs

    # -- derived times (seconds) ---------------------------------------------------------

    @property
    def skew_time(self) -> float:
        return ((256 - self.priority) * self.master_interval_cs / 256) / 100

    @property
    def master_down_interval(self) -> float:
        return 3 * self.master_interval_cs / 100 + self.skew_time

    @property
    def adver_interval(self) -> float:
        return self.config.interval_cs / 100

    def next_deadline(self) -> float | None:
        return self.adver_timer if self.state == MASTER else self.master_down_timer

    # -- events ----------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self.started = now
        if self.priority == 255:
            return self._to_master(now, "address owner (priority 255)")
        self.master_interval_cs = self.config.interval_cs
        self.master_down_timer = now + self.master_down_interval
        self.state = BACKUP
        self.reason = "started"
        return [BecomeBackup("started")]

    def on_timer(self, now: float) -> list[Action]:
        if self.state == MASTER and self.adver_timer is not None and now >= self.adver_timer:
            self.adver_timer = now + self.adver_interval
            return [SendAdvert(self.priority)]
        if self.state == BACKUP and self.master_down_timer is not None and \
                now >= self.master_down_timer:
            return self._to_master(now, "no advertisement from a master for "
                                        f"{self.master_down_interval:.2f}s")
        return []

    def on_advert(self, adv: Advert, src: str, now: float) -> list[Action]:
        """An advertisement received for our VRID (TTL and checksum already checked)."""
        if adv.vrid != self.config.vrid or self.state == INITIALIZE:
            return []
        if self.state == BACKUP:
            if adv.priority == 0:
                self.master_down_timer = now + self.skew_time
                return []
            may_preempt = self.config.preempt and now >= self.started + self.config.preempt_delay
            if not may_preempt or adv.priority >= self.priority:
                self.master_interval_cs = adv.interval_cs
                self.master_down_timer = now + self.master_down_interval
            return []
        # MASTER
        if adv.priority == 0:
            self.adver_timer = now + self.adver_interval
            return [SendAdvert(self.priority)]
        if adv.priority > self.priority or (
                adv.priority == self.priority and _ip_key(src) > _ip_key(self.primary_ip)):
            self.adver_timer = None
            self.master_interval_cs = adv.interval_cs
            self.master_down_timer = now + self.master_down_interval
            self.state = BACKUP
            self.reason = f"{src} advertises priority {adv.priority} (ours {self.priority})"
            return [BecomeBackup(self.reason)]
        # A lower master: it will yield on our advertisement, but the hosts it announced
        # itself to must hear from us again (keepalived's garp_lower_prio_repeat).
        if now - self.last_reannounce >= self.master_down_interval:
            self.last_reannounce = now
            self.adver_timer = now + self.adver_interval
            return [SendAdvert(self.priority),
                    Reannounce(f"{src} also claims to be master (priority {adv.priority})")]
        return []

    def set_priority(self, priority: int, now: float, why: str = "") -> list[Action]:
        """Tracking changed our priority (1-254): a master advertises it at once, so that a
        better backup can preempt."""
        self.priority = max(1, min(254, priority)) if self.config.priority != 255 else 255
        if why:
            self.reason = why
        if self.state == MASTER:
            self.adver_timer = now + self.adver_interval
            return [SendAdvert(self.priority)]
        return []

    def step_down(self, now: float, why: str) -> list[Action]:
        """An operator's failover: a master sends priority 0 (the backups take over after
        their skew time) and waits as a backup."""
        if self.state != MASTER:
            return []
        self.state = BACKUP
        self.adver_timer = None
        self.master_down_timer = now + self.master_down_interval
        self.reason = why
        return [SendAdvert(0), BecomeBackup(why)]

    def take_over(self, now: float, why: str) -> list[Action]:
        """An operator's promotion: a backup becomes master now rather than after the
        master down interval; the old master yields to our higher-priority advertisement
        (RFC 5798 6.4.3)."""
        if self.state != BACKUP:
            return []
        return self._to_master(now, why)

    def shutdown(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state == MASTER:
            actions = [SendAdvert(0), BecomeBackup("shutting down")]
        self.state = INITIALIZE
        self.adver_timer = self.master_down_timer = None
        return actions

    def _to_master(self, now: float, why: str) -> list[Action]:
        self.state = MASTER
        self.master_down_timer = None
        self.adver_timer = now + self.adver_interval
        self.reason = why
        return [SendAdvert(self.priority), BecomeMaster(why)]


def wanted_priority(configured: int, failing: int, weight: int, override: str) -> int:
    """The priority to run at: the configured one less ``weight`` per failing tracked
    condition (never below 1), or an operator's choice: ``demote`` runs at 1 (any peer
    preempts), ``promote`` at 254 (above any peer but an address owner). The address
    owner (255) keeps 255, as RFC 5798 requires."""
    if configured == 255:
        return 255
    if override == "demote":
        return 1
    if override == "promote":
        return 254
    return max(1, configured - weight * failing)


def _ip_key(ip: str) -> int:
    return int(ipaddress.ip_address(ip))
