"""VRRPv3: the wire format (checked against scapy's independent implementation) and the
state machine, with routers exchanging advertisements in memory on a simulated clock."""

from __future__ import annotations

import pytest

from appliance.ha.vrrp import (
    BACKUP,
    GROUP_V4,
    GROUP_V6,
    MASTER,
    Advert,
    BecomeBackup,
    BecomeMaster,
    SendAdvert,
    Vrrp,
    VrrpConfig,
    decode,
    encode,
)


@pytest.mark.parametrize(("src", "dst", "addrs"), [
    ("192.0.2.1", GROUP_V4, ("192.0.2.100", "192.0.2.101")),
    ("fe80::1", GROUP_V6, ("2001:db8::100",)),
])
def test_codec_round_trip_and_scapy_agrees(src: str, dst: str, addrs: tuple[str, ...]) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.vrrp import VRRPv3

    adv = Advert(vrid=51, priority=150, interval_cs=100, addresses=addrs)
    msg = encode(adv, src, dst)
    assert decode(msg, src, dst) == adv
    ip = IP(src=src, dst=dst, ttl=255) if ":" not in src else IPv6(src=src, dst=dst, hlim=255)
    theirs = bytes(ip / VRRPv3(vrid=51, priority=150, adv=100, addrlist=list(addrs)))
    assert theirs.endswith(msg)


def test_decode_refuses_bad_messages() -> None:
    msg = encode(Advert(1, 100, 100, ("192.0.2.9",)), "192.0.2.1", GROUP_V4)
    with pytest.raises(ValueError, match="checksum"):
        decode(msg[:-1] + bytes([msg[-1] ^ 1]), "192.0.2.1", GROUP_V4)
    with pytest.raises(ValueError, match="checksum"):
        decode(msg, "192.0.2.2", GROUP_V4)  # the pseudo-header counts
    with pytest.raises(ValueError, match="version"):
        decode(bytes([0x21]) + msg[1:], "192.0.2.1", GROUP_V4)
    with pytest.raises(ValueError, match="length"):
        decode(msg + b"\0\0\0\0", "192.0.2.1", GROUP_V4)


class Link:
    """Routers on one simulated segment: every advertisement reaches every other."""

    def __init__(self, *routers: Vrrp) -> None:
        self.routers = list(routers)
        self.now = 0.0
        self.masters: list[list[str]] = []

    def deliver(self, sender: Vrrp, actions: list) -> None:  # type: ignore[type-arg]
        for a in actions:
            if isinstance(a, SendAdvert):
                adv = Advert(sender.config.vrid, a.priority, sender.config.interval_cs,
                             sender.config.addresses)
                for r in self.routers:
                    if r is not sender and r.state != "initialize":
                        self.deliver(r, r.on_advert(adv, sender.primary_ip, self.now))

    def start(self, r: Vrrp) -> None:
        self.deliver(r, r.start(self.now))

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            for r in self.routers:
                d = r.next_deadline()
                if d is not None and self.now >= d:
                    self.deliver(r, r.on_timer(self.now))

    def master(self) -> list[str]:
        return [r.primary_ip for r in self.routers if r.state == MASTER]


def router(ip: str, prio: int, preempt: bool = True, delay: float = 0.0) -> Vrrp:
    return Vrrp(VrrpConfig(51, prio, ("192.0.2.100",), 10, preempt, delay), ip)


def elected(*routers: Vrrp) -> Link:
    """``routers`` started together on one link and run for a second: one master."""
    link = Link(*routers)
    for r in routers:
        link.start(r)
    link.run(1)
    return link


def test_election_by_priority_and_by_address_on_a_tie() -> None:
    a, b, c = router("192.0.2.1", 100), router("192.0.2.2", 200), router("192.0.2.3", 100)
    link = elected(a, b, c)
    assert link.master() == ["192.0.2.2"]
    # Two masters of equal priority (a healed split brain): the higher address stays.
    d, e = router("192.0.2.4", 100), router("192.0.2.5", 100)
    for r in (d, e):
        elected(r)
    assert d.state == e.state == MASTER
    joined = Link(d, e)
    joined.now = 1.0
    joined.run(1)
    assert joined.master() == ["192.0.2.5"]


