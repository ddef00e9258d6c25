"""A parsed config file -> the Snapshot it describes, validated against the schema.

Validation collects every error it finds rather than stopping at the first. The schema
(``schema.py``) says which keys exist and what their values may be; this module adds
what one key says about another (an https listener needs a certificate, a route names a
pool that exists, two listeners may not share a bind) and assembles the model.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
from dataclasses import replace
from typing import Any

from ..collector import cycle_collection_paused
from ..model import (
    AccessLogSpec,
    Backend,
    BackendTls,
    BgpAnnounce,
    BgpPeer,
    ClusterSpec,
    ControlSpec,
    HaSpec,
    HealthSpec,
    HttpLimits,
    HttpSpec,
    KernelSpec,
    Listener,
    PassiveSpec,
    PathRule,
    Pool,
    Proto,
    Route,
    Snapshot,
    Timeouts,
    TlsCert,
    route_conflicts,
)
from . import schema as s
from . import values
from .source import MAX_BYTES, ConfigError, ConfigIssue, Node, parse_yaml
from .values import kind_of
from .walker import Walker


def default_control() -> ControlSpec:
    """The control section's defaults; ``EDGELB_SOCKET`` moves the socket (as it does for
    ``edgelb ctl`` and ``edgelb tui``) and the audit log beside it, so that a test or a
    demo runs beside a system daemon."""
    sock = os.environ.get("EDGELB_SOCKET")
    if not sock:
        return ControlSpec()
    return ControlSpec(socket=sock, audit_log=os.path.join(os.path.dirname(sock),
                                                           "audit.jsonl"))


def build_snapshot(root: Node, version: int = 1, source: str = "") -> Snapshot:
    """Validate a parsed config and build the immutable Snapshot it describes."""
    w = Walker()
    top = w.mapping(root, "", s.TOP.names)
    if top is None:
        raise ConfigError(w.issues, source)
    given = w.scalars(top, "", s.TOP)
    metrics = w.section(top, "metrics", "", s.METRICS)
    metrics_bind = w.get(metrics, s.METRICS.key("bind"), "metrics") if metrics else None
    cluster = _cluster(w, w.section(top, "cluster", "", s.CLUSTER))
    control = w.build(default_control(), w.section(top, "control", "", s.CONTROL), "control",
                      s.CONTROL)
    ha = _ha(w, top, cluster)
    kernel = _kernel(w, w.section(top, "kernel", "", s.KERNEL))
    access_log = w.build(AccessLogSpec(), w.section(top, "access_log", "", s.ACCESS_LOG),
                         "access_log", s.ACCESS_LOG)
    listeners = _listeners(w, top)
    known = {lst.name for lst in listeners}
    for name in ha.track_listeners:
        if name not in known:
            w.fail("ha.track.listeners", top.get("ha"), f"no listener named {name!r}")
    if w.issues:
        raise ConfigError(w.issues, source)
    # One worker per core unless the file says otherwise (nginx's and HAProxy's way).
    workers = given["workers"] if "workers" in given else values.workers("auto")
    return Snapshot(version=version, listeners=tuple(listeners), metrics_bind=metrics_bind,
                    cluster=cluster, ha=ha, control=control, kernel=kernel,
                    access_log=access_log, workers=workers,
                    **{k: given[k] for k in ("drain_timeout", "allow_no_listeners")
                       if k in given})


def _bgp(w: Walker, m: dict[str, Node], node: Node | None, ha: HaSpec) -> HaSpec:
    """The bgp mode's peers and announce rules (lists of mappings), and what it needs."""
    for key in ("asn", "router_id"):
        if not getattr(ha, key):
            w.get(m, replace(s.HA.key(key), required=True), "ha")
    peers = []
    for i, item in enumerate(w.nodes(m, "peers", "ha") or []):
        pm = w.mapping(item, f"ha.peers[{i}]", s.BGP_PEER.names)
        if pm is None:
            continue
        peer = w.build(BgpPeer(), pm, f"ha.peers[{i}]", s.BGP_PEER)
        for key in ("address", "asn"):
            if not getattr(peer, key):
                w.get(pm, s.BGP_PEER.key(key), f"ha.peers[{i}]")
        if peer.hold_time < 3:
            w.fail(f"ha.peers[{i}].hold_time", pm.get("hold_time"), "must be at least 3s")
        peers.append(peer)
    if not peers:
        w.fail("ha.peers", m.get("peers") or node, "bgp mode needs at least one peer: "
               "peers: [{address, asn}]")
    rules = []
    for i, item in enumerate(w.nodes(m, "announce", "ha") or []):
        am = w.mapping(item, f"ha.announce[{i}]", s.BGP_ANNOUNCE.names)
        if am is not None:
            rule = w.build(BgpAnnounce(), am, f"ha.announce[{i}]", s.BGP_ANNOUNCE)
            if not rule.prefix:
                w.get(am, s.BGP_ANNOUNCE.key("prefix"), f"ha.announce[{i}]")
            rules.append(rule)
    return replace(ha, peers=tuple(peers), announce=tuple(rules))


