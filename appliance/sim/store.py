"""The simulated API server's objects: the resource kinds it serves, one global
resourceVersion, the history that watches read (compacted past a bound, after which an
old resourceVersion gets 410 Gone), and the faults a test switches on."""

from __future__ import annotations

import copy
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """A resource type the simulator serves."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status: bool = False  # has a /status subresource
    short: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = [
    Kind("", "v1", "namespaces", "Namespace", False, short=("ns",)),
    Kind("", "v1", "nodes", "Node", False, status=True, short=("no",)),
    Kind("", "v1", "services", "Service", True, status=True, short=("svc",)),
    Kind("", "v1", "secrets", "Secret", True),
    Kind("", "v1", "events", "Event", True, short=("ev",)),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Kind("networking.k8s.io", "v1", "ingresses", "Ingress", True, status=True, short=("ing",)),
    Kind("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", True),
]
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
BY_KIND = {k.kind: k for k in KINDS}

Key = tuple[str, str, str]  # (plural with group, namespace, name)


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')


class Store:
    """Objects under one global resourceVersion, and the history watches read."""

    def __init__(self, history: int = 100_000) -> None:
        self.lock = threading.Condition()
        self.rv = 1
        self.objects: dict[Key, dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, plural, type, obj
        self.compacted = 0  # watches from below this get 410 Gone
        self.max_history = history

    def _record(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, plural, kind, copy.deepcopy(obj)))
        if len(self.history) > self.max_history:
            drop = len(self.history) - self.max_history
            self.compacted = self.history[drop - 1][0] + 1
            del self.history[:drop]
        self.lock.notify_all()

    def put(self, kind: Kind, obj: dict[str, Any], event: str) -> dict[str, Any]:
        """Store ``obj`` as a new revision (caller holds the lock)."""
        if kind.kind == "Service":
            default_ip_families(obj.setdefault("spec", {}))
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        obj["kind"] = kind.kind
        obj["apiVersion"] = kind.api_version
        key = (kind.plural, meta.get("namespace", ""), meta["name"])
        self.objects[key] = obj
        self._record(kind.plural, event, obj)
        return copy.deepcopy(obj)

    def create(self, kind: Kind, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST: a new object (a name from ``generateName`` when it has none)."""
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiError(422, "Invalid", "metadata.name: Required value")
        if kind.namespaced:
            if meta.get("namespace", ns) != ns:
                raise ApiError(400, "BadRequest", "the namespace of the object does not "
                                                  "match the namespace of the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        with self.lock:
            if (kind.plural, ns, meta["name"]) in self.objects:
                raise ApiError(409, "AlreadyExists",
                               f'{kind.plural} "{meta["name"]}" already exists')
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta.setdefault("generation", 1)
            return self.put(kind, body, "ADDED")

    def update(self, kind: Kind, ns: str, name: str, sub: str,
               body: dict[str, Any]) -> dict[str, Any]:
        """PUT (and PATCH, once applied): 409 for a stale resourceVersion; the status
        subresource changes only status, the object itself everything but status (for
        kinds that have one); a changed spec is a new generation."""
        with self.lock:
            old = self.objects.get((kind.plural, ns, name))
            if old is None:
                raise not_found(kind, name)
            meta = body.setdefault("metadata", {})
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on '
                               f'{kind.plural} "{name}": the object has been modified; '
                               'please apply your changes to the latest version and try again')
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match")
            if sub == "status":
                new = copy.deepcopy(old)
                new["status"] = body.get("status", {})
                return self.put(kind, new, "MODIFIED")
            new = body
            for k in ("uid", "creationTimestamp", "namespace", "name"):
                if k in old["metadata"]:
                    new["metadata"][k] = old["metadata"][k]
            if kind.status:
                if old.get("status") is not None:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            return self.put(kind, new, "MODIFIED")

    def delete(self, kind: Kind, ns: str, name: str) -> dict[str, Any]:
        obj = self.objects.pop((kind.plural, ns, name))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(kind.plural, "DELETED", obj)
        return copy.deepcopy(obj)

    def compact(self) -> None:
        """Forget the history: watches resuming from an older resourceVersion get 410."""
        with self.lock:
            self.compacted = self.rv + 1
            self.history.clear()


@dataclass
class Faults:
    paused: threading.Event
    fail_status: int = 0
    fail_count: int = 0
    retry_after: int = 1
    watch_epoch: int = 0
    gone: bool = False  # every connection is closed unanswered (the server went away)


def default_ip_families(spec: dict[str, Any]) -> None:
    """What an API server of a dual-stack cluster (IPv4 first) fills in on a Service:
    ``ipFamilyPolicy`` SingleStack unless given, ``ipFamilies`` the primary family, or
    both under a dual-stack policy."""
    if spec.get("type") == "ExternalName":
        return
    policy = spec.setdefault("ipFamilyPolicy", "SingleStack")
    families = list(spec.get("ipFamilies") or ["IPv4"])
    if policy != "SingleStack":
        families += [f for f in ("IPv4", "IPv6") if f not in families]
    spec["ipFamilies"] = families[:1] if policy == "SingleStack" else families
