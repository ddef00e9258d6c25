"""The YAML configuration: parsing with line numbers, validation, and the Snapshot it yields.

Every error names the key path (``listeners[0].health.interval``) and the line of the
file where the offending value stands, so that an operator can go straight to it.
Validation collects every error it finds rather than stopping at the first.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from .datapath.routing import RouteTable
from .model import (
    BALANCERS,
    PATH_TYPES,
    Backend,
    BackendTls,
    ClusterSpec,
    ControlSpec,
    HaSpec,
    HealthSpec,
    HttpLimits,
    HttpSpec,
    Listener,
    PassiveSpec,
    PathRule,
    Pool,
    Route,
    Snapshot,
    Timeouts,
    TlsCert,
)
from .sync.ipam import parse_pool


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

    def items(self, m: dict[str, Node], key: str, path: str, conv: Callable[[Any], Any],
              what: str) -> list[Any]:
        """The list under ``key``, each item converted by ``conv`` (whose ValueError is
        that item's error, at ``key[i]``); empty when the key is absent."""
        node = m.get(key)
        full = f"{path}.{key}" if path else key
        if node is None or node.value is None:
            return []
        if not isinstance(node.value, list):
            self.fail(full, node, f"expected a list of {what}")
            return []
        out = []
        for i, item in enumerate(node.value):
            try:
                out.append(conv(item.value))
            except (ValueError, TypeError) as e:
                self.fail(f"{full}[{i}]", item, str(e))
        return out

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


_TOP = {"workers", "drain_timeout", "metrics", "listeners", "cluster", "ha", "control"}
_CONTROL = {"socket", "group", "audit_log", "state_file", "roles"}
_ROLES = {"admin", "operator", "viewer"}
_HA = {"mode", "identity", "lease", "interface", "vrid", "priority", "advert_interval",
       "preempt", "preempt_delay", "vips", "unicast_peers", "garp", "track"}
_GARP = {"count", "interval", "refresh"}
_TRACK = {"listeners", "api_timeout", "weight"}
_LEASE = {"name", "namespace", "duration"}
_CLUSTER = {"kubeconfig", "context", "namespaces", "load_balancer_class", "default_class",
            "ingress_class", "address_pools", "ingress", "direct_endpoints", "tls_dir",
            "debounce"}
_INGRESS = {"http", "https"}
_HTTP_ONLY = {"routes", "pools", "default_pool", "tls", "limits", "trusted_proxies",
              "access_log", "backend_keepalive"}
_LISTENER = {"name", "bind", "protocol", "balance", "backends", "health", "passive", "timeouts",
             "proxy_protocol", "max_flows", "max_connections", "backlog"} | _HTTP_ONLY
_POOL = {"balance", "backends", "health", "passive", "tls"}
_ROUTE = {"host", "paths"}
_PATH = {"path", "type", "pool"}
_TLS = {"hosts", "cert", "key"}
_BACKEND_TLS = {"ca", "verify", "server_name"}
_LIMITS = {"max_request_line", "max_header_bytes", "max_headers"}
_BACKEND = {"address", "weight"}
_HEALTH = {"type", "interval", "timeout", "rise", "fall", "path", "expect_status"}
_PASSIVE = {"failures", "backoff", "max_backoff"}
_TIMEOUTS = {"connect", "idle", "request", "keepalive", "body", "response"}
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

    cluster = None
    if "cluster" in top and top["cluster"].value is not None:
        cluster = _cluster(c, top["cluster"])

    control = default_control()
    if "control" in top and top["control"].value is not None:
        control = _control(c, top["control"]) or control

    ha = HaSpec()
    if "ha" in top and top["ha"].value is not None:
        ha = _ha(c, top["ha"], cluster) or ha

    listeners: list[Listener] = []
    lnode = top.get("listeners")
    track_node = top.get("ha")
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
            bkey = (lst.transport, lst.bind)
            if bkey in binds:
                c.fail(f"{path}.bind", item.value.get("bind"),
                       f"duplicate bind {lst.bind_text} (also used by {binds[bkey]})")
            binds.setdefault(bkey, path)
            listeners.append(lst)
    known = {lst.name for lst in listeners}
    for name in ha.track_listeners:
        if name not in known:
            c.fail("ha.track.listeners", track_node, f"no listener named {name!r}")
    if c.issues:
        raise ConfigError(c.issues, source)
    return Snapshot(version=version, workers=workers, drain_timeout=drain,
                    metrics_bind=metrics_bind, listeners=tuple(listeners), cluster=cluster,
                    ha=ha, control=control)


def _abs_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError(f"{v!r} is not an absolute path")
    return v


def _group(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", v):
        raise ValueError(f"{v!r} is not a group name")
    return v


def default_control() -> ControlSpec:
    """The control section's defaults; ``EDGELB_SOCKET`` moves the socket (as it does for
    ``edgelb ctl`` and ``edgelb tui``) and the audit log beside it, so that a test or a
    demo runs beside a system daemon."""
    sock = os.environ.get("EDGELB_SOCKET")
    if not sock:
        return ControlSpec()
    return ControlSpec(socket=sock, audit_log=os.path.join(os.path.dirname(sock),
                                                           "audit.jsonl"))


def _control(c: _Checker, node: Node) -> ControlSpec | None:
    m = c.mapping(node, "control", _CONTROL)
    if m is None:
        return None
    d = default_control()
    groups = {"admin": d.admin_group, "operator": d.operator_group, "viewer": d.viewer_group}
    if "roles" in m and m["roles"].value is not None:
        rm = c.mapping(m["roles"], "control.roles", _ROLES)
        if rm is not None:
            for role in _ROLES:
                groups[role] = c.get(rm, role, "control.roles", _group, groups[role])
    return ControlSpec(
        socket=c.get(m, "socket", "control", _abs_path, d.socket),
        group=c.get(m, "group", "control", _group, d.group),
        audit_log=c.get(m, "audit_log", "control", _abs_path, d.audit_log),
        state_file=c.get(m, "state_file", "control", _abs_path, d.state_file),
        admin_group=groups["admin"], operator_group=groups["operator"],
        viewer_group=groups["viewer"])


def _ha(c: _Checker, node: Node, cluster: ClusterSpec | None) -> HaSpec | None:
    m = c.mapping(node, "ha", _HA)
    if m is None:
        return None
    d = HaSpec()
    mode = c.get(m, "mode", "ha", _choice("standalone", "lease", "vrrp"), "standalone")
    if mode == "lease" and cluster is None:
        c.fail("ha.mode", m.get("mode"), "lease mode needs the cluster section (the Lease "
                                         "lives in the cluster)")
    identity = c.get(m, "identity", "ha", str, None) or socket.gethostname()
    name, namespace, duration = d.lease_name, d.lease_namespace, d.lease_duration
    if "lease" in m and m["lease"].value is not None:
        lm = c.mapping(m["lease"], "ha.lease", _LEASE)
        if lm is not None:
            name = c.get(lm, "name", "ha.lease", _name, name)
            namespace = c.get(lm, "namespace", "ha.lease", _name, namespace)
            duration = c.get(lm, "duration", "ha.lease", parse_duration, duration)
            if duration is not None and duration < 1:
                c.fail("ha.lease.duration", lm.get("duration"), "must be at least 1s")
    vrrp: dict[str, Any] = {}
    if mode == "vrrp":
        vrrp["interface"] = c.get(m, "interface", "ha", str, _REQUIRED)
        vrrp["vrid"] = c.get(m, "vrid", "ha", _int_range(1, 255), d.vrid)
        vrrp["priority"] = c.get(m, "priority", "ha", _int_range(1, 255), d.priority)
        vrrp["advert_interval"] = c.get(m, "advert_interval", "ha", parse_duration,
                                        d.advert_interval)
        interval = vrrp["advert_interval"]
        if interval is not None and not 0.01 <= interval <= 40.95:
            c.fail("ha.advert_interval", m.get("advert_interval"),
                   "must be 10ms-40.95s (VRRPv3 counts centiseconds in 12 bits)")
        vrrp["preempt"] = c.get(m, "preempt", "ha", _bool, True)
        vrrp["preempt_delay"] = c.get(m, "preempt_delay", "ha", parse_duration, 0.0)
        vrrp["vips"] = tuple(c.items(m, "vips", "ha", _ip_interface, "addresses"))
        vrrp["unicast_peers"] = tuple(c.items(m, "unicast_peers", "ha", _ip_address,
                                              "addresses"))
        if not vrrp["vips"]:
            c.fail("ha.vips", m.get("vips") or node, "vrrp mode needs at least one VIP")
        if "garp" in m and m["garp"].value is not None:
            gm = c.mapping(m["garp"], "ha.garp", _GARP)
            if gm is not None:
                vrrp["garp_count"] = c.get(gm, "count", "ha.garp", _int_range(1, 100),
                                           d.garp_count)
                vrrp["garp_interval"] = c.get(gm, "interval", "ha.garp", parse_duration,
                                              d.garp_interval)
                vrrp["garp_refresh"] = c.get(gm, "refresh", "ha.garp", parse_duration,
                                             d.garp_refresh)
        if "track" in m and m["track"].value is not None:
            tm = c.mapping(m["track"], "ha.track", _TRACK)
            if tm is not None:
                vrrp["track_listeners"] = tuple(c.items(tm, "listeners", "ha.track", str,
                                                        "listener names"))
                vrrp["track_api_timeout"] = c.get(tm, "api_timeout", "ha.track",
                                                  parse_duration, 0.0)
                vrrp["track_weight"] = c.get(tm, "weight", "ha.track", _int_range(1, 254),
                                             d.track_weight)
    return HaSpec(mode=mode, identity=identity, lease_name=name, lease_namespace=namespace,
                  lease_duration=duration, **vrrp)


def _ip_interface(v: Any) -> str:
    try:
        return str(ipaddress.ip_interface(str(v)))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address (with an optional /prefix)") from None


def _ip_address(v: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


def _ip_network(v: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(v), strict=False))
    except ValueError:
        raise ValueError(f"{v!r} is not an address or CIDR") from None


def _address_pool(v: Any) -> str:
    parse_pool(str(v))
    return str(v)


def _cluster(c: _Checker, node: Node) -> ClusterSpec | None:
    m = c.mapping(node, "cluster", _CLUSTER)
    if m is None:
        return None
    d = ClusterSpec()
    kubeconfig = c.get(m, "kubeconfig", "cluster", str, None)
    if kubeconfig is not None and not os.path.isfile(kubeconfig):
        c.fail("cluster.kubeconfig", m.get("kubeconfig"), f"{kubeconfig}: no such file")
    pools = c.items(m, "address_pools", "cluster", _address_pool, "CIDRs or ranges")
    namespaces = c.items(m, "namespaces", "cluster", str, "namespace names")
    http = https = None
    if "ingress" in m and m["ingress"].value is not None:
        im = c.mapping(m["ingress"], "cluster.ingress", _INGRESS)
        if im is not None:
            http = c.get(im, "http", "cluster.ingress", parse_address, None)
            https = c.get(im, "https", "cluster.ingress", parse_address, None)
    return ClusterSpec(
        kubeconfig=kubeconfig, context=c.get(m, "context", "cluster", str, None),
        namespaces=tuple(namespaces),
        load_balancer_class=c.get(m, "load_balancer_class", "cluster", str,
                                  d.load_balancer_class),
        default_class=c.get(m, "default_class", "cluster", _bool, False),
        ingress_class=c.get(m, "ingress_class", "cluster", str, d.ingress_class),
        address_pools=tuple(pools), ingress_http=http, ingress_https=https,
        direct_endpoints=c.get(m, "direct_endpoints", "cluster", _bool, False),
        tls_dir=c.get(m, "tls_dir", "cluster", str, d.tls_dir),
        debounce=c.get(m, "debounce", "cluster", parse_duration, d.debounce),
    )


def _backends(c: _Checker, m: dict[str, Node], node: Node, path: str,
              required: bool = True) -> list[Backend]:
    backends: list[Backend] = []
    bnode = m.get("backends")
    if bnode is None or bnode.value is None:
        if required:
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
    return backends


def _health(c: _Checker, m: dict[str, Node], path: str, protocol: str) -> HealthSpec:
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
    return health


def _passive(c: _Checker, m: dict[str, Node], path: str) -> PassiveSpec:
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
    return passive


def _listener(c: _Checker, node: Node, path: str) -> Listener | None:
    m = c.mapping(node, path, _LISTENER)
    if m is None:
        return None
    before = len(c.issues)
    name = c.get(m, "name", path, _name, _REQUIRED)
    bind = c.get(m, "bind", path, parse_address, _REQUIRED)
    protocol = c.get(m, "protocol", path, _choice("tcp", "udp", "http", "https"), "tcp")
    is_http = protocol in ("http", "https")
    balance = c.get(m, "balance", path, _choice(*BALANCERS), "round_robin")
    proxy = c.get(m, "proxy_protocol", path, _choice("none", "v1", "v2"), "none")
    max_flows = c.get(m, "max_flows", path, _int_range(1, 10_000_000), 65536)
    max_conns = c.get(m, "max_connections", path, _int_range(0, 10_000_000), 0)
    backlog = c.get(m, "backlog", path, _int_range(1, 1_000_000), 4096)
    if protocol != "tcp" and proxy != "none":
        c.fail(f"{path}.proxy_protocol", m.get("proxy_protocol"),
               "PROXY protocol is only for tcp listeners")
    if not is_http:
        for key in sorted(_HTTP_ONLY & m.keys()):
            c.fail(f"{path}.{key}", m[key], f"is only for http and https listeners, "
                                            f"not {protocol}")
    backends = _backends(c, m, node, path, required=not is_http or "pools" not in m)
    health = _health(c, m, path, protocol)
    passive = _passive(c, m, path)
    timeouts = Timeouts()
    if "timeouts" in m and m["timeouts"].value is not None:
        tpath = f"{path}.timeouts"
        tm = c.mapping(m["timeouts"], tpath, _TIMEOUTS)
        if tm is not None:
            d = Timeouts()
            timeouts = Timeouts(
                connect=c.get(tm, "connect", tpath, parse_duration, d.connect),
                idle=c.get(tm, "idle", tpath, parse_duration,
                           30.0 if protocol == "udp" else d.idle),
                request=c.get(tm, "request", tpath, parse_duration, d.request),
                keepalive=c.get(tm, "keepalive", tpath, parse_duration, d.keepalive),
                body=c.get(tm, "body", tpath, parse_duration, d.body),
                response=c.get(tm, "response", tpath, parse_duration, d.response),
            )
    elif protocol == "udp":
        timeouts = Timeouts(idle=30.0)
    http = None
    if is_http:
        http = _http(c, m, node, path, protocol, backends, balance, health, passive)
    if len(c.issues) > before:
        return None
    return Listener(name=name, bind=bind, protocol=protocol, balance=balance,
                    backends=tuple(backends) if not is_http else (), health=health,
                    passive=passive, timeouts=timeouts, proxy_protocol=proxy,
                    max_flows=max_flows, max_connections=max_conns, backlog=backlog,
                    http=http)


def _http(c: _Checker, m: dict[str, Node], node: Node, path: str, protocol: str,
          backends: list[Backend], balance: str, health: HealthSpec,
          passive: PassiveSpec) -> HttpSpec:
    pools: list[Pool] = []
    if backends:
        # Shorthand: backends on the listener itself make a pool named "default".
        pools.append(Pool("default", balance, tuple(backends), health, passive))
    pnode = m.get("pools")
    if pnode is not None and pnode.value is not None:
        pm = c.mapping(pnode, f"{path}.pools", set(pnode.value) if isinstance(
            pnode.value, dict) else set())
        for pname, sub in (pm or {}).items():
            ppath = f"{path}.pools.{pname}"
            try:
                _name(pname)
            except ValueError as e:
                c.fail(ppath, sub, str(e))
                continue
            if pname == "default" and backends:
                c.fail(ppath, sub, "'default' is the pool of the listener's own backends")
                continue
            sm = c.mapping(sub, ppath, _POOL)
            if sm is None:
                continue
            pools.append(Pool(
                name=pname,
                balance=c.get(sm, "balance", ppath, _choice(*BALANCERS), "round_robin"),
                backends=tuple(_backends(c, sm, sub, ppath)),
                health=_health(c, sm, ppath, "tcp"),
                passive=_passive(c, sm, ppath),
                tls=_backend_tls(c, sm, ppath),
            ))
    names = {p.name for p in pools}
    default_pool = c.get(m, "default_pool", path, str, "default" if backends else None)
    if default_pool is not None and default_pool not in names:
        c.fail(f"{path}.default_pool", m.get("default_pool"),
               f"no pool named {default_pool!r} (pools: {', '.join(sorted(names)) or 'none'})")
    routes = _routes(c, m, path, names)
    tls = _tls(c, m, path, protocol)
    limits = HttpLimits()
    if "limits" in m and m["limits"].value is not None:
        lpath = f"{path}.limits"
        lm = c.mapping(m["limits"], lpath, _LIMITS)
        if lm is not None:
            limits = HttpLimits(
                max_request_line=c.get(lm, "max_request_line", lpath,
                                       _int_range(64, 1 << 20), limits.max_request_line),
                max_header_bytes=c.get(lm, "max_header_bytes", lpath,
                                       _int_range(256, 1 << 22), limits.max_header_bytes),
                max_headers=c.get(lm, "max_headers", lpath, _int_range(1, 10000),
                                  limits.max_headers),
            )
    trusted = c.items(m, "trusted_proxies", path, _ip_network, "addresses or CIDRs")
    return HttpSpec(
        routes=tuple(routes), pools=tuple(pools), default_pool=default_pool, tls=tuple(tls),
        limits=limits, trusted_proxies=tuple(trusted),
        access_log=c.get(m, "access_log", path, _bool, True),
        backend_keepalive=c.get(m, "backend_keepalive", path, _int_range(0, 10000), 32),
    )


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


_HOSTNAME = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}"
                       r"[a-z0-9])?)*")