def _ha(w: Walker, top: dict[str, Node], cluster: ClusterSpec | None) -> HaSpec:
    node = top.get("ha")
    m = w.section(top, "ha", "", s.HA)
    if node is None or m is None:
        return HaSpec()
    ha = w.build(HaSpec(), m, "ha", s.HA)
    if not ha.identity:
        ha = replace(ha, identity=os.uname().nodename)
    if ha.mode == "lease" and cluster is None:
        w.fail("ha.mode", m.get("mode"), "lease mode needs the cluster section (the Lease "
                                         "lives in the cluster)")
    lease = m.get("lease")
    if ha.lease_duration < 1 and lease is not None and isinstance(lease.value, dict):
        w.fail("ha.lease.duration", lease.value.get("duration"), "must be at least 1s")
    if ha.mode == "bgp":
        return _bgp(w, m, node, ha)
    if ha.mode != "vrrp":
        return ha
    if not ha.interface:
        w.get(m, replace(s.HA.key("interface"), required=True), "ha")
    if not 0.01 <= ha.advert_interval <= 40.95:
        w.fail("ha.advert_interval", m.get("advert_interval"),
               "must be 10ms-40.95s (VRRPv3 counts centiseconds in 12 bits)")
    if not ha.vips:
        w.fail("ha.vips", m.get("vips") or node, "vrrp mode needs at least one VIP")
    return ha


def _kernel(w: Walker, m: dict[str, Node] | None) -> KernelSpec:
    if m is None:
        return KernelSpec()
    spec = w.build(KernelSpec(), m, "kernel", s.KERNEL)
    families = [ipaddress.ip_address(a).version for a in spec.snat_addresses]
    if len(families) != len(set(families)):
        w.fail("kernel.snat_addresses", m.get("snat_addresses"),
               "at most one address per IP family")
    return spec


def _cluster(w: Walker, m: dict[str, Node] | None) -> ClusterSpec | None:
    if m is None:
        return None
    spec = w.build(ClusterSpec(), m, "cluster", s.CLUSTER)
    if spec.kubeconfig is not None and not os.path.isfile(spec.kubeconfig):
        w.fail("cluster.kubeconfig", m.get("kubeconfig"), f"{spec.kubeconfig}: no such file")
    return spec


def _listeners(w: Walker, top: dict[str, Node]) -> list[Listener]:
    items = w.nodes(top, "listeners", "")
    out: list[Listener] = []
    names: dict[str, str] = {}
    binds: dict[tuple[str, tuple[str, int]], str] = {}
    for i, item in enumerate(items or []):
        path = f"listeners[{i}]"
        lst = _listener(w, item, path)
        if lst is None:
            continue
        if lst.name in names:
            w.fail(f"{path}.name", item.value.get("name"),
                   f"duplicate listener name {lst.name!r} (first at {names[lst.name]})")
        names.setdefault(lst.name, path)
        # TCP and UDP may share a port; two listeners of one protocol cannot.
        bkey = (lst.transport, lst.bind)
        if bkey in binds:
            w.fail(f"{path}.bind", item.value.get("bind"),
                   f"duplicate bind {lst.bind_text} (also used by {binds[bkey]})")
        binds.setdefault(bkey, path)
        out.append(lst)
    return out


