"""Translation of cluster objects into listeners, VIPs, status and problems (pure)."""

from __future__ import annotations

from appliance.model import ClusterSpec
from appliance.sim import objects as k8s
from appliance.sync.ipam import Ipam
from appliance.sync.translate import Cluster, key, translate

SPEC = ClusterSpec(address_pools=("192.0.2.10-192.0.2.12",),
                   ingress_http=(("192.0.2.100", 80),), ingress_https=(("192.0.2.100", 443),),
                   tls_dir="/run/t")


def cluster(*objs: dict) -> Cluster:  # type: ignore[type-arg]
    c = Cluster()
    table = {"Node": c.nodes, "Service": c.services, "EndpointSlice": c.slices,
             "Ingress": c.ingresses, "IngressClass": c.classes, "Secret": c.secrets}
    for o in objs:
        table[o["kind"]][key(o)] = o
    return c


NODES = [k8s.node("n1", "10.0.0.1"), k8s.node("n2", "10.0.0.2"),
         k8s.node("n3", "10.0.0.3", ready=False), k8s.node("n4", "10.0.0.4", unschedulable=True)]


def test_load_balancer_service_gets_a_vip_and_ready_nodes() -> None:
    c = cluster(*NODES, k8s.service("web", [(80, 30080), (53, 30053, "UDP")]))
    t = translate(c, SPEC, Ipam(SPEC.address_pools))
    assert t.addresses == {"default/web": ("192.0.2.10",)}
    tcp, udp = (lst for lst in t.listeners if lst.http is None)
    assert tcp.bind == ("192.0.2.10", 80) and tcp.protocol == "tcp"
    assert [tcp.backend_key(b) for b in tcp.backends] == ["10.0.0.1:30080", "10.0.0.2:30080"]
    assert udp.protocol == "udp" and udp.backend_address(udp.backends[0]) == ("10.0.0.1",
                                                                               30053)
    # Every nodePort listener shares one tuple of node backends.
    assert tcp.backends is udp.backends
    assert t.status[("Service", "default", "web")] == ["192.0.2.10"]


def test_class_selection() -> None:
    c = cluster(*NODES, k8s.service("other", [(80, 30080)], lb_class="x.io/lb"),
                k8s.service("noclass", [(81, 30081)], lb_class=None),
                k8s.service("np", [(82, 30082)], kind="NodePort"))
    assert translate(c, SPEC, Ipam(SPEC.address_pools)).addresses == {}
    spec = ClusterSpec(address_pools=SPEC.address_pools, default_class=True)
    assert list(translate(c, spec, Ipam(spec.address_pools)).addresses) == ["default/noclass"]


def test_external_traffic_policy_local() -> None:
    c = cluster(*NODES, k8s.service("loc", [(80, 30080)], local=True, health_port=32000),
                k8s.endpoint_slice("loc", [("10.1.0.5", "n2", True), ("10.1.0.6", "n1", False)]))
    (lst,) = (lst for lst in translate(c, SPEC, Ipam(SPEC.address_pools)).listeners
              if lst.http is None)
    assert [b.host for b in lst.backends] == ["10.0.0.2"]
    assert (lst.health.type, lst.health.port, lst.health.path) == ("http", 32000, "/healthz")


def test_requested_address_shared_vip_and_exhaustion() -> None:
    c = cluster(*NODES,
                k8s.service("a", [(80, 30080)], annotations={"edgelb.io/shared-vip": "s"}),
                k8s.service("b", [(443, 30443)], annotations={"edgelb.io/shared-vip": "s"}),
                k8s.service("c", [(80, 30081)], address="192.0.2.12"),
                k8s.service("d", [(80, 30082)], address="192.0.2.12"),
                k8s.service("e", [(80, 30083)]), k8s.service("f", [(80, 30084)]))
    t = translate(c, SPEC, Ipam(SPEC.address_pools))
    assert t.addresses["default/a"] == t.addresses["default/b"] == ("192.0.2.10",)
    assert t.addresses["default/c"] == ("192.0.2.12",)
    assert t.addresses["default/e"] == ("192.0.2.11",)
    reasons = {(p.name, p.reason) for p in t.problems}
    assert reasons == {("d", "AddressTaken"), ("f", "AllocationFailed")}


def test_deleted_service_releases_its_address_and_ipam_is_stable() -> None:
    ipam = Ipam(SPEC.address_pools)
    c = cluster(*NODES, k8s.service("a", [(80, 30080)]), k8s.service("b", [(80, 30081)]))
    first = translate(c, SPEC, ipam).addresses
    del c.services["default/a"]
    again = translate(c, SPEC, ipam).addresses
    assert again == {"default/b": first["default/b"]}
    c.services["default/z"] = k8s.service("z", [(80, 30089)])
    assert translate(c, SPEC, ipam).addresses["default/z"] == first["default/a"]


def test_ingress_routes_pools_tls_and_conflicts() -> None:
    c = cluster(
        *NODES, k8s.ingress_class(),
        k8s.service("api", [(80, 31080)], kind="NodePort"),
        k8s.service("web", [(80, 31081)], kind="NodePort"),
        k8s.tls_secret("foo-tls", b"CERT", b"KEY"),
        k8s.ingress("first", [("foo.example.com", "/api", "Prefix", "api", 80),
                              ("", "/", "Prefix", "web", 80)],
                    tls=[(["foo.example.com"], "foo-tls")], default_backend=("web", 80),
                    created="2026-01-01T00:00:00Z"),
        k8s.ingress("second", [("foo.example.com", "/api/", "Prefix", "web", 80)],
                    created="2026-02-01T00:00:00Z"),
        k8s.ingress("foreign", [("bar.com", "/", "Prefix", "web", 80)], cls="nginx"))
    t = translate(c, SPEC, Ipam(SPEC.address_pools))
    http, https = t.listeners
    assert http.bind == ("192.0.2.100", 80) and https.bind == ("192.0.2.100", 443)
    assert http.http is not None and https.http is not None
    routes = {(r.host, p.path): p.pool for r in http.http.routes for p in r.paths}
    assert routes == {("foo.example.com", "/api"): "default/api:80", ("", "/"): "default/web:80"}
    assert http.http.default_pool == "default/web:80"
    pool = http.http.pool("default/api:80")
    assert pool is not None and [b.key for b in pool.backends] == ["10.0.0.1:31080",
                                                                   "10.0.0.2:31080"]
    assert https.http.tls[0].hosts == ("foo.example.com",)
    assert t.tls_files[https.http.tls[0].cert] == b"CERT"
    assert [(p.name, p.reason) for p in t.problems] == [("second", "RuleConflict")]
    assert ("Ingress", "default", "foreign") not in t.status
    assert t.status[("Ingress", "default", "first")] == ["192.0.2.100"]


def test_default_ingress_class_takes_classless_ingresses_and_direct_endpoints() -> None:
    spec = ClusterSpec(ingress_http=(("192.0.2.100", 80),), direct_endpoints=True)
    c = cluster(*NODES, k8s.ingress_class("lb", default=True),
                k8s.service("api", [(80, 31080)], kind="ClusterIP"),
                k8s.endpoint_slice("api", [("10.1.0.5", "n1", True)], port=8080),
                k8s.ingress("i", [("", "/", "Prefix", "api", 80)], cls=None))
    (http,) = translate(c, spec, Ipam(())).listeners
    assert http.http is not None
    assert [b.key for b in http.http.pools[0].backends] == ["10.1.0.5:8080"]


def test_an_ingress_class_of_another_controller_is_left_to_it() -> None:
    """The configured class name is served without an IngressClass object, but an object
    of that name decides: naming another controller, its Ingresses are not ours."""
    web = k8s.service("web", [(80, 31081)], kind="NodePort")
    ing = k8s.ingress("i", [("a.com", "/", "Prefix", "web", 80)])
    alone = translate(cluster(*NODES, web, ing), SPEC, Ipam(SPEC.address_pools))
    assert ("Ingress", "default", "i") in alone.status and not alone.problems
    other = k8s.ingress_class("edgelb", controller="example.com/another-controller")
    t = translate(cluster(*NODES, other, web, ing), SPEC, Ipam(SPEC.address_pools))
    assert ("Ingress", "default", "i") not in t.status
    http = next(lst for lst in t.listeners if lst.name == "ingress-http")
    assert http.http is not None and not http.http.routes
    assert [(p.kind, p.name, p.reason) for p in t.problems] == [
        ("IngressClass", "edgelb", "OtherController")]
    assert "example.com/another-controller" in t.problems[0].message