def test_failover_times() -> None:
    a, b = router("192.0.2.1", 200), router("192.0.2.2", 100)
    link = elected(a, b)
    assert link.master() == ["192.0.2.1"]
    # Dies silently: b takes over after Master_Down_Interval (3 x 0.1 s + skew ~0.06 s).
    link.routers.remove(a)
    a.state = "initialize"
    t0 = link.now
    link.run(1)
    assert link.master() == ["192.0.2.2"]
    assert b.reason.startswith("no advertisement")
    assert 0.3 < b.master_down_interval < 0.4 and link.now - t0 >= 0.35


def test_shutdown_sends_priority_zero_for_a_fast_takeover() -> None:
    a, b = router("192.0.2.1", 200), router("192.0.2.2", 100)
    link = elected(a, b)
    actions = a.shutdown(link.now)
    assert SendAdvert(0) in actions and any(isinstance(x, BecomeBackup) for x in actions)
    link.deliver(a, actions)
    link.routers.remove(a)
    link.run(b.skew_time + 0.02)  # skew time (~0.06 s), not the master down interval
    assert link.master() == ["192.0.2.2"]


def test_preemption_delay_and_no_preempt() -> None:
    low, high = router("192.0.2.1", 100), router("192.0.2.2", 200, delay=0.5)
    link = Link(low, high)
    link.start(low)
    link.run(1)
    link.start(high)
    link.run(0.4)
    assert link.master() == ["192.0.2.1"]  # within the preempt delay
    link.run(1)
    assert link.master() == ["192.0.2.2"]
    low2, high2 = router("192.0.2.1", 100), router("192.0.2.2", 200, preempt=False)
    link2 = Link(low2, high2)
    link2.start(low2)
    link2.run(1)
    link2.start(high2)
    link2.run(2)
    assert link2.master() == ["192.0.2.1"]


def test_owner_takes_over_at_once_and_tracking_hands_over() -> None:
    owner = Vrrp(VrrpConfig(51, 255, ("192.0.2.100",), 10), "192.0.2.9")
    actions = owner.start(0.0)
    assert owner.state == MASTER and any(isinstance(a, BecomeMaster) for a in actions)
    a, b = router("192.0.2.1", 200), router("192.0.2.2", 150)
    link = elected(a, b)
    # a's tracked listener lost its backends: its priority drops below b's, b preempts.
    link.deliver(a, a.set_priority(50, link.now, "no healthy backend"))
    link.run(1)
    assert link.master() == ["192.0.2.2"] and a.state == BACKUP


def test_a_master_hearing_a_lower_master_reannounces_once_per_interval() -> None:
    from appliance.ha.vrrp import Reannounce

    m = router("192.0.2.1", 200)
    m.start(0.0)
    m.on_timer(10.0)  # master
    assert m.state == MASTER
    low = Advert(51, 100, 10, ("192.0.2.100",))
    first = m.on_advert(low, "192.0.2.2", 11.0)
    assert any(isinstance(a, Reannounce) for a in first) and SendAdvert(200) in first
    assert m.on_advert(low, "192.0.2.2", 11.1) == []  # rate-limited
    assert any(isinstance(a, Reannounce) for a in m.on_advert(low, "192.0.2.2", 12.0))


@pytest.mark.parametrize("address", ["192.0.2.10", "2001:db8::10", "fe80::1"])
def test_announcements_are_the_frames_scapy_builds(address: str) -> None:
    """The gratuitous ARP and the unsolicited NA (override) written straight to the link
    are byte for byte what scapy builds (which sent them before, 134 ms late)."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether

    from appliance.ha.vrrp import announcement

    mac = "02:00:5e:10:20:30"
    if ":" not in address:
        want = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") /
                ARP(op=1, hwsrc=mac, psrc=address, hwdst="00:00:00:00:00:00", pdst=address))
    else:
        want = (Ether(src=mac, dst="33:33:00:00:00:01") /
                IPv6(src=address, dst="ff02::1", hlim=255) /
                ICMPv6ND_NA(tgt=address, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac))
    assert announcement(mac, address) == bytes(want)