def _listener(w: Walker, node: Node, path: str) -> Listener | None:
    m = w.mapping(node, path, s.LISTENER.names)
    if m is None:
        return None
    before = len(w.issues)
    given = w.scalars(m, path, s.LISTENER)
    protocol = given.get("protocol", Proto.TCP)
    is_http = protocol in (Proto.HTTP, Proto.HTTPS)
    if protocol != Proto.TCP and given.get("proxy_protocol", "none") != "none":
        w.fail(f"{path}.proxy_protocol", m.get("proxy_protocol"),
               "PROXY protocol is only for tcp listeners")
    if not is_http:
        for key in sorted(set(s.HTTP_ONLY) & m.keys()):
            w.fail(f"{path}.{key}", m[key], f"is only for http and https listeners, "
                                            f"not {protocol}")
    backends = _backends(w, m, node, path, required=not is_http or "pools" not in m)
    udp = protocol == Proto.UDP
    health = _health(w, m, path, HealthSpec(type="none") if udp else HealthSpec(), udp)
    passive = w.build(PassiveSpec(), w.section(m, "passive", path, s.PASSIVE),
                      f"{path}.passive", s.PASSIVE)
    timeouts = w.build(Timeouts(idle=30.0) if udp else Timeouts(),
                       w.section(m, "timeouts", path, s.TIMEOUTS), f"{path}.timeouts",
                       s.TIMEOUTS)
    http = _http(w, m, path, protocol, given, backends, health, passive) if is_http else None
    if len(w.issues) > before:
        return None
    fields = {k: given[k] for k in ("balance", "proxy_protocol", "max_flows",
                                    "max_connections", "backlog", "datapath", "snat")
              if k in given}
    lst = Listener(name=given["name"], bind=given["bind"], protocol=protocol,
                   backends=tuple(backends) if not is_http else (), health=health,
                   passive=passive, timeouts=timeouts, http=http, **fields)
    refusal = lst.kernel_refusal
    if refusal is not None and lst.datapath == "kernel":
        w.fail(f"{path}.datapath", m.get("datapath"), f"kernel cannot serve this listener: "
                                                      f"{refusal}")
    elif refusal is not None and not lst.snat:
        w.fail(f"{path}.snat", m.get("snat"), f"false needs the kernel datapath, and this "
                                              f"listener is served in user space: {refusal}")
    elif not lst.snat and lst.datapath == "user":
        w.fail(f"{path}.snat", m.get("snat"), "false needs the kernel datapath (datapath: "
                                              "user always connects from this box)")
    return lst if len(w.issues) == before else None


def _health(w: Walker, m: dict[str, Node], path: str, base: HealthSpec,
            udp: bool = False) -> HealthSpec:
    hm = w.section(m, "health", path, s.HEALTH)
    health = w.build(base, hm, f"{path}.health", s.HEALTH)
    if udp and health.type != "none" and hm is not None:
        w.fail(f"{path}.health.type", hm.get("type"), "udp listeners support only 'none'")
    return health


def _backends(w: Walker, m: dict[str, Node], node: Node, path: str,
              required: bool = True) -> list[Backend]:
    backends: list[Backend] = []
    bnode = m.get("backends")
    if bnode is None or bnode.value is None:
        if required:
            w.issues.append(ConfigIssue(f"{path}.backends", node.line,
                                        "is required (a list of {address, weight})"))
        return backends
    if not isinstance(bnode.value, list):
        w.fail(f"{path}.backends", bnode, f"expected a list, got {kind_of(bnode.value)}")
        return backends
    seen: set[tuple[str, int]] = set()
    for j, b in enumerate(bnode.value):
        bpath = f"{path}.backends[{j}]"
        if isinstance(b.value, str):
            b = Node({"address": b}, b.line)
        bm = w.mapping(b, bpath, s.BACKEND.names)
        if bm is None:
            continue
        before = len(w.issues)
        given = w.scalars(bm, bpath, s.BACKEND)
        if len(w.issues) > before or "address" not in given:
            continue
        addr = given["address"]
        if addr in seen:
            w.fail(f"{bpath}.address", bm.get("address"), "duplicate backend address")
        seen.add(addr)
        backends.append(Backend(host=addr[0], port=addr[1], weight=given.get("weight", 1)))
    return backends


