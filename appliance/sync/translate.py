"""Kubernetes objects -> what edgelb forwards. Pure: plain dicts (as the API serves them)
and the cluster spec in; listeners, VIP allocations, desired status and problems out.

* A Service of type LoadBalancer whose ``spec.loadBalancerClass`` is ours (or that has no
  class, with ``default_class``) gets a VIP of each IP family it asks for
  (``spec.ipFamilies`` under ``spec.ipFamilyPolicy``): the one it requests
  (``spec.loadBalancerIP``, or the ``edgelb.io/address`` annotation, a comma-separated
  list with one address per family) or the next free one; services with the same
  ``edgelb.io/shared-vip`` annotation share one when their ports do not collide. Each port
  becomes a listener per VIP whose backends are the Ready, schedulable nodes'
  InternalIP:nodePort of the VIP's family (a node without one is left out, and says so,
  unless ``cross_family``). Node health is the Ready condition plus passive ejection.
* ``externalTrafficPolicy: Local``: only nodes with a ready endpoint of the service (by
  the EndpointSlices' nodeName), health-checked on ``healthCheckNodePort`` /healthz.
* Ingresses of our IngressClass (controller ``edgelb.io/ingress``; the class marked
  default takes Ingresses without a class) become routes on the configured HTTP and
  HTTPS addresses; a rule's backend Service becomes a pool of its nodePort on the nodes
  (or its endpoints, with ``direct_endpoints``); TLS comes from ``kubernetes.io/tls``
  Secrets. The same host and path claimed twice: the oldest Ingress wins, the others are
  reported.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..model import (
    Backend,
    BackendTls,
    ClusterSpec,
    HealthSpec,
    HttpSpec,
    Listener,
    PathRule,
    Pool,
    Proto,
    Route,
    TlsCert,
)
from .ipam import AddressTaken, Ipam, NotInPool, PoolExhausted, family_of

Obj = dict[str, Any]

CONTROLLER = "edgelb.io/ingress"
ADDRESS_ANNOTATION = "edgelb.io/address"
SHARED_ANNOTATION = "edgelb.io/shared-vip"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
BACKEND_PROTOCOL_ANNOTATION = "edgelb.io/backend-protocol"
# How an Ingress's backends are spoken to: the annotation (as ingress-nginx users know
# it), else the Service port's appProtocol. TLS towards pods is not verified (their
# certificates are the cluster's own), as ingress-nginx does by default.
ANNOTATED = {"HTTP": ("http1", False), "HTTPS": ("http1", True), "GRPC": ("h2c", False),
             "GRPCS": ("h2", True), "H2C": ("h2c", False), "H2": ("h2", True)}
APP_PROTOCOLS = {"kubernetes.io/h2c": ("h2c", False), "https": ("http1", True),
                 "kubernetes.io/wss": ("http1", True), "http": ("http1", False),
                 "kubernetes.io/ws": ("http1", False)}
FAMILIES = {"IPv4": 4, "IPv6": 6}
ALLOCATION_ERRORS = {PoolExhausted: "AllocationFailed", AddressTaken: "AddressTaken",
                     NotInPool: "AddressNotInPool"}


@dataclass(frozen=True)
class Problem:
    """Something the cluster asks for that edgelb cannot do: a Kubernetes Event and a log
    line on ``kind``/``namespace``/``name``."""

    kind: str
    namespace: str
    name: str
    reason: str
    message: str


@dataclass
class Cluster:
    """The objects sync has seen, by kind, each keyed by namespace/name."""

    nodes: dict[str, Obj] = field(default_factory=dict)
    services: dict[str, Obj] = field(default_factory=dict)
    slices: dict[str, Obj] = field(default_factory=dict)
    ingresses: dict[str, Obj] = field(default_factory=dict)
    classes: dict[str, Obj] = field(default_factory=dict)
    secrets: dict[str, Obj] = field(default_factory=dict)


@dataclass
class Translation:
    listeners: list[Listener]
    addresses: dict[str, tuple[str, ...]]  # service ns/name -> its VIPs, by family
    status: dict[tuple[str, str, str], list[str]]  # (kind, ns, name) -> ingress IPs
    problems: list[Problem]
    tls_files: dict[str, bytes]  # path -> PEM content the shell must write first


def key(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace", "")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def node_addresses(node: Obj) -> dict[int, str]:
    """A node's first InternalIP of each IP family."""
    out: dict[int, str] = {}
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            try:
                out.setdefault(family_of(str(a.get("address"))), str(a.get("address")))
            except ValueError:
                continue
    return out