def _hostname(v: Any) -> str:
    if not isinstance(v, str) or not _HOSTNAME.fullmatch(v.lower()):
        raise ValueError(f"{v!r} is not a host name (a wildcard is '*.' and a domain)")
    return v.lower()


def _routes(c: _Checker, m: dict[str, Node], path: str, pools: set[str]) -> list[Route]:
    routes: list[Route] = []
    rnode = m.get("routes")
    if rnode is None or rnode.value is None:
        return routes
    if not isinstance(rnode.value, list):
        c.fail(f"{path}.routes", rnode, f"expected a list, got {_kind(rnode.value)}")
        return routes
    for i, item in enumerate(rnode.value):
        rpath = f"{path}.routes[{i}]"
        rm = c.mapping(item, rpath, _ROUTE)
        if rm is None:
            continue
        host = c.get(rm, "host", rpath, _hostname, "")
        rules: list[PathRule] = []
        pnode = rm.get("paths")
        if pnode is None or not isinstance(pnode.value, list):
            c.fail(f"{rpath}.paths", pnode or item, "expected a list of {path, type, pool}")
            continue
        for j, pitem in enumerate(pnode.value):
            ppath = f"{rpath}.paths[{j}]"
            pm = c.mapping(pitem, ppath, _PATH)
            if pm is None:
                continue
            p = c.get(pm, "path", ppath, _http_path, "/")
            kind = c.get(pm, "type", ppath, _choice(*PATH_TYPES), "Prefix")
            pool = c.get(pm, "pool", ppath, str, _REQUIRED)
            if pool is not None and pool not in pools:
                c.fail(f"{ppath}.pool", pm.get("pool"), f"no pool named {pool!r} "
                       f"(pools: {', '.join(sorted(pools)) or 'none'})")
            if p is not None and kind is not None and pool is not None:
                rules.append(PathRule(p, kind, pool))
        if host is not None:
            routes.append(Route(host, tuple(rules)))
    table = RouteTable(routes)
    for conflict in table.conflicts:
        c.fail(f"{path}.routes", rnode, conflict)
    return routes