def _http(w: Walker, m: dict[str, Node], path: str, protocol: Proto, given: dict[str, Any],
          backends: list[Backend], health: HealthSpec, passive: PassiveSpec) -> HttpSpec:
    pools: list[Pool] = []
    if backends:
        # Shorthand: backends on the listener itself make a pool named "default".
        speaks = given.get("backend_protocol", "http1")
        pools.append(Pool("default", given.get("balance", "round_robin"), tuple(backends),
                          health, passive, BackendTls() if speaks == "h2" else None,
                          speaks))
    pools += _pools(w, m, path, bool(backends))
    names = {p.name for p in pools}
    default_pool = given.get("default_pool", "default" if backends else None)
    if default_pool is not None and default_pool not in names:
        w.fail(f"{path}.default_pool", m.get("default_pool"),
               f"no pool named {default_pool!r} (pools: {', '.join(sorted(names)) or 'none'})")
    routes = _routes(w, m, path, names)
    limits = w.build(HttpLimits(), w.section(m, "limits", path, s.LIMITS), f"{path}.limits",
                     s.LIMITS)
    return HttpSpec(routes=tuple(routes), pools=tuple(pools), default_pool=default_pool,
                    tls=tuple(_tls(w, m, path, protocol)), limits=limits,
                    **{k: given[k] for k in ("trusted_proxies", "access_log",
                                             "backend_keepalive", "http2", "h2c")
                       if k in given})


def _pools(w: Walker, m: dict[str, Node], path: str, shorthand: bool) -> list[Pool]:
    pnode = m.get("pools")
    if pnode is None or pnode.value is None:
        return []
    pm = w.mapping(pnode, f"{path}.pools", set(pnode.value) if isinstance(pnode.value, dict)
                   else set())
    out: list[Pool] = []
    for pname, sub in (pm or {}).items():
        ppath = f"{path}.pools.{pname}"
        try:
            values.name(pname)
        except ValueError as e:
            w.fail(ppath, sub, str(e))
            continue
        if pname == "default" and shorthand:
            w.fail(ppath, sub, "'default' is the pool of the listener's own backends")
            continue
        sm = w.mapping(sub, ppath, s.POOL.names)
        if sm is None:
            continue
        given = w.scalars(sm, ppath, s.POOL)
        protocol = given.get("protocol", "http1")
        tls = _backend_tls(w, sm, ppath)
        if protocol == "h2" and tls is None:
            tls = BackendTls()  # h2 is HTTP/2 over TLS
        out.append(Pool(
            name=pname, balance=given.get("balance", "round_robin"),
            backends=tuple(_backends(w, sm, sub, ppath)), health=_health(w, sm, ppath,
                                                                         HealthSpec()),
            passive=w.build(PassiveSpec(), w.section(sm, "passive", ppath, s.PASSIVE),
                            f"{ppath}.passive", s.PASSIVE),
            tls=tls, protocol=protocol))
    return out


def _routes(w: Walker, m: dict[str, Node], path: str, pools: set[str]) -> list[Route]:
    routes: list[Route] = []
    items = w.nodes(m, "routes", path)
    for i, item in enumerate(items or []):
        rpath = f"{path}.routes[{i}]"
        rm = w.mapping(item, rpath, s.ROUTE.names)
        if rm is None:
            continue
        host = w.get(rm, s.ROUTE.key("host"), rpath)
        host_given = rm.get("host") is not None and rm["host"].value is not None
        pnode = rm.get("paths")
        if pnode is None or not isinstance(pnode.value, list):
            w.fail(f"{rpath}.paths", pnode or item, "expected a list of {path, type, pool}")
            continue
        rules: list[PathRule] = []
        for j, pitem in enumerate(pnode.value):
            ppath = f"{rpath}.paths[{j}]"
            pm = w.mapping(pitem, ppath, s.PATH_RULE.names)
            if pm is None:
                continue
            before = len(w.issues)
            rule = w.scalars(pm, ppath, s.PATH_RULE)
            pool = rule.get("pool")
            if pool is not None and pool not in pools:
                w.fail(f"{ppath}.pool", pm.get("pool"), f"no pool named {pool!r} "
                       f"(pools: {', '.join(sorted(pools)) or 'none'})")
            if len(w.issues) == before:
                rules.append(PathRule(rule.get("path", "/"), rule.get("type", "Prefix"),
                                      rule["pool"]))
        if host is not None or not host_given:
            routes.append(Route(host or "", tuple(rules)))
    for conflict in route_conflicts(routes):
        w.fail(f"{path}.routes", m.get("routes"), conflict)
    return routes


