"""The YAML configuration: parsing with line numbers, validation, and the Snapshot it yields.

Every error names the key path (``listeners[0].health.interval``) and the line of the
file where the offending value stands, so that an operator can go straight to it.
Validation collects every error it finds rather than stopping at the first.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from .model import (
    BALANCERS,
    Backend,
    HealthSpec,
    Listener,
    PassiveSpec,
    Snapshot,
    Timeouts,
)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class ConfigError(Exception):
    """A config that cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue], source: str = "") -> None:
        self.issues = issues
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(i) for i in issues))


@dataclass
class Node:
    """A YAML value with the line (1-based) it starts on."""

    value: Any
    line: int


def _to_node(n: yaml.Node, issues: list[ConfigIssue], path: str) -> Node:
    line = n.start_mark.line + 1
    if isinstance(n, yaml.MappingNode):
        out: dict[str, Node] = {}
        for k, v in n.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            sub = f"{path}.{key}" if path else str(key)
            if key in out:
                # PyYAML silently keeps the last duplicate; an operator almost never means that.
                issues.append(ConfigIssue(sub, k.start_mark.line + 1, "duplicate key"))
            out[key] = _to_node(v, issues, sub)
        return Node(out, line)
    if isinstance(n, yaml.SequenceNode):
        return Node([_to_node(v, issues, f"{path}[{i}]") for i, v in enumerate(n.value)], line)
    assert isinstance(n, yaml.ScalarNode)
    return Node(yaml.SafeLoader("").construct_object(n, deep=True), line)


def parse_yaml(text: str, source: str = "") -> Node:
    """Parse YAML text into a Node tree, raising ConfigError with the line on bad syntax."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise ConfigError([ConfigIssue("", line, f"YAML syntax: {e.problem}")], source) from e
    if root is None:
        return Node({}, 1)
    issues: list[ConfigIssue] = []
    node = _to_node(root, issues, "")
    if issues:
        raise ConfigError(issues, source)
    return node


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"500ms"``, ``"1s"``, ``"2m"``, ``"1h"`` or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 1s, 2m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 1s, 2m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


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


class _Checker:
    """Walks the Node tree, converting values and collecting issues."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.lines: dict[int, int] = {}

    def fail(self, path: str, node: Node | None, message: str) -> None:
        self.issues.append(ConfigIssue(path, node.line if node else 0, message))

    def mapping(self, node: Node, path: str, allowed: set[str]) -> dict[str, Node] | None:
        if not isinstance(node.value, dict):
            self.fail(path, node, f"expected a mapping, got {_kind(node.value)}")
            return None
        for key, sub in node.value.items():
            if key not in allowed:
                hint = _closest(key, allowed)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                self.fail(f"{path}.{key}" if path else key, sub, f"unknown key{extra}")
        self.lines[id(node.value)] = node.line
        return node.value

    def get(self, m: dict[str, Node], key: str, path: str, conv: Callable[[Any], Any],
            default: Any) -> Any:
        node = m.get(key)
        full = f"{path}.{key}" if path else key
        if node is None or node.value is None:
            if default is _REQUIRED:
                # A missing key has no line of its own; point at its mapping.
                self.issues.append(ConfigIssue(full, self.lines.get(id(m), 0), "is required"))
                return None
            return default
        try:
            return conv(node.value)
        except (ValueError, TypeError) as e:
            self.fail(full, node, str(e))
            return None

    def line_of(self, m: dict[str, Node], key: str) -> int:
        node = m.get(key)
        return node.line if node else 0


_REQUIRED = object()


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(v), type(v).__name__)