def test_generated_scenario_translates() -> None:
    from appliance.sim.scenario import generate

    c = cluster(*generate(nodes=5, services=10, endpoints=40, ingresses=3, lb_share=0.5))
    assert (len(c.nodes), len(c.services), len(c.slices), len(c.ingresses)) == (5, 10, 10, 3)
    t = translate(c, SPEC, Ipam(["192.0.2.0/24"]))
    l4 = [lst for lst in t.listeners if lst.http is None]
    assert len(l4) == 5 and all(len(lst.backends) == 5 for lst in l4)
    http = next(lst for lst in t.listeners if lst.name == "ingress-http")
    assert http.http is not None and len(http.http.routes) == 3
    assert not t.problems


def test_a_deleted_service_frees_its_address_for_one_created_in_the_same_rebuild() -> None:
    ipam = Ipam(SPEC.address_pools)
    c = cluster(*NODES, k8s.service("old", [(80, 30080)]))
    assert translate(c, SPEC, ipam).addresses == {"default/old": ("192.0.2.10",)}
    del c.services["default/old"]
    c.services["default/new"] = k8s.service("new", [(80, 30081)])
    assert translate(c, SPEC, ipam).addresses == {"default/new": ("192.0.2.10",)}


def test_a_status_write_is_made_once_and_tried_again_when_it_failed() -> None:
    from appliance.sync.status import StatusBook

    book = StatusBook()
    svc = {"status": {"loadBalancer": {}}}
    k = ("Service", "default", "web")
    assert book.needs_write(k, svc, ["192.0.2.10"])
    assert not book.needs_write(k, svc, ["192.0.2.10"])  # pending: not written twice
    book.written(0, [k])  # it failed: the next change or echo writes it again
    assert book.needs_write(k, svc, ["192.0.2.10"])
    book.written(1, [])
    assert book.writes == 1
    done = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}
    assert not book.needs_write(k, done, ["192.0.2.10"])  # seen back: confirmed
    assert k not in book.pending


# -- dual-stack --------------------------------------------------------------------------

DUAL = ClusterSpec(address_pools=("192.0.2.10-192.0.2.11", "2001:db8::10-2001:db8::11"),
                   ingress_http=(("192.0.2.100", 80), ("2001:db8::100", 80)), tls_dir="/t")
DUAL_NODES = [k8s.node("n1", ["10.0.0.1", "fd00::1"]), k8s.node("n2", "10.0.0.2"),
              k8s.node("n3", ["fd00::3", "10.0.0.3"])]


def dual(name: str, families: list[str], policy: str, **kw: object) -> dict:  # type: ignore[type-arg]
    return k8s.service(name, [(80, 30080), (53, 30053, "UDP")], families=families,
                       policy=policy, **kw)  # type: ignore[arg-type]


def test_a_dual_stack_service_gets_a_vip_of_each_family_on_nodes_of_that_family() -> None:
    c = cluster(*DUAL_NODES, dual("web", ["IPv6", "IPv4"], "RequireDualStack"))
    t = translate(c, DUAL, Ipam(DUAL.address_pools))
    assert t.addresses == {"default/web": ("192.0.2.10", "2001:db8::10")}
    # Status in the order of ipFamilies.
    assert t.status[("Service", "default", "web")] == ["2001:db8::10", "192.0.2.10"]
    by_name = {lst.name: lst for lst in t.listeners if lst.http is None}
    assert sorted(by_name) == ["default/web:53/udp", "default/web:53/udp6",
                               "default/web:80/tcp", "default/web:80/tcp6"]
    v4, v6 = by_name["default/web:80/tcp"], by_name["default/web:80/tcp6"]
    assert v6.bind == ("2001:db8::10", 80) and v4.bind == ("192.0.2.10", 80)
    assert [b.host for b in v4.backends] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [b.host for b in v6.backends] == ["fd00::1", "fd00::3"]
    assert v6.left_out == ("n2: no IPv6 InternalIP",) and v4.left_out == ()
    assert v6.kernel_refusal is None  # same-family backends: the kernel may serve it


def test_dual_stack_policies_against_the_pools() -> None:
    v4_only = ClusterSpec(address_pools=("192.0.2.10-192.0.2.11",))
    c = cluster(*DUAL_NODES, dual("req", ["IPv4", "IPv6"], "RequireDualStack"),
                dual("pref", ["IPv4", "IPv6"], "PreferDualStack"),
                dual("six", ["IPv6"], "SingleStack"))
    t = translate(c, v4_only, Ipam(v4_only.address_pools))
    assert t.addresses == {"default/pref": ("192.0.2.10",)}
    problems = {(p.name, p.reason): p.message for p in t.problems}
    assert "no address pool holds IPv6" in problems[("req", "DualStackUnavailable")]
    assert ("six", "AllocationFailed") in problems
    assert ("Service", "default", "req") not in t.status


