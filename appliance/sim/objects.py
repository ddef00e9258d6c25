"""Kubernetes objects as the API serves them (plain dicts), for the simulated cluster's
scenarios, the demo and the tests."""

from __future__ import annotations

import base64
from typing import Any

Obj = dict[str, Any]


def node(name: str, ip: str | list[str], ready: bool = True, unschedulable: bool = False,
         labels: dict[str, str] | None = None) -> Obj:
    """``ip``: its InternalIP, or a list of them (one of each family, for dual-stack)."""
    ips = [ip] if isinstance(ip, str) else ip
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                  **(labels or {})}},
            "spec": {"unschedulable": unschedulable} if unschedulable else {},
            "status": {"addresses": [*({"type": "InternalIP", "address": a} for a in ips),
                                     {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready",
                                       "status": "True" if ready else "False"}]}}


def service(name: str, ports: list[tuple[int, int]] | list[tuple[int, int, str]],
            namespace: str = "default", lb_class: str | None = "edgelb.io/slb",
            local: bool = False, health_port: int = 0, kind: str = "LoadBalancer",
            annotations: dict[str, str] | None = None, address: str | None = None,
            families: list[str] | None = None, policy: str | None = None,
            app_protocol: str | None = None) -> Obj:
    """``ports``: (port, nodePort) or (port, nodePort, protocol); ``families`` and
    ``policy``: spec.ipFamilies and spec.ipFamilyPolicy (the API server defaults them)."""
    spec: Obj = {"type": kind, "selector": {"app": name}, "ports": [
        {"name": f"p{p[0]}", "port": p[0], "nodePort": p[1],
         "protocol": p[2] if len(p) > 2 else "TCP", "targetPort": 8080}
        for p in ports]}
    if kind == "LoadBalancer" and lb_class is not None:
        spec["loadBalancerClass"] = lb_class
    if local:
        spec["externalTrafficPolicy"] = "Local"
        spec["healthCheckNodePort"] = health_port
    if address:
        spec["loadBalancerIP"] = address
    if app_protocol:
        for p in spec["ports"]:
            p["appProtocol"] = app_protocol
    if families:
        spec["ipFamilies"] = families
    if policy:
        spec["ipFamilyPolicy"] = policy
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}},
            "spec": spec, "status": {"loadBalancer": {}}}


def endpoint_slice(service_name: str, endpoints: list[tuple[str, str, bool]],
                   port: int = 8080, namespace: str = "default", name: str | None = None,
                   port_name: str = "p80") -> Obj:
    """``endpoints``: (pod IP, node name, ready)."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service_name}-abc", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": n, "conditions": {"ready": r}}
                          for ip, n, r in endpoints]}


def ingress_class(name: str = "edgelb", default: bool = False,
                  controller: str = "edgelb.io/ingress") -> Obj:
    ann = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": name, "annotations": ann},
            "spec": {"controller": controller}}


def ingress(name: str, rules: list[tuple[str, str, str, str, int]],
            namespace: str = "default", cls: str | None = "edgelb",
            tls: list[tuple[list[str], str]] | None = None,
            default_backend: tuple[str, int] | None = None,
            created: str | None = None) -> Obj:
    """``rules``: (host, path, pathType, service, port)."""
    by_host: dict[str, list[Obj]] = {}
    for host, path, ptype, svc, port in rules:
        by_host.setdefault(host, []).append(
            {"path": path, "pathType": ptype,
             "backend": {"service": {"name": svc, "port": {"number": port}}}})
    spec: Obj = {"rules": [{**({"host": h} if h else {}), "http": {"paths": ps}}
                           for h, ps in by_host.items()]}
    if cls is not None:
        spec["ingressClassName"] = cls
    if tls:
        spec["tls"] = [{"hosts": hosts, "secretName": secret} for hosts, secret in tls]
    if default_backend:
        spec["defaultBackend"] = {"service": {"name": default_backend[0],
                                              "port": {"number": default_backend[1]}}}
    meta: Obj = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": spec, "status": {"loadBalancer": {}}}


def tls_secret(name: str, cert_pem: bytes, key_pem: bytes, namespace: str = "default") -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": base64.b64encode(cert_pem).decode(),
                     "tls.key": base64.b64encode(key_pem).decode()}}
