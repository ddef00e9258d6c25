"""Balancers: pure classes that choose a backend index. No I/O, no clock.

Every balancer is built once per Listener in a Snapshot and answers
``pick(available, key, active)``: ``available`` is the set of backend indices that may take
a connection now (healthy, not ejected, not already tried), ``key`` identifies the client
(used by Maglev), ``active`` is the number of open connections per backend index.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Collection, Sequence
from typing import Protocol

from .jhash import nft_jhash

# The hash seed of Maglev slots, the same in the kernel's rules and in user space.
MAGLEV_SEED = 0x00ED6E1B
# Slots a pick probes past unavailable backends before it falls back to the lowest index.
PROBES = 4096


class Balancer(Protocol):
    def pick(self, available: Collection[int], key: bytes, active: Sequence[int]) -> int | None:
        """The index of the backend to use, or None when none is available."""
        ...


class SmoothRoundRobin:
    """Smooth weighted round robin (as nginx does it): over a cycle of sum(weights) picks
    each backend is chosen exactly ``weight`` times, interleaved rather than in bursts."""

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = list(weights)
        self.current = [0] * len(weights)

    def pick(self, available: Collection[int], key: bytes = b"",
             active: Sequence[int] = ()) -> int | None:
        best = -1
        total = 0
        for i in available:
            w = self.weights[i]
            if w <= 0:
                continue
            self.current[i] += w
            total += w
            if best < 0 or self.current[i] > self.current[best] or (
                    self.current[i] == self.current[best] and i < best):
                best = i
        if best < 0:
            return None
        self.current[best] -= total
        return best


class LeastConnections:
    """Fewest active connections relative to weight; ties rotate so that an idle pool is
    still spread evenly."""

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = list(weights)
        self.turn = 0

    def pick(self, available: Collection[int], key: bytes = b"",
             active: Sequence[int] = ()) -> int | None:
        n = len(self.weights)
        best = None
        best_load = 0.0
        self.turn = (self.turn + 1) % max(n, 1)
        for i in sorted(available, key=lambda j: (j - self.turn) % n):
            w = self.weights[i]
            if w <= 0:
                continue
            load = (active[i] if i < len(active) else 0) / w
            if best is None or load < best_load:
                best, best_load = i, load
        return best


class PowerOfTwoChoices:
    """Two random candidates (weighted), the less loaded wins: near least-conn quality at
    O(1) cost, and no herd behaviour when many workers decide at once."""

    def __init__(self, weights: Sequence[int], rng: random.Random | None = None) -> None:
        self.weights = list(weights)
        self.rng = rng or random.Random()

    def pick(self, available: Collection[int], key: bytes = b"",
             active: Sequence[int] = ()) -> int | None:
        cands = [i for i in available if self.weights[i] > 0]
        if not cands:
            return None
        if len(cands) == 1:
            return cands[0]
        ws = [self.weights[i] for i in cands]
        a, b = self.rng.choices(cands, ws, k=2)
        if a == b:
            b = self.rng.choice([c for c in cands if c != a])

        def load(i: int) -> float:
            return (active[i] if i < len(active) else 0) / self.weights[i]

        return a if load(a) <= load(b) else b


def _h64(data: bytes, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, salt=salt).digest(), "big")


class Maglev:
    """Maglev consistent hashing (Eisenbud et al., NSDI 2016) on the client key.

    The lookup table has a prime size M (default 65537, as in the paper, so that every
    backend's permutation visits every slot). Removing one of N backends remaps only that
    backend's keys plus a small fraction of the others. Weights give a backend that many
    turns per round when the table is filled. A backend that is momentarily unavailable
    (down, ejected) is skipped by probing the following slots, so the table need not be
    rebuilt on every health change and keys of healthy backends never move.
    """

    def __init__(self, backends: Sequence[tuple[str, int]], table_size: int = 65537) -> None:
        """``backends`` is a sequence of (name, weight); names make placement stable."""
        self.size = table_size
        self.names = [n for n, _ in backends]
        self.table = self._populate([(n, w) for n, w in backends])

    def _populate(self, backends: list[tuple[str, int]]) -> list[int]:
        m = self.size
        live = [(i, n, w) for i, (n, w) in enumerate(backends) if w > 0]
        table = [-1] * m
        if not live:
            return table
        perms = []
        for i, name, w in live:
            offset = _h64(name.encode(), b"offset") % m
            skip = _h64(name.encode(), b"skip") % (m - 1) + 1
            perms.append([i, w, offset, skip, 0])
        filled = 0
        while True:
            for p in perms:
                i, w, offset, skip = p[0], p[1], p[2], p[3]
                for _ in range(w):
                    j = p[4]
                    slot = (offset + j * skip) % m
                    while table[slot] >= 0:
                        j += 1
                        slot = (offset + j * skip) % m
                    p[4] = j + 1
                    table[slot] = i
                    filled += 1
                    if filled == m:
                        return table

    def slot(self, key: bytes) -> int:
        """The table slot of a client: ``key`` is its IP address as text. The kernel
        datapath's nftables rule (``jhash ip saddr mod M seed MAGLEV_SEED``) hashes the
        same address to the same slot, so both paths, and every box, agree."""
        try:
            packed = ipaddress.ip_address(key.decode("ascii", "replace")).packed
        except ValueError:
            packed = key  # not an address: still a stable slot
        return nft_jhash(packed, self.size, MAGLEV_SEED)

    def pick(self, available: Collection[int], key: bytes = b"",
             active: Sequence[int] = ()) -> int | None:
        if not available:
            return None
        s = self.slot(key)
        table = self.table
        # Probe a bounded number of slots; beyond that, fall back to the lowest index so
        # a nearly-all-down pool still answers deterministically.
        for k in range(min(self.size, PROBES)):
            b = table[(s + k) % self.size]
            if b >= 0 and b in available:
                return b
        return min(available)

    def effective(self, available: Collection[int]) -> list[int]:
        """What ``pick`` answers for each slot given ``available`` (one entry per slot,
        -1 when nothing is available): the table the kernel datapath is given, computed
        in one pass rather than a probe per slot."""
        m, table = self.size, self.table
        avail = set(available)
        if not avail:
            return [-1] * m
        fallback = min(avail)
        out = [fallback] * m
        # Walk backwards twice round, carrying the nearest usable entry at or after each
        # slot and how far it is; a slot whose nearest is PROBES or more away falls back.
        nearest, dist = -1, m
        for k in range(2 * m - 1, -1, -1):
            b = table[k % m]
            if b >= 0 and b in avail:
                nearest, dist = b, 0
            else:
                dist += 1
            if k < m:
                out[k] = nearest if nearest >= 0 and dist < PROBES else fallback
        return out


def make_balancer(kind: str, names_weights: Sequence[tuple[str, int]]) -> Balancer:
    """Build the balancer a Listener's ``balance`` key names."""
    weights = [w for _, w in names_weights]
    if kind == "round_robin":
        return SmoothRoundRobin(weights)
    if kind == "least_conn":
        return LeastConnections(weights)
    if kind == "p2c":
        return PowerOfTwoChoices(weights)
    if kind == "maglev":
        return Maglev(names_weights)
    raise ValueError(f"unknown balancer {kind!r}")