def _closest(word: str, choices: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return v
    return conv


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {_kind(v)} {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is not in {lo}-{hi}")
        return v
    return conv


def _name(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", v):
        raise ValueError(f"{v!r} is not a name (letters, digits, '-', '_', '.'; up to 63)")
    return v


def _workers(v: Any) -> int:
    if v == "auto":
        return os.cpu_count() or 1
    return _int_range(1, 256)(v)


def _http_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or any(c in v for c in " \r\n"):
        raise ValueError(f"{v!r} is not an HTTP path starting with '/'")
    return v


_TOP = {"workers", "drain_timeout", "metrics", "listeners"}
_LISTENER = {"name", "bind", "protocol", "balance", "backends", "health", "passive", "timeouts",
             "proxy_protocol", "max_flows", "max_connections", "backlog"}
_BACKEND = {"address", "weight"}
_HEALTH = {"type", "interval", "timeout", "rise", "fall", "path", "expect_status"}
_PASSIVE = {"failures", "backoff", "max_backoff"}
_TIMEOUTS = {"connect", "idle"}
_METRICS = {"bind"}


def build_snapshot(root: Node, version: int = 1, source: str = "") -> Snapshot:
    """Validate a parsed config and build the immutable Snapshot it describes."""
    c = _Checker()
    top = c.mapping(root, "", _TOP)
    if top is None:
        raise ConfigError(c.issues, source)
    workers = c.get(top, "workers", "", _workers, 1)
    drain = c.get(top, "drain_timeout", "", parse_duration, 30.0)
    metrics_bind = None
    if "metrics" in top and top["metrics"].value is not None:
        mm = c.mapping(top["metrics"], "metrics", _METRICS)
        if mm is not None:
            metrics_bind = c.get(mm, "bind", "metrics", parse_address, _REQUIRED)

    listeners: list[Listener] = []
    lnode = top.get("listeners")
    if lnode is not None and not isinstance(lnode.value, list):
        c.fail("listeners", lnode, f"expected a list, got {_kind(lnode.value)}")
    elif lnode is not None:
        names: dict[str, str] = {}
        binds: dict[tuple[str, tuple[str, int]], str] = {}
        for i, item in enumerate(lnode.value):
            path = f"listeners[{i}]"
            lst = _listener(c, item, path)
            if lst is None:
                continue
            if lst.name in names:
                c.fail(f"{path}.name", item.value.get("name"),
                       f"duplicate listener name {lst.name!r} (first at {names[lst.name]})")
            names.setdefault(lst.name, path)
            # TCP and UDP may share a port; two listeners of one protocol cannot.
            bkey = (lst.protocol, lst.bind)
            if bkey in binds:
                c.fail(f"{path}.bind", item.value.get("bind"),
                       f"duplicate bind {lst.bind_text} (also used by {binds[bkey]})")
            binds.setdefault(bkey, path)
            listeners.append(lst)
    if c.issues:
        raise ConfigError(c.issues, source)
    return Snapshot(version=version, workers=workers, drain_timeout=drain,
                    metrics_bind=metrics_bind, listeners=tuple(listeners))


def _listener(c: _Checker, node: Node, path: str) -> Listener | None:
    m = c.mapping(node, path, _LISTENER)
    if m is None:
        return None
    before = len(c.issues)
    name = c.get(m, "name", path, _name, _REQUIRED)
    bind = c.get(m, "bind", path, parse_address, _REQUIRED)
    protocol = c.get(m, "protocol", path, _choice("tcp", "udp"), "tcp")
    balance = c.get(m, "balance", path, _choice(*BALANCERS), "round_robin")
    proxy = c.get(m, "proxy_protocol", path, _choice("none", "v1", "v2"), "none")
    max_flows = c.get(m, "max_flows", path, _int_range(1, 10_000_000), 65536)
    max_conns = c.get(m, "max_connections", path, _int_range(0, 10_000_000), 0)
    backlog = c.get(m, "backlog", path, _int_range(1, 1_000_000), 4096)
    if protocol == "udp" and proxy != "none":
        c.fail(f"{path}.proxy_protocol", m.get("proxy_protocol"),
               "PROXY protocol is only for tcp listeners")

    backends: list[Backend] = []
    bnode = m.get("backends")
    if bnode is None or bnode.value is None:
        c.issues.append(ConfigIssue(f"{path}.backends", node.line,
                                    "is required (a list of {address, weight})"))
    elif not isinstance(bnode.value, list):
        c.fail(f"{path}.backends", bnode, f"expected a list, got {_kind(bnode.value)}")
    else:
        seen: set[tuple[str, int]] = set()
        for j, b in enumerate(bnode.value):
            bpath = f"{path}.backends[{j}]"
            if isinstance(b.value, str):
                b = Node({"address": b}, b.line)
            bm = c.mapping(b, bpath, _BACKEND)
            if bm is None:
                continue
            addr = c.get(bm, "address", bpath, parse_address, _REQUIRED)
            weight = c.get(bm, "weight", bpath, _int_range(0, 256), 1)
            if addr is None or weight is None:
                continue
            if addr in seen:
                c.fail(f"{bpath}.address", bm.get("address"), "duplicate backend address")
            seen.add(addr)
            backends.append(Backend(host=addr[0], port=addr[1], weight=weight))

    health = HealthSpec(type="none" if protocol == "udp" else "tcp")
    if "health" in m and m["health"].value is not None:
        hpath = f"{path}.health"
        hm = c.mapping(m["health"], hpath, _HEALTH)
        if hm is not None:
            health = HealthSpec(
                type=c.get(hm, "type", hpath, _choice("none", "tcp", "http"), "tcp"),
                interval=c.get(hm, "interval", hpath, parse_duration, 2.0),
                timeout=c.get(hm, "timeout", hpath, parse_duration, 1.0),
                rise=c.get(hm, "rise", hpath, _int_range(1, 100), 2),
                fall=c.get(hm, "fall", hpath, _int_range(1, 100), 3),
                path=c.get(hm, "path", hpath, _http_path, "/"),
                expect_status=c.get(hm, "expect_status", hpath, _int_range(100, 599), 200),
            )
            if protocol == "udp" and health.type != "none":
                c.fail(f"{hpath}.type", hm.get("type"), "udp listeners support only 'none'")
            if health.interval is not None and health.interval <= 0:
                c.fail(f"{hpath}.interval", hm.get("interval"), "must be above zero")
    passive = PassiveSpec()
    if "passive" in m and m["passive"].value is not None:
        ppath = f"{path}.passive"
        pm = c.mapping(m["passive"], ppath, _PASSIVE)
        if pm is not None:
            passive = PassiveSpec(
                failures=c.get(pm, "failures", ppath, _int_range(0, 1000), 3),
                backoff=c.get(pm, "backoff", ppath, parse_duration, 1.0),
                max_backoff=c.get(pm, "max_backoff", ppath, parse_duration, 30.0),
            )
    timeouts = Timeouts()
    if "timeouts" in m and m["timeouts"].value is not None:
        tpath = f"{path}.timeouts"
        tm = c.mapping(m["timeouts"], tpath, _TIMEOUTS)
        if tm is not None:
            timeouts = Timeouts(
                connect=c.get(tm, "connect", tpath, parse_duration, 1.0),
                idle=c.get(tm, "idle", tpath, parse_duration,
                           30.0 if protocol == "udp" else 300.0),
            )
    elif protocol == "udp":
        timeouts = Timeouts(idle=30.0)
    if len(c.issues) > before:
        return None
    return Listener(name=name, bind=bind, protocol=protocol, balance=balance,
                    backends=tuple(backends), health=health, passive=passive,
                    timeouts=timeouts, proxy_protocol=proxy, max_flows=max_flows,
                    max_connections=max_conns, backlog=backlog)


def load_text(text: str, version: int = 1, source: str = "") -> Snapshot:
    """Parse and validate config text into a Snapshot (raises ConfigError)."""
    return build_snapshot(parse_yaml(text, source), version, source)


def load_file(path: str, version: int = 1) -> Snapshot:
    """Read, parse and validate a config file into a Snapshot (raises ConfigError)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([ConfigIssue("", 0, f"cannot read: {e.strerror}")], path) from e
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigIssue("", 0, f"not UTF-8 text: {e.reason}")], path) from e
    return load_text(text, version, path)