def test_requested_addresses_by_family() -> None:
    ipam = Ipam(DUAL.address_pools)
    c = cluster(*DUAL_NODES,
                dual("both", ["IPv4", "IPv6"], "PreferDualStack",
                     annotations={"edgelb.io/address": "2001:db8::11, 192.0.2.11"}),
                dual("lbip", ["IPv6"], "SingleStack", address="2001:db8::10"),
                dual("wrong", ["IPv4"], "SingleStack", address="2001:db8::10"),
                dual("bad", ["IPv4"], "SingleStack", annotations={"edgelb.io/address": "x"}),
                dual("twice", ["IPv4", "IPv6"], "RequireDualStack",
                     annotations={"edgelb.io/address": "192.0.2.10,192.0.2.11"}))
    t = translate(c, DUAL, ipam)
    assert t.addresses == {"default/both": ("192.0.2.11", "2001:db8::11"),
                           "default/lbip": ("2001:db8::10",)}
    reasons = {(p.name, p.reason) for p in t.problems}
    assert reasons == {("wrong", "AddressFamilyMismatch"), ("bad", "InvalidAddress"),
                       ("twice", "InvalidAddress")}
    # Single-stack again: the IPv6 address is freed for others.
    c.services["default/both"]["spec"].update(ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack")
    c.services["default/both"]["metadata"]["annotations"] = {}
    t = translate(c, DUAL, ipam)
    assert t.addresses["default/both"] == ("192.0.2.11",)
    assert ipam.address_of("default/both", 6) is None


def test_cross_family_and_local_policy_per_family() -> None:
    cross = ClusterSpec(address_pools=DUAL.address_pools, cross_family=True)
    c = cluster(*DUAL_NODES,
                dual("web", ["IPv4", "IPv6"], "RequireDualStack"),
                k8s.service("loc", [(81, 30081)], local=True, health_port=32000,
                            families=["IPv4", "IPv6"], policy="RequireDualStack"),
                k8s.endpoint_slice("loc", [("10.1.0.5", "n2", True), ("10.1.0.6", "n3", True)]))
    t = translate(c, cross, Ipam(cross.address_pools))
    by_name = {lst.name: lst for lst in t.listeners}
    v6 = by_name["default/web:80/tcp6"]
    assert [b.host for b in v6.backends] == ["fd00::1", "10.0.0.2", "fd00::3"]
    assert v6.left_out == () and v6.kernel_refusal == \
        "backends of the other IP family need user space"
    # Local: the nodes with an endpoint, each by the VIP's family (n2 reached over IPv4).
    assert [b.host for b in by_name["default/loc:81/tcp"].backends] == ["10.0.0.2", "10.0.0.3"]
    assert [b.host for b in by_name["default/loc:81/tcp6"].backends] == ["10.0.0.2", "fd00::3"]
    t = translate(c, DUAL, Ipam(DUAL.address_pools))
    by_name = {lst.name: lst for lst in t.listeners}
    assert [b.host for b in by_name["default/loc:81/tcp6"].backends] == ["fd00::3"]


def test_ingresses_are_served_on_addresses_of_both_families() -> None:
    c = cluster(*DUAL_NODES, k8s.service("web", [(80, 31080)], kind="NodePort"),
                k8s.ingress("site", [("a.test", "/", "Prefix", "web", 80)]))
    t = translate(c, DUAL, Ipam(DUAL.address_pools))
    v4, v6 = t.listeners
    assert (v4.name, v4.bind) == ("ingress-http", ("192.0.2.100", 80))
    assert (v6.name, v6.bind) == ("ingress-http-2", ("2001:db8::100", 80))
    assert v4.http is not None and v6.http is not None
    assert [b.key for b in v6.http.pools[0].backends] == ["[fd00::1]:31080", "[fd00::3]:31080"]
    assert [b.key for b in v4.http.pools[0].backends] == ["10.0.0.1:31080", "10.0.0.2:31080",
                                                         "10.0.0.3:31080"]
    assert v6.left_out == ("n2: no IPv6 InternalIP",)
    assert t.status[("Ingress", "default", "site")] == ["192.0.2.100", "2001:db8::100"]
