"""The types of config values: each a function from the YAML value to the model's value,
raising ValueError (or TypeError) with a message that says what was expected."""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ..model import pool_addresses

Convert = Callable[[Any], Any]


def kind_of(v: Any) -> str:
    """What a YAML value is, in an operator's words."""
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(v), type(v).__name__)


def closest(word: str, choices: set[str]) -> str | None:
    """The known word an unknown one was probably meant to be."""
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# The longest duration anything takes: beyond this a value is a mistake (or an attempt
# to switch a timeout off, which a large but finite value does better).
MAX_DURATION = 30 * 86400.0


def parse_duration(value: Any) -> float:
    """``"500ms"``, ``"1s"``, ``"2m"``, ``"1h"`` or a plain number of seconds -> seconds,
    from 0 to 30 days."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 1s, 2m")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 1s, 2m, 1h)")
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 1s, 2m, 1h)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than 30 days")
    return seconds


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be above zero")
    return seconds


def parse_address(value: Any) -> tuple[str, int]:
    """``"127.0.0.1:80"`` or ``"[::1]:80"`` -> (host, port); the host must be an IP literal."""
    text = str(value).strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [ipv6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r} is not host:port (write IPv6 as [addr]:port)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not in 1-65535")
    return str(ip), int(port)


def choice(*options: str) -> Convert:
    def conv(v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return v
    conv.__doc__ = " | ".join(f"`{o}`" for o in options)
    return conv


def member_of(kind: type[StrEnum]) -> Convert:
    """One of an enum's values, as the enum's member."""
    words = choice(*(str(m) for m in kind))

    def conv(v: Any) -> StrEnum:
        return kind(words(v))
    conv.__doc__ = words.__doc__
    return conv


def int_range(lo: int, hi: int) -> Convert:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {kind_of(v)} {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is not in {lo}-{hi}")
        return v
    conv.__doc__ = f"{lo:,}-{hi:,}"
    return conv


def matching(pattern: str, what: str) -> Convert:
    """A string that matches ``pattern`` whole; the error says it is not ``what``."""
    regex = re.compile(pattern)

    def conv(v: Any) -> str:
        if not isinstance(v, str) or not regex.fullmatch(v):
            raise ValueError(f"{v!r} is not {what}")
        return v
    conv.__doc__ = what
    return conv


name = matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
                "a name (letters, digits, '-', '_', '.'; up to 63)")
group = matching(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", "a group name")


nft_name = matching(r"[A-Za-z][A-Za-z0-9_]{0,31}",
                    "an nftables name (a letter, then letters, digits or _; up to 32)")


_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20,
                              "mb": 1_000_000, "mib": 1 << 20}


def byte_size(lo: int, hi: int) -> Convert:
    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"expected a size, got {kind_of(v)} {v!r}")
        if isinstance(v, int):
            n = v
        else:
            m = re.fullmatch(r"\s*(\d{1,12})\s*([A-Za-z]*)\s*", str(v))
            unit = m.group(2).lower() if m else ""
            if m is None or unit not in _SIZE_UNITS:
                raise ValueError(f"{v!r} is not a size (64KiB, 1MiB, or bytes)")
            n = int(m.group(1)) * _SIZE_UNITS[unit]
        if not lo <= n <= hi:
            raise ValueError(f"{v!r} is not in {lo:,}-{hi:,} bytes")
        return n
    conv.__doc__ = f"a size, {lo:,}-{hi:,} bytes (64KiB, 1MiB)"
    return conv


def log_target(v: Any) -> str:
    """`stderr`, `syslog` or an absolute file path"""
    if v in ("stderr", "syslog"):
        return str(v)
    if isinstance(v, str) and v.startswith("/") and "\0" not in v:
        return v
    raise ValueError(f"{v!r} is not stderr, syslog or an absolute path")


def text(v: Any) -> str:
    """a string"""
    return str(v)


def workers(v: Any) -> int:
    """`auto` or 1-256"""
    if v == "auto":
        return os.cpu_count() or 1
    result: int = int_range(1, 256)(v)
    return result


def http_path(v: Any) -> str:
    """an HTTP path starting with `/`"""
    if not isinstance(v, str) or not v.startswith("/") or any(c in v for c in " \r\n"):
        raise ValueError(f"{v!r} is not an HTTP path starting with '/'")
    return v


def abs_path(v: Any) -> str:
    """an absolute path"""
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError(f"{v!r} is not an absolute path")
    return v


def boolean(v: Any) -> bool:
    """`true` \\| `false`"""
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


_HOSTNAME = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}"
                       r"[a-z0-9])?)*")


def hostname(v: Any) -> str:
    """a host name, or `*.` and a domain"""
    if not isinstance(v, str) or not _HOSTNAME.fullmatch(v.lower()):
        raise ValueError(f"{v!r} is not a host name (a wildcard is '*.' and a domain)")
    return v.lower()


def ip_interface(v: Any) -> str:
    """an IP address with an optional /prefix"""
    try:
        return str(ipaddress.ip_interface(str(v)))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address (with an optional /prefix)") from None


def ip_address(v: Any) -> str:
    """an IP address"""
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


def ipv4_address(v: Any) -> str:
    """an IPv4 address"""
    try:
        return str(ipaddress.IPv4Address(str(v)))
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 address") from None


def community(v: Any) -> str:
    """a BGP community ASN:VALUE (each 0-65535)"""
    parts = str(v).split(":")
    if len(parts) != 2 or not all(p.isdigit() and int(p) <= 65535 for p in parts):
        raise ValueError(f"{v!r} is not a BGP community ASN:VALUE (each 0-65535)")
    return f"{int(parts[0])}:{int(parts[1])}"


def ip_network(v: Any) -> str:
    """an address or CIDR"""
    try:
        return str(ipaddress.ip_network(str(v), strict=False))
    except ValueError:
        raise ValueError(f"{v!r} is not an address or CIDR") from None


def addresses(value: Any) -> tuple[tuple[str, int], ...]:
    """one address ``"192.0.2.1:80"``, or a list of them (one of each IP family, say)"""
    items = [getattr(i, "value", i) for i in value] if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected an address or a list of addresses, got an empty list")
    out = tuple(parse_address(i) for i in items)
    if len(set(out)) < len(out):
        raise ValueError("the same address is listed twice")
    return out


def address_pool(v: Any) -> str:
    """a CIDR, a range `a-b`, or one address"""
    pool_addresses(str(v))
    return str(v)

