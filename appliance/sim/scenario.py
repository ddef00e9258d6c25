"""Scenarios for the simulated cluster: N nodes, services, endpoints and ingresses,
generated deterministically, for benchmarks and scale tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import objects as k8s

Obj = dict[str, Any]


def generate(nodes: int, services: int, endpoints: int, ingresses: int = 0,
             lb_share: float = 1.0) -> Iterator[Obj]:
    """Nodes on 10.x addresses; ``services`` Services with one port each (the first
    ``lb_share`` of them LoadBalancer of our class, the rest NodePort); ``endpoints``
    ready endpoints spread evenly over the services and nodes; ``ingresses`` Ingresses,
    each routing one host to one of the NodePort (or any) services."""
    per = max(1, endpoints // max(services, 1))
    for i in range(nodes):
        yield k8s.node(f"node-{i}", f"10.{i // 250 % 250}.{i % 250}.1")
    lb_count = int(services * lb_share)
    for s in range(services):
        kind = "LoadBalancer" if s < lb_count else "NodePort"
        yield k8s.service(f"svc-{s}", [(10000 + s % 50000, 30000 + s % 2768)], kind=kind)
        eps = [(f"10.200.{(s * per + e) // 250 % 250}.{(s * per + e) % 250}",
                f"node-{(s + e) % max(nodes, 1)}", True) for e in range(per)]
        yield k8s.endpoint_slice(f"svc-{s}", eps)
    if ingresses:
        yield k8s.ingress_class()
    for g in range(ingresses):
        svc = services - 1 - (g % max(services, 1))
        yield k8s.ingress(f"ing-{g}", [(f"host-{g}.example.test", "/", "Prefix",
                                        f"svc-{svc}", 10000 + svc % 50000)])
