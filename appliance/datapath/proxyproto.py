"""PROXY protocol headers (HAProxy's spec, versions 1 and 2) towards backends, so that a
backend sees the real client address. Pure: addresses in, bytes out."""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def header(version: str, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """The header to send before any payload: ``version`` is ``v1`` or ``v2``."""
    s_ip = ipaddress.ip_address(src[0].split("%")[0])
    d_ip = ipaddress.ip_address(dst[0].split("%")[0])
    if s_ip.version != d_ip.version:
        # A v4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; map both to v6.
        s_ip = _as_v6(s_ip)
        d_ip = _as_v6(d_ip)
    if version == "v1":
        name = "TCP4" if s_ip.version == 4 else "TCP6"
        return f"PROXY {name} {s_ip} {d_ip} {src[1]} {dst[1]}\r\n".encode()
    if version == "v2":
        body = s_ip.packed + d_ip.packed + struct.pack("!HH", src[1], dst[1])
        family = 0x11 if s_ip.version == 4 else 0x21  # AF_INET / AF_INET6, both STREAM
        # 0x21: protocol version 2, command PROXY.
        return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body
    raise ValueError(f"unknown PROXY protocol version {version!r}")


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address("::ffff:" + str(ip))


def parse_v1(data: bytes) -> tuple[tuple[str, int], tuple[str, int], int]:
    """Parse a v1 header at the start of ``data``: (src, dst, header length). For tests
    and for backends written in Python."""
    end = data.find(b"\r\n")
    if not data.startswith(b"PROXY ") or end < 0 or end > 105:
        raise ValueError("not a PROXY v1 header")
    parts = data[:end].decode("ascii").split(" ")
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ValueError("malformed PROXY v1 header")
    return (parts[2], int(parts[4])), (parts[3], int(parts[5])), end + 2


def parse_v2(data: bytes) -> tuple[tuple[str, int], tuple[str, int], int]:
    """Parse a v2 header at the start of ``data``: (src, dst, header length)."""
    if not data.startswith(V2_SIGNATURE) or len(data) < 16:
        raise ValueError("not a PROXY v2 header")
    ver_cmd, fam = data[12], data[13]
    (length,) = struct.unpack("!H", data[14:16])
    if ver_cmd != 0x21:
        raise ValueError("unsupported PROXY v2 version/command")
    body = data[16:16 + length]
    if fam == 0x11 and length >= 12:
        s = str(ipaddress.IPv4Address(body[0:4]))
        d = str(ipaddress.IPv4Address(body[4:8]))
        sp, dp = struct.unpack("!HH", body[8:12])
    elif fam == 0x21 and length >= 36:
        s = str(ipaddress.IPv6Address(body[0:16]))
        d = str(ipaddress.IPv6Address(body[16:32]))
        sp, dp = struct.unpack("!HH", body[32:36])
    else:
        raise ValueError("unsupported PROXY v2 family")
    return (s, sp), (d, dp), 16 + length
