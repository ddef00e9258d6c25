"""VIP address management for LoadBalancer Services: pure, deterministic, never
double-allocating, and rebuilt from what the cluster's status already says after a restart.

Each IP family is managed apart (a dual-stack Service holds one address of each). Within
a family, a service gets its requested address if it is in a pool and free (or shared
with a compatible service), else the lowest free address of the pools in order. Services
that carry the same sharing key may share one address when their ports do not collide.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..model import pool_addresses

Port = tuple[str, int]  # (protocol, port)


class PoolExhausted(Exception):
    pass


class AddressTaken(Exception):
    pass


class NotInPool(Exception):
    pass


@dataclass
class _Holder:
    sharing: str  # "" = not shareable
    ports: dict[str, frozenset[Port]] = field(default_factory=dict)  # service -> ports


def family_of(address: str) -> int:
    """4 or 6."""
    return ipaddress.ip_address(address).version


class AddressPool:
    """The addresses of one IP family, in order of preference, handed to services."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.order: list[str] = list(dict.fromkeys(addresses))
        self.pool = set(self.order)
        self.index = {addr: i for i, addr in enumerate(self.order)}
        self.free_from = 0  # no free address before this index of ``order``
        self.holders: dict[str, _Holder] = {}  # address -> holder
        self.by_service: dict[str, str] = {}  # service -> address

    def address_of(self, service: str) -> str | None:
        return self.by_service.get(service)

    def _fits(self, addr: str, service: str, sharing: str, ports: frozenset[Port]) -> bool:
        h = self.holders.get(addr)
        if h is None:
            return True
        if not sharing or h.sharing != sharing:
            return set(h.ports) == {service}
        return all(not (ports & p) for s, p in h.ports.items() if s != service)

    def allocate(self, service: str, ports: Iterable[Port], requested: str | None = None,
                 sharing: str = "") -> str:
        """The address of ``service`` (kept if it has one that still fits). Raises
        NotInPool, AddressTaken or PoolExhausted, with the service left without one."""
        ports = frozenset(ports)
        current = self.by_service.get(service)
        if current is not None and (requested is None or requested == current) and \
                self._fits(current, service, sharing, ports):
            self._hold(current, service, sharing, ports)
            return current
        if current is not None:
            self.release(service)
        if requested is not None:
            requested = str(ipaddress.ip_address(requested))
            if requested not in self.pool:
                raise NotInPool(f"{requested} is in no address pool")
            if not self._fits(requested, service, sharing, ports):
                raise AddressTaken(f"{requested} is taken by {self._who(requested)}")
            self._hold(requested, service, sharing, ports)
            return requested
        if sharing:
            for addr, h in self.holders.items():
                if h.sharing == sharing and self._fits(addr, service, sharing, ports):
                    self._hold(addr, service, sharing, ports)
                    return addr
        for i in range(self.free_from, len(self.order)):
            addr = self.order[i]
            if addr not in self.holders:
                self.free_from = i + 1
                self._hold(addr, service, sharing, ports)
                return addr
        self.free_from = len(self.order)
        raise PoolExhausted(f"no free address in the pools ({len(self.order)} addresses)")

    def _who(self, addr: str) -> str:
        return ", ".join(sorted(self.holders[addr].ports))

    def _hold(self, addr: str, service: str, sharing: str, ports: frozenset[Port]) -> None:
        h = self.holders.setdefault(addr, _Holder(sharing))
        if set(h.ports) <= {service}:
            # The only holder decides whether (and with whom) the address is shared; a
            # service that changed its key must not keep the old one for others to join.
            h.sharing = sharing
        h.ports[service] = ports
        self.by_service[service] = addr

    def release(self, service: str) -> None:
        """Free ``service``'s address (once no other service shares it)."""
        addr = self.by_service.pop(service, None)
        if addr is None:
            return
        h = self.holders[addr]
        h.ports.pop(service, None)
        if not h.ports:
            del self.holders[addr]
            self.free_from = min(self.free_from, self.index[addr])

    def retain(self, services: Iterable[str]) -> list[str]:
        """Release every service not in ``services``; returns those released."""
        keep = set(services)
        gone = [s for s in self.by_service if s not in keep]
        for s in gone:
            self.release(s)
        return gone

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(sorted(self.by_service.items()))


class Ipam:
    """Addresses of ``pools`` (texts as ``model.pool_addresses`` reads them), an
    ``AddressPool`` per IP family, handed to services."""

    def __init__(self, pools: Iterable[str]) -> None:
        by_family: dict[int, list[str]] = {4: [], 6: []}
        self.first = 0  # the family of the first pool
        for pool in pools:
            for ip in pool_addresses(pool):
                by_family[ip.version].append(str(ip))
                self.first = self.first or ip.version
        self.families = {f: AddressPool(addrs) for f, addrs in by_family.items()}
        self.pool = self.families[4].pool | self.families[6].pool

    def offers(self, family: int) -> bool:
        """Whether the pools hold any address of ``family``."""
        return bool(self.families[family].order)

    def address_of(self, service: str, family: int) -> str | None:
        return self.families[family].address_of(service)

    def addresses_of(self, service: str) -> dict[int, str]:
        """The address ``service`` holds of each family."""
        return {f: a for f, p in self.families.items()
                if (a := p.address_of(service)) is not None}

    def allocate(self, service: str, family: int, ports: Iterable[Port],
                 requested: str | None = None, sharing: str = "") -> str:
        """The ``family`` address of ``service``, as ``AddressPool.allocate`` gives it; a
        requested address of another family is NotInPool (the service left without one)."""
        if requested is not None and family_of(requested) != family:
            self.release(service, family)
            raise NotInPool(f"{requested} is not an IPv{family} address")
        return self.families[family].allocate(service, ports, requested, sharing)

    def release(self, service: str, family: int | None = None) -> None:
        """Free ``service``'s address of ``family`` (of both when None)."""
        for f, p in self.families.items():
            if family is None or f == family:
                p.release(service)

    def retain(self, services: Iterable[str]) -> list[str]:
        """Release every service not in ``services``; returns those released."""
        keep = list(services)
        gone: set[str] = set()
        for p in self.families.values():
            gone.update(p.retain(keep))
        return sorted(gone)

    def held(self) -> int:
        """How many addresses services hold (a shared one counts once)."""
        return sum(len(p.holders) for p in self.families.values())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(service, address) for every address held, by service then family."""
        return iter(sorted(((s, a) for p in self.families.values() for s, a in p),
                           key=lambda sa: (sa[0], family_of(sa[1]))))