@dataclass(frozen=True)
class NodeSet:
    """The usable nodes as backends of one IP family: (name, address) pairs, the same
    as node Backends (shared by every nodePort listener of the family), and the nodes
    left out, each as "node: why"."""

    nodes: tuple[tuple[str, str], ...]
    backends: tuple[Backend, ...]
    left_out: tuple[str, ...]


def node_set(usable: list[tuple[str, dict[int, str]]], family: int,
             cross_family: bool) -> NodeSet:
    """``usable`` (name, addresses by family) as backends of ``family``."""
    nodes: list[tuple[str, str]] = []
    left_out: list[str] = []
    for name, addrs in usable:
        if family in addrs:
            nodes.append((name, addrs[family]))
        elif cross_family and addrs:
            nodes.append((name, next(iter(addrs.values()))))
        elif addrs:
            left_out.append(f"{name}: no IPv{family} InternalIP")
        else:
            left_out.append(f"{name}: no InternalIP")
    return NodeSet(tuple(nodes), tuple(Backend(ip, 0) for _, ip in nodes), tuple(left_out))


def node_usable(node: Obj) -> bool:
    """Ready, schedulable (not cordoned), not excluded from external load balancers."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    if EXCLUDE_LABEL in (_meta(node).get("labels") or {}):
        return False
    if _meta(node).get("deletionTimestamp"):
        return False
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def relevant(kind: str, obj: Obj) -> Any:
    """What of an object translation reads: a change outside it (a node's heartbeat, the
    status edgelb itself wrote, a new resourceVersion) needs no rebuild."""
    meta = _meta(obj)
    head = (meta.get("labels"), meta.get("annotations"), meta.get("deletionTimestamp"),
            meta.get("creationTimestamp"))
    if kind == "nodes":
        st = obj.get("status") or {}
        ready = [c.get("status") for c in st.get("conditions") or [] if c.get("type") == "Ready"]
        return (head, (obj.get("spec") or {}).get("unschedulable"), ready,
                [(a.get("type"), a.get("address")) for a in st.get("addresses") or []])
    if kind in ("services", "ingresses"):
        return (head, obj.get("spec"))
    return (head, {k: v for k, v in obj.items() if k not in ("metadata", "status")})


def ours(svc: Obj, spec: ClusterSpec) -> bool:
    s = svc.get("spec") or {}
    if s.get("type") != "LoadBalancer":
        return False
    cls = s.get("loadBalancerClass")
    return bool(cls == spec.load_balancer_class or (cls is None and spec.default_class))


def _local_nodes(svc: Obj, slices: Iterable[Obj]) -> set[str]:
    """Names of nodes with a ready endpoint of ``svc``."""
    ns, name = _meta(svc).get("namespace"), _meta(svc).get("name")
    out: set[str] = set()
    for sl in slices:
        m = _meta(sl)
        if m.get("namespace") != ns or (m.get("labels") or {}).get(SERVICE_NAME_LABEL) != name:
            continue
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            if ep.get("nodeName"):
                out.add(ep["nodeName"])
    return out


def _endpoints(svc: Obj, port: Obj, slices: Iterable[Obj],
               family: int | None) -> list[tuple[str, int]]:
    """Ready pod addresses (of ``family``; None: any) and target ports of one service
    port, from EndpointSlices."""
    ns, name = _meta(svc).get("namespace"), _meta(svc).get("name")
    out: set[tuple[str, int]] = set()
    for sl in slices:
        m = _meta(sl)
        if m.get("namespace") != ns or (m.get("labels") or {}).get(SERVICE_NAME_LABEL) != name:
            continue
        ports = [p for p in sl.get("ports") or [] if p.get("name", "") == port.get("name", "")]
        if not ports or ports[0].get("port") is None:
            continue
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            for addr in ep.get("addresses") or []:
                if family is None or _family_or_none(str(addr)) == family:
                    out.add((str(addr), int(ports[0]["port"])))
    return sorted(out)


def _family_or_none(address: str) -> int | None:
    try:
        return family_of(address)
    except ValueError:
        return None


def _created(obj: Obj) -> tuple[str, str]:
    return (str(_meta(obj).get("creationTimestamp", "")), key(obj))


def translate(cluster: Cluster, spec: ClusterSpec, ipam: Ipam) -> Translation:
    """Everything edgelb forwards for ``cluster``; ``ipam`` is updated in place."""
    t = _Translator(cluster, spec)
    # Release the addresses of services that are gone (or no longer ours) before
    # allocating: a service created in the same rebuild may take one of them.
    ipam.retain([key(svc) for svc in cluster.services.values() if ours(svc, spec)])
    for svc in sorted(cluster.services.values(), key=_created):
        if ours(svc, spec):
            t.service(svc, ipam)
    if spec.ingress_http or spec.ingress_https:
        t.ingresses()
    addresses: dict[str, tuple[str, ...]] = {}
    for svc_key, addr in ipam:
        addresses[svc_key] = (*addresses.get(svc_key, ()), addr)
    return Translation(t.listeners, addresses, t.status, t.problems, t.tls_files)


class _Translator:
    """What one translation accumulates: listeners, desired status, problems."""

    def __init__(self, cluster: Cluster, spec: ClusterSpec) -> None:
        self.cluster = cluster
        self.spec = spec
        self.problems: list[Problem] = []
        self.status: dict[tuple[str, str, str], list[str]] = {}
        self.listeners: list[Listener] = []
        self.tls_files: dict[str, bytes] = {}
        nodes = sorted(cluster.nodes.values(), key=lambda n: _meta(n).get("name", ""))
        usable = [(str(_meta(n).get("name")), node_addresses(n)) for n in nodes
                  if node_usable(n)]
        self.slices = list(cluster.slices.values())
        # One tuple of node Backends per family shared by every nodePort listener (the
        # nodePort is on the listener): services x nodes pairs would be millions of
        # objects at scale.
        self.nodes = {f: node_set(usable, f, spec.cross_family) for f in (4, 6)}
        # Ingresses: the pools (by name, the Service port behind each), routes and
        # certificates of the ingress listeners, and which host and path each Ingress
        # claimed (the oldest keeps a contested one).
        self.pools: dict[str, tuple[Obj, Obj, str, bool]] = {}
        self.routes: list[Route] = []
        self.claimed: dict[tuple[str, tuple[str, object]], str] = {}
        self.default_pool: str | None = None
        self.certs: list[TlsCert] = []

    def problem(self, obj: Obj, kind: str, reason: str, message: str) -> None:
        meta = _meta(obj)
        self.problems.append(Problem(kind, meta.get("namespace", ""), meta.get("name", ""),
                                     reason, message))

    # -- LoadBalancer Services -----------------------------------------------------------

    def service(self, svc: Obj, ipam: Ipam) -> None:
        """A VIP of each family ``svc`` asks for, and a listener per port and VIP, on the
        nodes' nodePorts."""
        meta, s = _meta(svc), svc.get("spec") or {}
        ann = meta.get("annotations") or {}
        ports = [p for p in s.get("ports") or [] if p.get("nodePort")]
        pset = [(str(p.get("protocol", "TCP")).lower(), int(p["port"])) for p in ports]
        vips = self.allocate(svc, ipam, pset, ann.get(SHARED_ANNOTATION, ""))
        if not vips:
            return
        self.status[("Service", meta.get("namespace", ""), meta.get("name", ""))] = vips
        for i, vip in enumerate(vips):
            self.service_listeners(svc, vip, ports, report=i == 0)

    def allocate(self, svc: Obj, ipam: Ipam, pset: list[tuple[str, int]],
                 sharing: str) -> list[str]:
        """The VIPs of ``svc`` in the order of its ``ipFamilies``, as its
        ``ipFamilyPolicy`` asks: SingleStack one, PreferDualStack one of each family the
        pools hold, RequireDualStack one of each or none. Each failure is a problem."""
        name, s = key(svc), svc.get("spec") or {}
        requested = self.requested(svc)
        if requested is None:
            ipam.release(name)
            return []
        listed = [FAMILIES[f] for f in s.get("ipFamilies") or [] if f in FAMILIES]
        if not listed:  # an API server older than dual-stack: what it asks for, or the pools'
            listed = list(requested) or [ipam.first or 4]
        policy = s.get("ipFamilyPolicy") or "SingleStack"
        want = listed[:1] if policy == "SingleStack" else \
            list(dict.fromkeys([*listed, 4, 6]))
        other = [f for f in requested if f not in want]
        if other:
            ipam.release(name)
            self.problem(svc, "Service", "AddressFamilyMismatch",
                         f"{requested[other[0]]} is IPv{other[0]}, but the service asks for "
                         f"{' and '.join(f'IPv{f}' for f in want)} ({policy})")
            return []
        if policy == "RequireDualStack" and not all(ipam.offers(f) for f in want):
            ipam.release(name)
            missing = next(f for f in want if not ipam.offers(f))
            self.problem(svc, "Service", "DualStackUnavailable",
                         f"RequireDualStack, but no address pool holds IPv{missing} "
                         "addresses: no address given")
            return []
        if policy == "PreferDualStack":
            # The families the pools hold, and any asked for by address (which fails as
            # not in a pool, and says so).
            want = [f for f in want if ipam.offers(f) or f in requested] or want[:1]
        for f in (4, 6):
            if f not in want:
                ipam.release(name, f)
        vips: list[str] = []
        for f in want:
            try:
                vips.append(ipam.allocate(name, f, pset, requested.get(f), sharing))
            except (PoolExhausted, AddressTaken, NotInPool) as e:
                self.problem(svc, "Service", ALLOCATION_ERRORS[type(e)],
                             f"IPv{f}: {e}" if len(want) > 1 else str(e))
                if policy == "RequireDualStack":
                    ipam.release(name)
                    return []
        return vips

    def requested(self, svc: Obj) -> dict[int, str] | None:
        """The addresses ``svc`` requests, by family (``edgelb.io/address``: a comma-
        separated list, one per family; else ``spec.loadBalancerIP``); None (and a
        problem) when the request cannot be read."""
        ann = _meta(svc).get("annotations") or {}
        text = ann.get(ADDRESS_ANNOTATION) or (svc.get("spec") or {}).get("loadBalancerIP")
        out: dict[int, str] = {}
        for part in str(text or "").split(","):
            if not part.strip():
                continue
            try:
                f = family_of(part.strip())
            except ValueError:
                self.problem(svc, "Service", "InvalidAddress",
                             f"{part.strip()!r} is not an IP address")
                return None
            if f in out:
                self.problem(svc, "Service", "InvalidAddress",
                             f"two IPv{f} addresses requested ({out[f]}, {part.strip()}): "
                             "one per family")
                return None
            out[f] = part.strip()
        return out

    def service_listeners(self, svc: Obj, vip: str, ports: list[Obj], report: bool) -> None:
        """A listener per port of ``svc`` on ``vip`` (ports it cannot serve are problems
        when ``report``: once per service)."""
        s = svc.get("spec") or {}
        family = family_of(vip)
        nodes = self.nodes[family]
        backends = nodes.backends
        health = HealthSpec(type="none")
        if s.get("externalTrafficPolicy") == "Local":
            on = _local_nodes(svc, self.slices)
            backends = tuple(Backend(ip, 0) for name, ip in nodes.nodes if name in on)
            hc_port = int(s.get("healthCheckNodePort") or 0)
            if hc_port:
                health = HealthSpec(type="http", path="/healthz", port=hc_port,
                                    interval=1.0, timeout=0.5, rise=1, fall=2)
        # Otherwise a node's health is its Ready condition (from the API) plus passive
        # ejection on failed connects: probing every nodePort of every service on every
        # node would be services x nodes probes for what one condition says.
        for p in ports:
            proto = str(p.get("protocol", "TCP")).lower()
            if proto not in ("tcp", "udp"):
                if report:
                    self.problem(svc, "Service", "UnsupportedProtocol",
                                 f"port {p['port']}: {p.get('protocol')} is not served")
                continue
            # IPv6 listeners are named as netstat names their sockets (tcp6), so that a
            # dual-stack Service's two listeners of one port differ.
            self.listeners.append(Listener(
                name=f"{key(svc)}:{p['port']}/{proto}{'6' if family == 6 else ''}",
                bind=(vip, int(p["port"])), protocol=Proto(proto), backends=backends,
                health=health, balance="maglev" if proto == "udp" else "round_robin",
                backend_port=int(p["nodePort"]), left_out=nodes.left_out))

    # -- Ingresses -----------------------------------------------------------------------

    def ingresses(self) -> None:
        """The Ingresses of our class as routes on the ingress addresses."""
        spec = self.spec
        classes, is_default = _our_classes(self.cluster, spec)
        named = self.cluster.classes.get(spec.ingress_class)
        if named is None:
            # No IngressClass object of the configured name: the name alone is ours.
            classes.add(spec.ingress_class)
        elif spec.ingress_class not in classes:
            other = (named.get("spec") or {}).get("controller")
            self.problem(named, "IngressClass", "OtherController",
                         f"its controller is {other!r}, not {CONTROLLER!r}: edgelb leaves "
                         f"the Ingresses of class {spec.ingress_class!r} to it")
        vips = list(dict.fromkeys(a[0] for a in (*spec.ingress_http, *spec.ingress_https)))
        for ing in sorted(self.cluster.ingresses.values(), key=_created):
            meta, s = _meta(ing), ing.get("spec") or {}
            cls = s.get("ingressClassName") or (meta.get("annotations") or {}).get(
                "kubernetes.io/ingress.class")
            if cls in classes or (cls is None and is_default):
                self.status[("Ingress", meta.get("namespace", ""), meta.get("name", ""))] = vips
                self.ingress(ing)
        families = {family_of(b[0]) for b in (*spec.ingress_http, *spec.ingress_https)}
        http = {f: HttpSpec(routes=tuple(self.routes), pools=self.family_pools(f),
                            default_pool=self.default_pool) for f in families}
        for proto, binds in ((Proto.HTTP, spec.ingress_http), (Proto.HTTPS, spec.ingress_https)):
            if proto == Proto.HTTPS and not self.certs:
                continue
            for i, bind in enumerate(binds):
                f = family_of(bind[0])
                h = http[f] if proto == Proto.HTTP else replace(http[f], tls=tuple(self.certs))
                if proto == Proto.HTTP and spec.ingress_h2c:
                    h = replace(h, h2c=True)
                self.listeners.append(Listener(
                    name=f"ingress-{proto}" + (f"-{i + 1}" if i else ""), bind=bind,
                    protocol=proto, http=h,
                    left_out=() if self.spec.direct_endpoints else self.nodes[f].left_out))

    def family_pools(self, family: int) -> tuple[Pool, ...]:
        """The Ingress pools as an ingress address of ``family`` reaches them: the
        nodes' nodePorts of that family, or the pods' addresses of it."""
        out = []
        for name, (svc, port, protocol, tls) in self.pools.items():
            if self.spec.direct_endpoints:
                eps = _endpoints(svc, port, self.slices,
                                 None if self.spec.cross_family else family)
                backends = tuple(Backend(ip, p) for ip, p in eps)
            else:
                backends = tuple(Backend(ip, int(port["nodePort"]))
                                 for _, ip in self.nodes[family].nodes)
            out.append(Pool(name, "round_robin", backends, HealthSpec(type="none"),
                            tls=BackendTls(verify=False) if tls else None,
                            protocol=protocol))
        return tuple(out)

    def ingress(self, ing: Obj) -> None:
        meta, s = _meta(ing), ing.get("spec") or {}
        name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        if s.get("defaultBackend") and self.default_pool is None:
            self.default_pool = self.pool_for(ing, s["defaultBackend"])
        for rule in s.get("rules") or []:
            host = str(rule.get("host") or "").lower()
            rules: list[PathRule] = []
            for path in (rule.get("http") or {}).get("paths") or []:
                ptype = path.get("pathType") or "ImplementationSpecific"
                ppath = path.get("path") or "/"
                claim = (host, PathRule(ppath, ptype, "").match_key)
                if claim in self.claimed:
                    self.problem(ing, "Ingress", "RuleConflict",
                                 f"host {host or '*'!r} path {ppath!r} is already served by "
                                 f"the older {self.claimed[claim]}")
                    continue
                pool = self.pool_for(ing, path.get("backend") or {})
                if pool is None:
                    continue
                self.claimed[claim] = name
                rules.append(PathRule(ppath, ptype, pool))
            if rules:
                self.routes.append(Route(host, tuple(rules)))
        for tls in s.get("tls") or []:
            self.certificate(ing, tls)

    def pool_for(self, ing: Obj, backend: Obj) -> str | None:
        """The pool of an Ingress backend (its Service's nodePort on the nodes, or its
        endpoints), made once per Service port; None (and a problem) when there is none."""
        svc_ref = backend.get("service") or {}
        ns = _meta(ing).get("namespace", "")
        svc = self.cluster.services.get(f"{ns}/{svc_ref.get('name')}")
        if svc is None:
            self.problem(ing, "Ingress", "ServiceNotFound",
                         f"service {svc_ref.get('name')!r} does not exist")
            return None
        want = svc_ref.get("port") or {}
        port = next((p for p in (svc.get("spec") or {}).get("ports") or []
                     if p.get("port") == want.get("number") or
                     (want.get("name") and p.get("name") == want.get("name"))), None)
        if port is None:
            self.problem(ing, "Ingress", "PortNotFound", f"service {svc_ref.get('name')!r} "
                         f"has no port {want.get('number') or want.get('name')!r}")
            return None
        name = f"{ns}/{svc_ref.get('name')}:{port.get('port')}"
        if name in self.pools:
            return name
        if not self.spec.direct_endpoints and not port.get("nodePort"):
            self.problem(ing, "Ingress", "NoNodePort", f"service {svc_ref.get('name')!r} has "
                         "no nodePort (use type NodePort, or direct_endpoints)")
            return None
        annotated = str((_meta(ing).get("annotations") or {}).get(
            BACKEND_PROTOCOL_ANNOTATION, "")).upper()
        protocol, tls = ANNOTATED.get(annotated) or APP_PROTOCOLS.get(
            str(port.get("appProtocol", "")), ("http1", False))
        if annotated and annotated not in ANNOTATED:
            self.problem(ing, "Ingress", "UnknownBackendProtocol",
                         f"{BACKEND_PROTOCOL_ANNOTATION}: {annotated!r} is not one of "
                         f"{', '.join(ANNOTATED)}: HTTP/1.1 is spoken")
        self.pools[name] = (svc, port, protocol, tls)
        return name

    def certificate(self, ing: Obj, tls: Obj) -> None:
        """An Ingress TLS entry: its Secret's certificate, written under ``tls_dir``."""
        ns = _meta(ing).get("namespace", "")
        secret = self.cluster.secrets.get(f"{ns}/{tls.get('secretName')}")
        data = (secret or {}).get("data") or {}
        if secret is None or "tls.crt" not in data or "tls.key" not in data:
            self.problem(ing, "Ingress", "SecretNotFound", f"TLS secret "
                         f"{tls.get('secretName')!r} is missing or not kubernetes.io/tls")
            return
        crt = base64.b64decode(data["tls.crt"])
        pkey = base64.b64decode(data["tls.key"])
        digest = hashlib.sha256(crt + b"\0" + pkey).hexdigest()[:16]
        base = f"{self.spec.tls_dir}/{ns}_{tls.get('secretName')}_{digest}"
        self.tls_files[f"{base}.crt"], self.tls_files[f"{base}.key"] = crt, pkey
        hosts = tuple(str(h).lower() for h in tls.get("hosts") or [])
        self.certs.append(TlsCert(hosts, f"{base}.crt", f"{base}.key", digest))


def seed_ipam(cluster: Cluster, spec: ClusterSpec, ipam: Ipam) -> None:
    """Give each of our services the addresses its status already shows (those in a
    pool, one per family), so that a restart hands out exactly what the previous run
    did."""
    for svc in sorted(cluster.services.values(), key=_created):
        if not ours(svc, spec):
            continue
        lb = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips = [i.get("ip") for i in lb if i.get("ip")]
        if not ips:
            continue
        s, ann = svc.get("spec") or {}, _meta(svc).get("annotations") or {}
        pset = [(str(p.get("protocol", "TCP")).lower(), int(p["port"]))
                for p in s.get("ports") or [] if p.get("nodePort")]
        for ip in ips:
            try:
                ipam.allocate(key(svc), family_of(ip), pset, ip, ann.get(SHARED_ANNOTATION, ""))
            except (PoolExhausted, AddressTaken, NotInPool, ValueError):
                continue


def _our_classes(cluster: Cluster, spec: ClusterSpec) -> tuple[set[str], bool]:
    """Names of IngressClasses of our controller, and whether one of them is the default."""
    names: set[str] = set()
    default = False
    for ic in cluster.classes.values():
        if (ic.get("spec") or {}).get("controller") == CONTROLLER:
            name = str(_meta(ic).get("name"))
            names.add(name)
            if (_meta(ic).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                default = True
    return names, default
