"""The Linux kernel's ``jhash`` (Bob Jenkins' lookup3, ``include/linux/jhash.h``) and
nftables' ``jhash ... mod N seed S`` built on it, in pure Python: the user-space path and
the kernel path hash a client address to the same Maglev slot, so they, and every box,
pick the same backend for a client."""

from __future__ import annotations

INITVAL = 0xDEADBEEF
M32 = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & M32
    a ^= _rol(c, 4)
    c = (c + b) & M32
    b = (b - a) & M32
    b ^= _rol(a, 6)
    a = (a + c) & M32
    c = (c - b) & M32
    c ^= _rol(b, 8)
    b = (b + a) & M32
    a = (a - c) & M32
    a ^= _rol(c, 16)
    c = (c + b) & M32
    b = (b - a) & M32
    b ^= _rol(a, 19)
    a = (a + c) & M32
    c = (c - b) & M32
    c ^= _rol(b, 4)
    b = (b + a) & M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol(b, 14)) & M32
    a ^= c
    a = (a - _rol(c, 11)) & M32
    b ^= a
    b = (b - _rol(a, 25)) & M32
    c ^= b
    c = (c - _rol(b, 16)) & M32
    a ^= c
    a = (a - _rol(c, 4)) & M32
    b ^= a
    b = (b - _rol(a, 14)) & M32
    c ^= b
    c = (c - _rol(b, 24)) & M32
    return c


def jhash(key: bytes, initval: int) -> int:
    """``jhash(key, len(key), initval)`` as the kernel computes it on a little-endian
    machine (the words are read in the CPU's order; x86 and arm64 are little-endian)."""
    length = len(key)
    a = b = c = (INITVAL + length + initval) & M32
    k = 0
    while length > 12:
        a = (a + int.from_bytes(key[k:k + 4], "little")) & M32
        b = (b + int.from_bytes(key[k + 4:k + 8], "little")) & M32
        c = (c + int.from_bytes(key[k + 8:k + 12], "little")) & M32
        a, b, c = _mix(a, b, c)
        length -= 12
        k += 12
    if length == 0:
        return c
    tail = key[k:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & M32
    b = (b + int.from_bytes(tail[4:8], "little")) & M32
    c = (c + int.from_bytes(tail[8:12], "little")) & M32
    return _final(a, b, c)


def nft_jhash(key: bytes, modulus: int, seed: int) -> int:
    """What ``jhash <key> mod <modulus> seed <seed>`` gives in an nftables rule: the hash
    scaled to [0, modulus) by multiplication (the kernel's ``reciprocal_scale``)."""
    return (jhash(key, seed) * modulus) >> 32