def _read_pem(w: Walker, node: Node | None, key: str, path: str) -> bytes | None:
    if node is None or not isinstance(node.value, str):
        w.fail(f"{path}.{key}", node, "is required (a path to a PEM file)")
        return None
    try:
        with open(node.value, "rb") as f:
            return f.read()
    except OSError as e:
        w.fail(f"{path}.{key}", node, f"cannot read {node.value}: {e.strerror}")
        return None


def _tls(w: Walker, m: dict[str, Node], path: str, protocol: Proto) -> list[TlsCert]:
    certs: list[TlsCert] = []
    tnode = m.get("tls")
    if tnode is None or tnode.value is None:
        if protocol == Proto.HTTPS:
            w.fail(f"{path}.tls", m.get("protocol"), "an https listener needs at least one "
                   "certificate: tls: [{hosts, cert, key}]")
        return certs
    if protocol != Proto.HTTPS:
        w.fail(f"{path}.tls", tnode, "is only for https listeners")
        return certs
    if not isinstance(tnode.value, list) or not tnode.value:
        w.fail(f"{path}.tls", tnode, "expected a list of {hosts, cert, key}")
        return certs
    for i, item in enumerate(tnode.value):
        tpath = f"{path}.tls[{i}]"
        tm = w.mapping(item, tpath, s.TLS_CERT.names)
        if tm is None:
            continue
        hosts = w.items(tm, s.TLS_CERT.list_of("hosts"), tpath)
        cert = _read_pem(w, tm.get("cert"), "cert", tpath)
        key = _read_pem(w, tm.get("key"), "key", tpath)
        if cert is None or key is None:
            continue
        cert_path, key_path = tm["cert"].value, tm["key"].value
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as e:
            w.fail(f"{tpath}.cert", tm.get("cert"), f"{cert_path} and {key_path} are not a "
                   f"matching certificate and key ({e.reason or e})")
            continue
        fingerprint = hashlib.sha256(cert + b"\0" + key).hexdigest()[:16]
        certs.append(TlsCert(tuple(hosts), cert_path, key_path, fingerprint))
    return certs


def _backend_tls(w: Walker, m: dict[str, Node], path: str) -> BackendTls | None:
    if "tls" not in m or m["tls"].value is None:
        return None
    if m["tls"].value is True:
        return BackendTls()
    tpath = f"{path}.tls"
    tm = w.mapping(m["tls"], tpath, s.BACKEND_TLS.names)
    if tm is None:
        return None
    spec = w.build(BackendTls(), tm, tpath, s.BACKEND_TLS)
    if spec.ca is not None and _read_pem(w, tm.get("ca"), "ca", tpath) is None:
        return None
    return spec


def load_text(text: str, version: int = 1, source: str = "") -> Snapshot:
    """Parse and validate config text into a Snapshot (raises ConfigError)."""
    with cycle_collection_paused():
        return build_snapshot(parse_yaml(text, source), version, source)


def load_file(path: str, version: int = 1) -> Snapshot:
    """Read, parse and validate a config file into a Snapshot (raises ConfigError)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)  # a larger file is refused unread
    except OSError as e:
        raise ConfigError([ConfigIssue("", 0, f"cannot read: {e.strerror}")], path) from e
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigIssue("", 0, f"not UTF-8 text: {e.reason}")], path) from e
    return load_text(text, version, path)
