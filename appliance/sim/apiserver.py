"""A simulated kube-apiserver that speaks enough of the real wire protocol for the official
``kubernetes`` Python client and ``kubectl`` to work against it unmodified.

It keeps objects in memory under one global resourceVersion and serves discovery, LIST
(label and field selectors, limit/continue), WATCH (ADDED/MODIFIED/DELETED/BOOKMARK,
timeoutSeconds, 410 Gone after compaction), GET/POST/PUT/PATCH (merge, strategic as
merge, JSON patch)/DELETE, ``/status`` subresources, optimistic concurrency (409 on a
stale resourceVersion), real ``Status`` errors, and bearer-token auth with a read-only
token. Faults are switched on from Python: pause, drop every watch, fail requests with
500 or 429 + Retry-After, compact the history.

It is test and demo infrastructure: one process, threads, no persistence.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .certs import self_signed


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- selectors ----------------------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur)
    return terms


Requirement = tuple[str, str, frozenset[str]]  # (key or field path, op, values)


def _requirements(selector: str, fields: bool) -> list[Requirement]:
    reqs: list[Requirement] = []
    for raw in _split_terms(selector):
        term = raw.strip()
        m = _SET_TERM.match(term)
        if m and not fields:
            vals = frozenset(v.strip() for v in m.group(3).split(","))
            reqs.append((m.group(1), m.group(2), vals))
        elif "!=" in term:
            key, val = term.split("!=", 1)
            reqs.append((key.strip(), "!=", frozenset({val.strip()})))
        elif "=" in term:
            key, val = term.replace("==", "=").split("=", 1)
            reqs.append((key.strip(), "=", frozenset({val.strip()})))
        elif term.startswith("!") and not fields:
            reqs.append((term[1:].strip(), "!exists", frozenset()))
        elif term and not fields and re.fullmatch(r"[\w./-]+", term):
            reqs.append((term, "exists", frozenset()))
        elif term:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return reqs


def _holds(op: str, value: str | None, values: frozenset[str]) -> bool:
    if op in ("=", "in"):
        return value in values
    if op in ("!=", "notin"):
        return value not in values
    return (value is not None) == (op == "exists")


class LabelSelector:
    """A Kubernetes label selector (``a=1,b!=2,c,!d,e in (x,y),f notin (z)``)."""

    def __init__(self, selector: str) -> None:
        self.reqs = _requirements(selector, fields=False)

    def __call__(self, labels: dict[str, str]) -> bool:
        return all(_holds(op, labels.get(k), vals) for k, op, vals in self.reqs)


class FieldSelector:
    """A field selector (``metadata.name=x,spec.type!=y``) on an object."""

    def __init__(self, selector: str) -> None:
        self.reqs = _requirements(selector, fields=True)

    def __call__(self, obj: dict[str, Any]) -> bool:
        return all(_holds(op, _field(obj, k), vals) for k, op, vals in self.reqs)


def label_matcher(selector: str) -> LabelSelector:
    return LabelSelector(selector)


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


# -- patches ------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)

    def walk(parts: list[str]) -> tuple[Any, str]:
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(parts: list[str]) -> Any:
        cur = doc
        for p in parts:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def add(parts: list[str], value: Any) -> None:
        parent, last = walk(parts)
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    def remove(parts: list[str]) -> Any:
        parent, last = walk(parts)
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    try:
        for op in ops:
            kind, path = op["op"], _pointer(op["path"])
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(path, remove(_pointer(op["from"])))
            elif kind == "copy":
                add(path, copy.deepcopy(get(_pointer(op["from"]))))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
            else:
                raise ApiError(422, "Invalid", f"unknown patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ApiError(422, "Invalid", f"the patch does not apply: {e}") from None
    return doc


# -- the store ----------------------------------------------------------------------------

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
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        obj["kind"] = kind.kind
        obj["apiVersion"] = kind.api_version
        key = (kind.plural, meta.get("namespace", ""), meta["name"])
        self.objects[key] = obj
        self._record(kind.plural, event, obj)
        return copy.deepcopy(obj)

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


# -- the server ---------------------------------------------------------------------------

@dataclass
class Faults:
    paused: threading.Event
    fail_status: int = 0
    fail_count: int = 0
    retry_after: int = 1
    watch_epoch: int = 0


class SimApiServer:
    """The simulated API server on ``host:port`` (any free port when 0). ``tokens`` maps
    bearer tokens to ``"rw"`` or ``"ro"``; with ``tls`` (an SSLContext) it serves HTTPS."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 tokens: dict[str, str] | None = None, tls_dir: str | None = None,
                 bookmark_interval: float = 5.0) -> None:
        self.store = Store()
        self.tokens = tokens if tokens is not None else {"admin-token": "rw",
                                                          "viewer-token": "ro"}
        paused = threading.Event()
        paused.set()
        self.faults = Faults(paused)
        self.bookmark_interval = bookmark_interval
        self.requests = 0
        # (verb as RBAC names it, group, resource or resource/subresource) -> count
        self.calls: dict[tuple[str, str, str], int] = {}
        self.httpd = _HttpServer((host, port), _Handler, self)
        self.scheme = "http"
        self.ca_file: str | None = None
        if tls_dir is not None:
            cert, key = self_signed(tls_dir, "apiserver", dns=("localhost",), ips=(host,))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
            self.ca_file = cert
        host_, port_ = self.httpd.server_address[:2]
        self.host, self.port = str(host_), int(port_)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        with self.store.lock:
            for ns in ("default", "kube-system"):
                self.store.put(BY_KIND["Namespace"], {"metadata": {
                    "name": ns, "uid": str(uuid.uuid4()), "creationTimestamp": _now()},
                    "status": {"phase": "Active"}}, "ADDED")

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> SimApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.faults.paused.set()
        self.faults.watch_epoch += 1
        with self.store.lock:
            self.store.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> SimApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults, from Python -------------------------------------------------------------

    def pause(self) -> None:
        """Hold every request (as an apiserver that stopped answering) until resume."""
        self.faults.paused.clear()

    def resume(self) -> None:
        self.faults.paused.set()

    def fail(self, status: int, count: int = 1_000_000, retry_after: int = 1) -> None:
        """Answer the next ``count`` requests with ``status`` (500, 429 + Retry-After, 401,
        403...); ``fail(0)`` stops."""
        self.faults.fail_status, self.faults.fail_count = status, count
        self.faults.retry_after = retry_after

    def drop_watches(self) -> None:
        """End every open watch stream at once."""
        self.faults.watch_epoch += 1
        with self.store.lock:
            self.store.lock.notify_all()

    def compact(self) -> None:
        self.store.compact()

    # -- objects, from Python (what `kubectl apply` would do) ---------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace ``obj`` (status included), as a test's kubectl would."""
        kind = BY_KIND[obj["kind"]]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta.setdefault("namespace", "default")
        with self.store.lock:
            key = (kind.plural, meta.get("namespace", ""), meta["name"])
            old = self.store.objects.get(key)
            if old is None:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                return self.store.put(kind, obj, "ADDED")
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            return self.store.put(kind, obj, "MODIFIED")

    def remove(self, kind: str, name: str, namespace: str = "default") -> None:
        k = BY_KIND[kind]
        with self.store.lock:
            self.store.delete(k, namespace if k.namespaced else "", name)

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        k = BY_KIND[kind]
        with self.store.lock:
            obj = self.store.objects.get((k.plural, namespace if k.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    def list(self, kind: str) -> list[dict[str, Any]]:
        k = BY_KIND[kind]
        with self.store.lock:
            return [copy.deepcopy(o) for (p, _, _), o in sorted(self.store.objects.items())
                    if p == k.plural]

    def kubeconfig(self, token: str = "admin-token") -> str:
        """A kubeconfig (YAML text) pointing at this server with ``token`` (kubectl sends
        a token only over TLS, so serve with ``tls_dir`` for kubectl)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_file:
            cluster["certificate-authority"] = self.ca_file
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "sim",
               "clusters": [{"name": "sim", "cluster": cluster}],
               "users": [{"name": "sim", "user": {"token": token}}],
               "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}]}
        return json.dumps(cfg, indent=2)  # JSON is YAML


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], handler: type, sim: SimApiServer) -> None:
        self.sim = sim
        super().__init__(addr, handler)


def _discovery_resources(group: str, version: str) -> list[dict[str, Any]]:
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


def _age(stamp: str) -> str:
    try:
        secs = int(time.time() - time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
                   + time.mktime(time.gmtime(0)))
    except (ValueError, TypeError):
        return "<unknown>"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * 2:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _table(kind: Kind, items: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Server-side printing, as ``kubectl get`` asks for it (``as=Table``)."""
    cols = [("Name", "string"), ("Age", "string")]
    if kind.kind == "Service":
        cols = [("Name", "string"), ("Type", "string"), ("External-IP", "string"),
                ("Port(s)", "string"), ("Age", "string")]
    rows = []
    for obj in items:
        m = obj.get("metadata", {})
        cells = [m.get("name"), _age(m.get("creationTimestamp", ""))]
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    # every verb goes through one place
    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send_json(self, code: int, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(400, "BadRequest", "the body is not JSON") from None

    def _serve(self, verb: str) -> None:
        sim = self.server.sim
        sim.requests += 1
        try:
            sim.faults.paused.wait()
            self._auth(verb)
            f = sim.faults
            if f.fail_status and f.fail_count > 0:
                f.fail_count -= 1
                headers = {"Retry-After": str(f.retry_after)} if f.fail_status == 429 else {}
                reason = {429: "TooManyRequests", 401: "Unauthorized", 403: "Forbidden"}.get(
                    f.fail_status, "InternalError")
                raise ApiError(f.fail_status, reason, "injected fault", headers)
            self._route(verb)
        except ApiError as e:
            body = self._body_len_drain()
            del body
            self._send_json(e.code, e.status(), e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _body_len_drain(self) -> bytes:
        # An error may come before the body was read; keep-alive needs it consumed.
        n = int(self.headers.get("Content-Length") or 0)
        if n and not getattr(self, "_body_read", False):
            return self.rfile.read(n)
        return b""

    def _auth(self, verb: str) -> None:
        got = self.headers.get("Authorization", "")
        token = got[7:] if got.startswith("Bearer ") else ""
        role = self.server.sim.tokens.get(token)
        if self.path in ("/version", "/healthz", "/readyz", "/livez"):
            return
        if role is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if verb != "GET" and role != "rw":
            raise ApiError(403, "Forbidden", f"the token may not {verb.lower()} here")

    def _route(self, verb: str) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if url.path == "/version":
            self._send_json(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-edgelb-sim",
                                  "platform": "linux/amd64"})
            return
        if url.path in ("/healthz", "/readyz", "/livez"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        if parts == ["api"]:
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": []})
            return
        if parts == ["apis"]:
            groups = sorted({k.group for k in KINDS if k.group})
            self._send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                for g in groups]})
            return
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find {url.path}")
        if not rest:
            self._send_json(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                  "groupVersion": f"{group}/{version}" if group else version,
                                  "resources": _discovery_resources(group, version)})
            return
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        kind = BY_PATH.get((group, version, rest[0]))
        if kind is None:
            raise ApiError(404, "NotFound", f"the server could not find the resource "
                                            f"{rest[0]!r} in {group or 'core'}/{version}")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and (sub != "status" or not kind.status):
            raise ApiError(404, "NotFound", f"no subresource {sub!r}")
        if kind.namespaced and name and not ns:
            raise ApiError(404, "NotFound", "a namespaced object needs a namespace")
        rbac_verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                     "DELETE": "delete"}.get(verb) or (
            "get" if name else "watch" if q.get("watch") in ("true", "1") else "list")
        call = (rbac_verb, group, f"{kind.plural}/{sub}" if sub else kind.plural)
        sim = self.server.sim
        sim.calls[call] = sim.calls.get(call, 0) + 1
        if not name:
            if verb == "GET":
                if q.get("watch") in ("true", "1"):
                    self._watch(kind, ns, q)
                else:
                    self._list(kind, ns, q)
            elif verb == "POST":
                self._create(kind, ns)
            else:
                raise ApiError(405, "MethodNotAllowed", f"{verb} on a collection")
            return
        if verb == "GET":
            obj = self._get(kind, ns, name)
            if "as=Table" in (self.headers.get("Accept") or ""):
                obj = _table(kind, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]})
            self._send_json(200, obj)
        elif verb == "PUT":
            self._update(kind, ns, name, sub, self._read_body())
        elif verb == "PATCH":
            self._patch(kind, ns, name, sub)
        elif verb == "DELETE":
            with self.server.sim.store.lock:
                if (kind.plural, ns, name) not in self.server.sim.store.objects:
                    raise self._not_found(kind, name)
                obj = self.server.sim.store.delete(kind, ns, name)
            self._send_json(200, obj)
        else:
            raise ApiError(405, "MethodNotAllowed", verb)

    def _read_body(self) -> Any:
        self._body_read = True
        body = self._body()
        if not isinstance(body, dict | list):
            raise ApiError(400, "BadRequest", "expected a JSON object")
        return body

    @staticmethod
    def _not_found(kind: Kind, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')

    def _get(self, kind: Kind, ns: str, name: str) -> dict[str, Any]:
        store = self.server.sim.store
        with store.lock:
            obj = store.objects.get((kind.plural, ns, name))
            if obj is None:
                raise self._not_found(kind, name)
            return copy.deepcopy(obj)

    def _create(self, kind: Kind, ns: str) -> None:
        body = self._read_body()
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
        store = self.server.sim.store
        with store.lock:
            if (kind.plural, ns, meta["name"]) in store.objects:
                raise ApiError(409, "AlreadyExists",
                               f'{kind.plural} "{meta["name"]}" already exists')
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta.setdefault("generation", 1)
            out = store.put(kind, body, "ADDED")
        self._send_json(201, out)

    def _update(self, kind: Kind, ns: str, name: str, sub: str, body: Any) -> None:
        store = self.server.sim.store
        with store.lock:
            old = store.objects.get((kind.plural, ns, name))
            if old is None:
                raise self._not_found(kind, name)
            meta = body.setdefault("metadata", {})
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on '
                               f'{kind.plural} "{name}": the object has been modified; '
                               'please apply your changes to the latest version and try again')
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match")
            new = copy.deepcopy(old)
            if sub == "status":
                new["status"] = body.get("status", {})
            else:
                status = old.get("status")
                new = body
                new_meta = new["metadata"]
                for k in ("uid", "creationTimestamp", "namespace", "name"):
                    if k in old["metadata"]:
                        new_meta[k] = old["metadata"][k]
                if kind.status:
                    if status is not None:
                        new["status"] = status
                    else:
                        new.pop("status", None)
                if new.get("spec") != old.get("spec"):
                    new_meta["generation"] = old["metadata"].get("generation", 1) + 1
            out = store.put(kind, new, "MODIFIED")
        self._send_json(200, out)

    def _patch(self, kind: Kind, ns: str, name: str, sub: str) -> None:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        patch = self._read_body()
        current = self._get(kind, ns, name)
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
            new = json_patch(current, patch)
        elif ctype in ("application/merge-patch+json",
                       "application/strategic-merge-patch+json"):
            new = merge_patch(current, patch)
        elif ctype == "application/apply-patch+yaml":
            raise ApiError(415, "UnsupportedMediaType", "server-side apply is not simulated")
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        # A patch does not carry a resourceVersion unless the patch set it.
        if isinstance(patch, dict) and "resourceVersion" not in patch.get("metadata", {}):
            new.setdefault("metadata", {})["resourceVersion"] = \
                current["metadata"]["resourceVersion"]
        self._update(kind, ns, name, sub, new)

    def _matching(self, kind: Kind, ns: str, q: dict[str, str]) -> Any:
        labels = LabelSelector(q.get("labelSelector", ""))
        fields = FieldSelector(q.get("fieldSelector", ""))

        def match(plural: str, obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (plural == kind.plural and (not ns or meta.get("namespace") == ns)
                    and labels(meta.get("labels") or {}) and fields(obj))
        return match

    def _list(self, kind: Kind, ns: str, q: dict[str, str]) -> None:
        store = self.server.sim.store
        match = self._matching(kind, ns, q)
        limit = int(q.get("limit") or 0)
        start, rv = 0, None
        if q.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"]))
                start, rv = int(token["start"]), token["rv"]
            except (ValueError, KeyError):
                raise ApiError(400, "BadRequest", "invalid continue token") from None
        with store.lock:
            if rv is not None and int(rv) < store.compacted:
                raise ApiError(410, "Expired", "The provided continue parameter is too old "
                                               "to display a consistent list result.")
            items = [copy.deepcopy(o) for (p, _, _), o in sorted(store.objects.items())
                     if match(p, o)]
            list_rv = rv or str(store.rv)
        meta: dict[str, Any] = {"resourceVersion": list_rv}
        if limit and len(items) > start + limit:
            token = {"start": start + limit, "rv": list_rv}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start:start + limit]
        else:
            items = items[start:]
        if "as=Table" in (self.headers.get("Accept") or ""):
            self._send_json(200, _table(kind, items, meta))
            return
        self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                              "metadata": meta, "items": items})

    def _watch(self, kind: Kind, ns: str, q: dict[str, str]) -> None:
        sim = self.server.sim
        store = sim.store
        match = self._matching(kind, ns, q)
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.monotonic() + timeout
        epoch = sim.faults.watch_epoch
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

        def emit(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        rv_text = q.get("resourceVersion", "")
        initial: list[dict[str, Any]] | None
        with store.lock:
            if rv_text in ("", "0"):
                initial = [copy.deepcopy(o) for (p, _, _), o in sorted(store.objects.items())
                           if match(p, o)]
                since = store.rv
            else:
                initial = []
                since = int(rv_text)
                if since + 1 < store.compacted:
                    initial = None
        try:
            if initial is None:
                emit({"type": "ERROR", "object": ApiError(
                    410, "Expired", f"too old resource version: {since} "
                    f"({store.compacted - 1})").status()})
                return
            for obj in initial:
                emit({"type": "ADDED", "object": obj})
            last_bookmark = time.monotonic()
            while True:
                with store.lock:
                    while True:
                        if sim.faults.watch_epoch != epoch:
                            return
                        if since + 1 < store.compacted:
                            emit_gone = True
                            break
                        emit_gone = False
                        start = bisect.bisect_right(store.history, since,
                                                    key=lambda h: h[0])
                        pending = store.history[start:]
                        now = time.monotonic()
                        if pending or now >= deadline or (
                                bookmarks and now - last_bookmark >= sim.bookmark_interval):
                            break
                        store.lock.wait(min(deadline - now, 0.5))
                    current = store.rv
                if emit_gone:
                    emit({"type": "ERROR", "object": ApiError(
                        410, "Expired", "too old resource version").status()})
                    return
                for rv, plural, event, obj in pending:
                    since = rv
                    if match(plural, obj):
                        emit({"type": event, "object": obj})
                if time.monotonic() >= deadline:
                    return
                if bookmarks and time.monotonic() - last_bookmark >= sim.bookmark_interval:
                    since = max(since, current)
                    emit({"type": "BOOKMARK", "object": {
                        "kind": kind.kind, "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": str(since)}}})
                    last_bookmark = time.monotonic()
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass

