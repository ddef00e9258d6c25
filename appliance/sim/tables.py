"""What the simulated API server says about itself and how kubectl prints its
objects: the discovery documents and the ``as=Table`` answers."""

from __future__ import annotations

import time
from typing import Any

from .store import KINDS, Kind


def discovery_resources(group: str, version: str) -> list[dict[str, Any]]:
    out = []
    for k in KINDS:
        if (k.group, k.version) != (group, version):
            continue
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        out.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced":
                    k.namespaced, "kind": k.kind, "verbs": verbs, "shortNames": list(k.short)})
        if k.status:
            out.append({"name": f"{k.plural}/status", "singularName": "", "namespaced":
                        k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]})
    return out


def age(stamp: str) -> str:
    try:
        secs = int(time.time() - time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
                   + time.mktime(time.gmtime(0)))
    except (ValueError, TypeError):
        return "<unknown>"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * 2:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def table(kind: Kind, items: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Server-side printing, as ``kubectl get`` asks for it (``as=Table``)."""
    cols = [("Name", "string"), ("Age", "string")]
    if kind.kind == "Service":
        cols = [("Name", "string"), ("Type", "string"), ("External-IP", "string"),
                ("Port(s)", "string"), ("Age", "string")]
    rows = []
    for obj in items:
        m = obj.get("metadata", {})
        cells = [m.get("name"), age(m.get("creationTimestamp", ""))]
        if kind.kind == "Service":
            spec = obj.get("spec") or {}
            lb = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            ext = ",".join(i.get("ip", "") for i in lb) or (
                "<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
            ports = ",".join(f"{p.get('port')}:{p.get('nodePort')}/{p.get('protocol', 'TCP')}"
                             if p.get("nodePort") else f"{p.get('port')}/{p.get('protocol')}"
                             for p in spec.get("ports") or [])
            cells = [m.get("name"), spec.get("type"), ext, ports, cells[1]]
        rows.append({"cells": cells, "object": {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": m}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": [{"name": n, "type": t, "format": "name" if n == "Name" else "",
                                   "description": n, "priority": 0} for n, t in cols],
            "rows": rows}
