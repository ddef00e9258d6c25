"""Kubernetes objects -> what edgelb forwards. Pure: plain dicts (as the API serves them)
and the cluster spec in; listeners, VIP allocations, desired status and problems out.

* A Service of type LoadBalancer whose ``spec.loadBalancerClass`` is ours (or that has no
  class, with ``default_class``) gets a VIP: the one it asks for (``spec.loadBalancerIP``
  or the ``edgelb.io/address`` annotation) or the next free one; services with the same
  ``edgelb.io/shared-vip`` annotation share one when their ports do not collide. Each port
  becomes a listener on VIP:port whose backends are the Ready, schedulable nodes'
  InternalIP:nodePort. Node health is the Ready condition plus passive ejection.
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
from dataclasses import dataclass, field
from typing import Any

from ..model import (
    Backend,
    ClusterSpec,
    HealthSpec,
    HttpSpec,
    Listener,
    PathRule,
    Pool,
    Route,
    TlsCert,
)
from .ipam import AddressTaken, Ipam, NotInPool, PoolExhausted

Obj = dict[str, Any]

CONTROLLER = "edgelb.io/ingress"
ADDRESS_ANNOTATION = "edgelb.io/address"
SHARED_ANNOTATION = "edgelb.io/shared-vip"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


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
    addresses: dict[str, str]  # service ns/name -> VIP
    status: dict[tuple[str, str, str], list[str]]  # (kind, ns, name) -> ingress IPs
    problems: list[Problem]
    tls_files: dict[str, bytes]  # path -> PEM content the shell must write first


def key(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace", "")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def node_address(node: Obj) -> str | None:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address"))
    return None


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


def _endpoints(svc: Obj, port: Obj, slices: Iterable[Obj]) -> list[tuple[str, int]]:
    """Ready pod addresses and target ports of one service port, from EndpointSlices."""
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
                out.add((str(addr), int(ports[0]["port"])))
    return sorted(out)


def _created(obj: Obj) -> tuple[str, str]:
    return (str(_meta(obj).get("creationTimestamp", "")), key(obj))


def translate(cluster: Cluster, spec: ClusterSpec, ipam: Ipam) -> Translation:
    """Everything edgelb forwards for ``cluster``; ``ipam`` is updated in place."""
    problems: list[Problem] = []
    status: dict[tuple[str, str, str], list[str]] = {}
    listeners: list[Listener] = []
    nodes = sorted(cluster.nodes.values(), key=lambda n: _meta(n).get("name", ""))
    usable = [(n, node_address(n)) for n in nodes if node_usable(n)]
    usable_nodes = [(str(_meta(n).get("name")), ip) for n, ip in usable if ip]
    slices = list(cluster.slices.values())
    # One tuple of node Backends shared by every nodePort listener (the nodePort is on
    # the listener): services x nodes pairs would be millions of objects at scale.
    all_nodes = tuple(Backend(ip, 0) for _, ip in usable_nodes)

    # Release the addresses of services that are gone (or no longer ours) before
    # allocating: a service created in the same rebuild may take one of them.
    ipam.retain([key(svc) for svc in cluster.services.values() if ours(svc, spec)])
    for svc in sorted(cluster.services.values(), key=_created):
        if not ours(svc, spec):
            continue
        skey = key(svc)
        meta, s = _meta(svc), svc.get("spec") or {}
        ann = meta.get("annotations") or {}
        ports = [p for p in s.get("ports") or [] if p.get("nodePort")]
        pset = [(str(p.get("protocol", "TCP")).lower(), int(p["port"])) for p in ports]
        requested = ann.get(ADDRESS_ANNOTATION) or s.get("loadBalancerIP") or None
        try:
            vip = ipam.allocate(skey, pset, requested, ann.get(SHARED_ANNOTATION, ""))
        except (PoolExhausted, AddressTaken, NotInPool) as e:
            reason = {PoolExhausted: "AllocationFailed", AddressTaken: "AddressTaken",
                      NotInPool: "AddressNotInPool"}[type(e)]
            problems.append(Problem("Service", meta.get("namespace", ""), meta.get("name", ""),
                                    reason, str(e)))
            continue
        status[("Service", meta.get("namespace", ""), meta.get("name", ""))] = [vip]
        local = s.get("externalTrafficPolicy") == "Local"
        local_nodes = _local_nodes(svc, slices) if local else set()
        hc_port = int(s.get("healthCheckNodePort") or 0)
        for p in ports:
            proto = str(p.get("protocol", "TCP")).lower()
            if proto not in ("tcp", "udp"):
                problems.append(Problem("Service", meta.get("namespace", ""),
                                        meta.get("name", ""), "UnsupportedProtocol",
                                        f"port {p['port']}: {p.get('protocol')} is not served"))
                continue
            backends = all_nodes if not local else tuple(
                Backend(ip, 0) for name, ip in usable_nodes if name in local_nodes)
            if local and hc_port:
                health = HealthSpec(type="http", path="/healthz", port=hc_port, interval=1.0,
                                    timeout=0.5, rise=1, fall=2)
            else:
                # A node's health is its Ready condition (from the API) plus passive
                # ejection on failed connects: probing every nodePort of every service on
                # every node would be services x nodes probes for what one condition says.
                health = HealthSpec(type="none")
            listeners.append(Listener(
                name=f"{skey}:{p['port']}/{proto}", bind=(vip, int(p["port"])),
                protocol=proto, backends=backends, health=health,
                balance="maglev" if proto == "udp" else "round_robin",
                backend_port=int(p["nodePort"])))

    ing_listeners, ing_status, ing_problems, tls_files = _ingresses(
        cluster, spec, usable_nodes, slices)
    listeners += ing_listeners
    status.update(ing_status)
    problems += ing_problems
    return Translation(listeners, dict(ipam), status, problems, tls_files)


def seed_ipam(cluster: Cluster, spec: ClusterSpec, ipam: Ipam) -> None:
    """Give each of our services the address its status already shows (when it is in a
    pool), so that a restart hands out exactly what the previous run did."""
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
        try:
            ipam.allocate(key(svc), pset, ips[0], ann.get(SHARED_ANNOTATION, ""))
        except (PoolExhausted, AddressTaken, NotInPool):
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


def _ingresses(cluster: Cluster, spec: ClusterSpec, nodes: list[tuple[str, str]],
               slices: list[Obj]) -> tuple[list[Listener], dict[tuple[str, str, str],
                                                                 list[str]],
                                           list[Problem], dict[str, bytes]]:
    problems: list[Problem] = []
    if spec.ingress_http is None and spec.ingress_https is None:
        return [], {}, problems, {}
    classes, is_default = _our_classes(cluster, spec)
    classes.add(spec.ingress_class)
    pools: dict[str, Pool] = {}
    routes: list[Route] = []
    claimed: dict[tuple[str, str, str], str] = {}
    default_pool: str | None = None
    certs: list[TlsCert] = []
    tls_files: dict[str, bytes] = {}
    status: dict[tuple[str, str, str], list[str]] = {}
    vips = [a[0] for a in (spec.ingress_http, spec.ingress_https) if a is not None]

    def pool_for(ing: Obj, backend: Obj) -> str | None:
        svc_ref = backend.get("service") or {}
        ns = _meta(ing).get("namespace", "")
        svc = cluster.services.get(f"{ns}/{svc_ref.get('name')}")
        if svc is None:
            problems.append(Problem("Ingress", ns, _meta(ing).get("name", ""),
                                    "ServiceNotFound", f"service {svc_ref.get('name')!r} "
                                    f"does not exist"))
            return None
        want = svc_ref.get("port") or {}
        port = next((p for p in (svc.get("spec") or {}).get("ports") or []
                     if p.get("port") == want.get("number") or
                     (want.get("name") and p.get("name") == want.get("name"))), None)
        if port is None:
            problems.append(Problem("Ingress", ns, _meta(ing).get("name", ""),
                                    "PortNotFound", f"service {svc_ref.get('name')!r} has no "
                                    f"port {want.get('number') or want.get('name')!r}"))
            return None
        name = f"{ns}/{svc_ref.get('name')}:{port.get('port')}"
        if name in pools:
            return name
        if spec.direct_endpoints:
            backends = tuple(Backend(ip, p) for ip, p in _endpoints(svc, port, slices))
        elif port.get("nodePort"):
            backends = tuple(Backend(ip, int(port["nodePort"])) for _, ip in nodes)
        else:
            problems.append(Problem("Ingress", ns, _meta(ing).get("name", ""), "NoNodePort",
                                    f"service {svc_ref.get('name')!r} has no nodePort "
                                    "(use type NodePort, or direct_endpoints)"))
            return None
        pools[name] = Pool(name, "round_robin", backends, HealthSpec(type="none"))
        return name

    for ing in sorted(cluster.ingresses.values(), key=_created):
        meta, s = _meta(ing), ing.get("spec") or {}
        cls = s.get("ingressClassName") or (meta.get("annotations") or {}).get(
            "kubernetes.io/ingress.class")
        if not (cls in classes or (cls is None and is_default)):
            continue
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        status[("Ingress", ns, name)] = vips
        if s.get("defaultBackend") and default_pool is None:
            default_pool = pool_for(ing, s["defaultBackend"])
        for rule in s.get("rules") or []:
            host = str(rule.get("host") or "").lower()
            rules: list[PathRule] = []
            for path in (rule.get("http") or {}).get("paths") or []:
                ptype = path.get("pathType") or "ImplementationSpecific"
                ppath = path.get("path") or "/"
                claim = (host, ppath.rstrip("/") if ptype != "Exact" else ppath, ptype)
                if claim in claimed:
                    problems.append(Problem("Ingress", ns, name, "RuleConflict",
                                            f"host {host or '*'!r} path {ppath!r} is already "
                                            f"served by the older {claimed[claim]}"))
                    continue
                pool = pool_for(ing, path.get("backend") or {})
                if pool is None:
                    continue
                claimed[claim] = f"{ns}/{name}"
                rules.append(PathRule(ppath, ptype, pool))
            if rules:
                routes.append(Route(host, tuple(rules)))
        for tls in s.get("tls") or []:
            secret = cluster.secrets.get(f"{ns}/{tls.get('secretName')}")
            data = (secret or {}).get("data") or {}
            if secret is None or "tls.crt" not in data or "tls.key" not in data:
                problems.append(Problem("Ingress", ns, name, "SecretNotFound",
                                        f"TLS secret {tls.get('secretName')!r} is missing or "
                                        "not kubernetes.io/tls"))
                continue
            crt = base64.b64decode(data["tls.crt"])
            pkey = base64.b64decode(data["tls.key"])
            digest = hashlib.sha256(crt + b"\0" + pkey).hexdigest()[:16]
            crt_path = f"{spec.tls_dir}/{ns}_{tls.get('secretName')}_{digest}.crt"
            key_path = f"{spec.tls_dir}/{ns}_{tls.get('secretName')}_{digest}.key"
            tls_files[crt_path], tls_files[key_path] = crt, pkey
            hosts = tuple(str(h).lower() for h in tls.get("hosts") or [])
            certs.append(TlsCert(hosts, crt_path, key_path, digest))

    listeners: list[Listener] = []
    http = HttpSpec(routes=tuple(routes), pools=tuple(pools.values()),
                    default_pool=default_pool)
    if spec.ingress_http is not None:
        listeners.append(Listener(name="ingress-http", bind=spec.ingress_http,
                                  protocol="http", http=http))
    if spec.ingress_https is not None and certs:
        listeners.append(Listener(name="ingress-https", bind=spec.ingress_https,
                                  protocol="https",
                                  http=HttpSpec(routes=http.routes, pools=http.pools,
                                                default_pool=default_pool,
                                                tls=tuple(certs))))
    return listeners, status, problems, tls_files
