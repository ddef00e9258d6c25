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
import copy
import json
import ssl
import sys
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .certs import self_signed
from .semantics import FieldSelector, LabelSelector, json_patch, merge_patch
from .store import BY_KIND, BY_PATH, KINDS, ApiError, Faults, Kind, Store, not_found, now
from .tables import discovery_resources, table
from .watch import Watch


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
        # Called with (verb, path) as each request arrives, in its thread: a test's hook
        # to inject a fault at an exact point (say, the 50th status write).
        self.before_request: Callable[[str, str], None] | None = None
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
                    "name": ns, "uid": str(uuid.uuid4()), "creationTimestamp": now()},
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

    def go_away(self) -> None:
        """Close every connection unanswered, open watches included, until ``come_back``
        (as an apiserver that died: clients see their connections broken)."""
        self.faults.gone = True
        self.drop_watches()

    def come_back(self) -> None:
        self.faults.gone = False

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
                meta.setdefault("creationTimestamp", now())
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that left (a watch it closed, a daemon stopped) is no error of ours.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    # A response goes out in one write, and at once: head and body written apart, with
    # Nagle on, wait for the client's delayed ACK (~40 ms) and held every client at
    # about 20 writes a second.
    wbufsize = 1 << 16
    raw_body = b""
    disable_nagle_algorithm = True

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
        self.wfile.flush()

    def _body(self) -> Any:
        raw = self.raw_body
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(400, "BadRequest", "the body is not JSON") from None

    def _serve(self, verb: str) -> None:
        sim = self.server.sim
        sim.requests += 1
        # The body is read first, whatever the answer: one left unread (a DELETE's
        # DeleteOptions, a request refused early) would be taken for the next request.
        n = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(n) if n > 0 else b""
        try:
            if sim.before_request is not None:
                sim.before_request(verb, self.path)
            sim.faults.paused.wait()
            if sim.faults.gone:
                self.close_connection = True
                return
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
            self._send_json(e.code, e.status(), e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

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
            self.wfile.flush()
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
                                  "resources": discovery_resources(group, version)})
            return
        self._resource(verb, group, version, rest, q)

    def _resource(self, verb: str, group: str, version: str, rest: list[str],
                  q: dict[str, str]) -> None:
        """A request on a collection or an object: /namespaces/NS/PLURAL[/NAME[/SUB]]."""
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
            self._collection(verb, kind, ns, q)
            return
        self._object(verb, kind, ns, name, sub)

    def _collection(self, verb: str, kind: Kind, ns: str, q: dict[str, str]) -> None:
        if verb == "GET":
            if q.get("watch") in ("true", "1"):
                self._watch(kind, ns, q)
            else:
                self._list(kind, ns, q)
        elif verb == "POST":
            self._create(kind, ns)
        else:
            raise ApiError(405, "MethodNotAllowed", f"{verb} on a collection")

    def _object(self, verb: str, kind: Kind, ns: str, name: str, sub: str) -> None:
        if verb == "GET":
            obj = self._get(kind, ns, name)
            if "as=Table" in (self.headers.get("Accept") or ""):
                obj = table(kind, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]})
            self._send_json(200, obj)
        elif verb == "PUT":
            self._update(kind, ns, name, sub, self._read_body())
        elif verb == "PATCH":
            self._patch(kind, ns, name, sub)
        elif verb == "DELETE":
            with self.server.sim.store.lock:
                if (kind.plural, ns, name) not in self.server.sim.store.objects:
                    raise not_found(kind, name)
                obj = self.server.sim.store.delete(kind, ns, name)
            self._send_json(200, obj)
        else:
            raise ApiError(405, "MethodNotAllowed", verb)

    def _read_body(self) -> Any:
        body = self._body()
        if not isinstance(body, dict | list):
            raise ApiError(400, "BadRequest", "expected a JSON object")
        return body

    def _get(self, kind: Kind, ns: str, name: str) -> dict[str, Any]:
        store = self.server.sim.store
        with store.lock:
            obj = store.objects.get((kind.plural, ns, name))
            if obj is None:
                raise not_found(kind, name)
            return copy.deepcopy(obj)

    def _create(self, kind: Kind, ns: str) -> None:
        self._send_json(201, self.server.sim.store.create(kind, ns, self._read_body()))

    def _update(self, kind: Kind, ns: str, name: str, sub: str, body: Any) -> None:
        self._send_json(200, self.server.sim.store.update(kind, ns, name, sub, body))

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

    def _watch(self, kind: Kind, ns: str, q: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()  # the head now: events may be a while
        self.close_connection = True
        sim = self.server.sim
        Watch(sim.store, sim.faults, sim.bookmark_interval, self.wfile, kind,
              self._matching(kind, ns, q), q).run()

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
            self._send_json(200, table(kind, items, meta))
            return
        self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                              "metadata": meta, "items": items})
