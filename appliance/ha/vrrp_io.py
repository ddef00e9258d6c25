"""The I/O around the VRRP state machine: the raw IP protocol 112 socket, the virtual
addresses (pyroute2) and the announcements (gratuitous ARP, unsolicited NA) on a packet
socket. Multicast to 224.0.0.18 / ff02::12 or unicast to configured peers. Received
advertisements must arrive with TTL 255 (RFC 5798 7.1): anything routed is dropped.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Collection
from typing import Any, cast

import trio

from .vrrp import GROUP_V4, GROUP_V6, PROTOCOL, TTL, Advert, announcement, decode, encode

log = logging.getLogger("edgelb.ha")

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def interface_index(ifname: str) -> int:
    return socket.if_nametoindex(ifname)


def primary_address(ifname: str, version: int = 4) -> str:
    """The source of our advertisements: the first IPv4 address of ``ifname``, or for
    IPv6 its link-local address (RFC 5798 5.1.2.1)."""
    from pyroute2 import IPRoute

    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise OSError(f"no interface {ifname}")
        for msg in ipr.get_addr(index=idx[0], family=family):
            addr = str(msg.get_attr("IFA_ADDRESS"))
            if version == 4 or ipaddress.ip_address(addr).is_link_local:
                return addr
    raise OSError(f"{ifname} has no {'IPv4' if version == 4 else 'link-local IPv6'} "
                  "address")


class _Sender:
    """What the IPv4 and IPv6 sockets share: advertising to the group or the peers."""

    sock: trio.socket.SocketType
    source: str
    peers: tuple[str, ...]
    group: str

    def _address(self, dst: str) -> tuple[Any, ...]:
        return (dst, 0)

    async def send(self, adv: Advert) -> None:
        for dst in self.peers or (self.group,):
            msg = encode(adv, self.source, dst)
            try:
                await self.sock.sendto(msg, self._address(dst))
            except OSError as e:
                log.warning("VRRP advertisement to %s not sent: %s", dst, e.strerror)

    def close(self) -> None:
        self.sock.close()

    def _accept(self, data: bytes, src: str, dst: str, hops: int,
                hops_name: str) -> Advert | None:
        """The advertisement in ``data`` if it may be heeded (RFC 5798 7.1: TTL or hop
        limit 255; from a configured peer, when there are any; well formed); None
        after logging why not. Our own, looped back, is dropped silently."""
        if src == self.source:
            return None
        if hops != TTL:
            log.warning("VRRP from %s dropped: %s %d, not 255", src, hops_name, hops)
            return None
        if self.peers and src not in self.peers:
            return None
        try:
            return decode(data, src, dst)
        except ValueError as e:
            log.warning("VRRP from %s dropped: %s", src, e)
            return None


class VrrpSocket(_Sender):
    """A raw socket bound to one interface, in the VRRP group (or to unicast peers)."""

    group = GROUP_V4

    def __init__(self, ifname: str, source: str, peers: tuple[str, ...] = ()) -> None:
        self.ifname = ifname
        self.source = source
        self.peers = peers
        index = interface_index(ifname)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTOCOL)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            mreqn = struct.pack("4s4si", socket.inet_aton(GROUP_V4),
                                socket.inet_aton(source), index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            if not peers:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    async def receive(self) -> tuple[Advert, str]:
        """The next valid advertisement and its sender; invalid ones are logged, dropped."""
        while True:
            data, (src, _) = await self.sock.recvfrom(65535)
            ihl = (data[0] & 0x0F) * 4
            ttl, proto = data[8], data[9]
            dst = socket.inet_ntoa(data[16:20])
            if proto != PROTOCOL:
                continue
            adv = self._accept(data[ihl:], src, dst, ttl, "TTL")
            if adv is not None:
                return adv, src


IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


class VrrpSocket6(_Sender):
    """The IPv6 twin: hop limit 255 is read from ancillary data (no IP header on raw
    IPv6 sockets), the destination from the packet info."""

    group = GROUP_V6

    def __init__(self, ifname: str, source: str, peers: tuple[str, ...] = ()) -> None:
        self.ifname = ifname
        self.source = source
        self.peers = peers
        self.index = interface_index(ifname)
        sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_RAW, PROTOCOL)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, TTL)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.index)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            sock._sock.bind((source, 0, 0, self.index))  # type: ignore[attr-defined]
            if not peers:
                mreq = socket.inet_pton(socket.AF_INET6, GROUP_V6) + \
                    struct.pack("@I", self.index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def _address(self, dst: str) -> tuple[Any, ...]:
        return (dst, 0, 0, self.index)

    async def receive(self) -> tuple[Advert, str]:
        while True:
            data, anc, _, addr = await self.sock.recvmsg(65535, 256)
            addr = cast(Any, addr)
            src = str(addr[0]).split("%")[0]
            hops, dst = -1, GROUP_V6
            for level, kind, value in anc:
                if level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT:
                    hops = struct.unpack("@i", value[:4])[0]
                elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                    dst = socket.inet_ntop(socket.AF_INET6, value[:16])
            adv = self._accept(data, src, dst, hops, "hop limit")
            if adv is not None:
                return adv, src


class Vips:
    """The virtual addresses on one interface, added and removed with pyroute2."""

    def __init__(self, ifname: str, addresses: tuple[str, ...]) -> None:
        self.ifname = ifname
        self.addresses = [ipaddress.ip_interface(a) for a in addresses]

    def _apply(self, add: bool) -> list[str]:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        done = []
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=self.ifname)[0]
            present = {(str(m.get_attr("IFA_ADDRESS")), m["prefixlen"])
                       for m in ipr.get_addr(index=index)}
            for a in self.addresses:
                key = (str(a.ip), a.network.prefixlen)
                if add == (key in present):
                    continue
                try:
                    # IPv6: no duplicate address detection, or the VIP would be unusable
                    # (tentative) for a second after each promotion.
                    extra = {"flags": 0x02} if a.version == 6 and add else {}  # NODAD
                    ipr.addr("add" if add else "del", index=index, address=str(a.ip),
                             prefixlen=a.network.prefixlen, **extra)
                    done.append(str(a))
                except NetlinkError as e:
                    log.warning("%s %s on %s: %s", "adding" if add else "removing", a,
                                self.ifname, e)
        return done

    def add(self) -> list[str]:
        return self._apply(True)

    def remove(self) -> list[str]:
        return self._apply(False)


def remove_leftovers(ifname: str, ours: Collection[str]) -> list[str]:
    """Remove the host addresses of ``ifname`` that are among ``ours`` (VIPs a previous
    run added and could not remove, say after a crash); returns those removed."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        found = [str(m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr(index=index)
                 if m["prefixlen"] in (32, 128)]
    # A bare address is a host address (/32, /128) to Vips.
    return Vips(ifname, tuple(a for a in found if a in ours)).remove()


def gratuitous_arp(ifname: str, addresses: list[str], count: int, interval: float) -> None:
    """Announce ``addresses`` at this interface's MAC (blocking: run in a thread):
    gratuitous ARP for IPv4, unsolicited neighbour advertisements (override) for IPv6.
    Written straight to the link: scapy took 134 ms to send the first one (its import
    and set-up), and a backend's first retransmission after a failover, ~200 ms after
    the old master went, reached the new master only if the LAN had heard it by then."""
    with open(f"/sys/class/net/{ifname}/address") as f:
        mac = f.read().strip()
    frames = [announcement(mac, str(ipaddress.ip_interface(a).ip)) for a in addresses]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for i in range(count):
            if i:
                time.sleep(interval)
            for frame in frames:
                sock.send(frame)
