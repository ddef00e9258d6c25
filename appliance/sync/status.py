"""Writing back to the cluster: ``status.loadBalancer.ingress`` of the Services and
Ingresses edgelb serves (only while it leads), and Kubernetes Events for what it cannot do.
Blocking client calls; the daemon runs them in a thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..logs import Causes
from .translate import Cluster, Problem, Translation

log = logging.getLogger("edgelb.sync")


def current_ingress(obj: dict[str, Any]) -> list[str]:
    lb = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [str(i.get("ip")) for i in lb if i.get("ip")]


ObjectKey = tuple[str, str, str]  # (kind, namespace, name)
StatusChange = tuple[str, str, str, list[str]]  # (kind, namespace, name, ips)


class StatusBook:
    """The status writes not yet seen back through the watch (so none is made twice),
    and how many were written."""

    def __init__(self) -> None:
        self.pending: dict[ObjectKey, list[str]] = {}
        self.writes = 0

    def needs_write(self, k: ObjectKey, obj: dict[str, Any], ips: list[str],
                    may_write: bool = True) -> bool:
        """Whether ``obj``'s status must be written to show ``ips``: not when it already
        does (which confirms a pending write), nor when that very write is pending, nor
        when we may not write (not the leader); when it must, the write is recorded as
        pending."""
        if current_ingress(obj) == ips:
            self.pending.pop(k, None)
            return False
        if not may_write or self.pending.get(k) == ips:
            return False
        self.pending[k] = ips
        return True

    def written(self, done: int, failed: list[ObjectKey]) -> None:
        """``done`` writes went through; the ``failed`` ones are tried again later."""
        self.writes += done
        for k in failed:
            self.pending.pop(k, None)


def status_changes(cluster: Cluster, t: Translation, pool: set[str],
                   book: StatusBook) -> list[StatusChange]:
    """(kind, namespace, name, ips) to write: ours whose status differs, and Services and
    Ingresses no longer ours that still show one of our addresses (so it is taken back,
    and nobody is sent to a box that no longer serves them). Writes still pending in
    ``book`` are not made twice."""
    out = []
    tables = {"Service": cluster.services, "Ingress": cluster.ingresses}
    want = {k: list(dict.fromkeys(ips)) for k, ips in t.status.items()}
    for kind, table in tables.items():
        for k, obj in sorted(table.items()):
            ns, _, name = k.partition("/")
            if (kind, ns, name) not in want and set(current_ingress(obj)) & pool:
                want[(kind, ns, name)] = []
    for (kind, ns, name), ips in sorted(want.items()):
        current = tables[kind].get(f"{ns}/{name}")
        if current is not None and book.needs_write((kind, ns, name), current, ips):
            out.append((kind, ns, name, ips))
    return out


# A write the API holds is given up after this long (and tried again later), so that a
# stalled API never holds a status write, or the daemon's stop, for ever.
WRITE_TIMEOUT = 10.0


def write_status(api: client.ApiClient, changes: list[StatusChange], stop: threading.Event,
                 warn: Causes) -> list[ObjectKey]:
    """Patch each status; returns those not written (to try again). Stops when ``stop``
    is set (the daemon is stopping) and at the first write the API did not answer: the
    rest would fail alike, each after its own retries. Failures are logged by ``warn``,
    once per cause and interval."""
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    failed: list[ObjectKey] = []
    for i, (kind, ns, name, ips) in enumerate(changes):
        if stop.is_set():
            return failed + [c[:3] for c in changes[i:]]
        body = {"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}}}
        try:
            if kind == "Service":
                core.patch_namespaced_service_status(name, ns, body,
                                                     _request_timeout=WRITE_TIMEOUT)
            else:
                net.patch_namespaced_ingress_status(name, ns, body,
                                                    _request_timeout=WRITE_TIMEOUT)
            log.info("status of %s %s/%s: %s", kind, ns, name, ", ".join(ips) or "cleared")
        except ApiException as e:
            if e.status != 404:  # gone meanwhile: nothing to write
                warn(f"status {e.status}", logging.WARNING,
                     "status of %s %s/%s not written: %s %s; tried again later", kind, ns,
                     name, e.status, e.reason)
                failed.append((kind, ns, name))
        except Exception as e:  # the API is down: tried again with backoff
            left = len(changes) - i
            warn(type(e).__name__, logging.WARNING,
                 "status of %s %s/%s not written: %s; %d status writes wait for the API",
                 kind, ns, name, e, left)
            return failed + [c[:3] for c in changes[i:]]
    return failed


def post_events(api: client.ApiClient, problems: list[Problem], source: str,
                stop: threading.Event, warn: Causes) -> None:
    """One Warning Event per new problem, on the object it concerns. An Event the API
    does not take is logged (by ``warn``, once per cause and interval) and not posted
    again: the problem stays in the log and the status view."""
    core = client.CoreV1Api(api)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i, p in enumerate(problems):
        if stop.is_set():
            return
        ns = p.namespace or "default"
        api_version = "v1" if p.kind == "Service" else "networking.k8s.io/v1"
        body = {"metadata": {"generateName": f"{p.name}.", "namespace": ns},
                "involvedObject": {"kind": p.kind, "namespace": p.namespace,
                                   "name": p.name, "apiVersion": api_version},
                "reason": p.reason, "message": p.message, "type": "Warning",
                "source": {"component": source}, "firstTimestamp": now,
                "lastTimestamp": now, "count": 1}
        try:
            core.create_namespaced_event(ns, cast(Any, body),  # a dict serializes as is
                                         _request_timeout=WRITE_TIMEOUT)
        except ApiException as e:
            warn(f"event {e.status}", logging.WARNING, "event for %s %s/%s not posted: %s",
                 p.kind, ns, p.name, e.status)
        except Exception as e:  # the API is down: the rest would fail alike
            warn(type(e).__name__, logging.WARNING,
                 "event for %s %s/%s not posted: %s; %d events dropped", p.kind, ns,
                 p.name, e, len(problems) - i)
            return