def _read_pem(c: _Checker, node: Node | None, key: str, path: str) -> bytes | None:
    if node is None or not isinstance(node.value, str):
        c.fail(f"{path}.{key}", node, "is required (a path to a PEM file)")
        return None
    try:
        with open(node.value, "rb") as f:
            return f.read()
    except OSError as e:
        c.fail(f"{path}.{key}", node, f"cannot read {node.value}: {e.strerror}")
        return None


def _tls(c: _Checker, m: dict[str, Node], path: str, protocol: str) -> list[TlsCert]:
    certs: list[TlsCert] = []
    tnode = m.get("tls")
    if tnode is None or tnode.value is None:
        if protocol == "https":
            c.fail(f"{path}.tls", m.get("protocol"), "an https listener needs at least one "
                   "certificate: tls: [{hosts, cert, key}]")
        return certs
    if protocol != "https":
        c.fail(f"{path}.tls", tnode, "is only for https listeners")
        return certs
    if not isinstance(tnode.value, list) or not tnode.value:
        c.fail(f"{path}.tls", tnode, "expected a list of {hosts, cert, key}")
        return certs
    for i, item in enumerate(tnode.value):
        tpath = f"{path}.tls[{i}]"
        tm = c.mapping(item, tpath, _TLS)
        if tm is None:
            continue
        hosts: list[str] = []
        hnode = tm.get("hosts")
        if hnode is not None and isinstance(hnode.value, list):
            for k, h in enumerate(hnode.value):
                got = c.get({"h": h}, "h", "", _hostname, _REQUIRED)
                if got is None:
                    c.issues.pop()
                    c.fail(f"{tpath}.hosts[{k}]", h, f"{h.value!r} is not a host name")
                else:
                    hosts.append(got)
        elif hnode is not None and hnode.value is not None:
            c.fail(f"{tpath}.hosts", hnode, "expected a list of host names")
        cert = _read_pem(c, tm.get("cert"), "cert", tpath)
        key = _read_pem(c, tm.get("key"), "key", tpath)
        if cert is None or key is None:
            continue
        cert_path, key_path = tm["cert"].value, tm["key"].value
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as e:
            c.fail(f"{tpath}.cert", tm.get("cert"), f"{cert_path} and {key_path} are not a "
                   f"matching certificate and key ({e.reason or e})")
            continue
        fingerprint = hashlib.sha256(cert + b"\0" + key).hexdigest()[:16]
        certs.append(TlsCert(tuple(hosts), cert_path, key_path, fingerprint))
    return certs


def _backend_tls(c: _Checker, m: dict[str, Node], path: str) -> BackendTls | None:
    if "tls" not in m or m["tls"].value is None:
        return None
    tpath = f"{path}.tls"
    if m["tls"].value is True:
        return BackendTls()
    tm = c.mapping(m["tls"], tpath, _BACKEND_TLS)
    if tm is None:
        return None
    ca = c.get(tm, "ca", tpath, str, None)
    if ca is not None and _read_pem(c, tm.get("ca"), "ca", tpath) is None:
        return None
    return BackendTls(ca=ca, verify=c.get(tm, "verify", tpath, _bool, True),
                      server_name=c.get(tm, "server_name", tpath, _hostname, None))


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
