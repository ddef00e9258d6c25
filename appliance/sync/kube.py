"""List+watch of the cluster with the official ``kubernetes`` client, bridged to trio.

Each kind (and namespace, when the config names some) is followed by one thread: LIST
(the objects replace what we knew of that kind), then WATCH from the list's
resourceVersion with bookmarks, forever; a 410 Gone re-lists; any other failure (API
down, 401/403, 500, 429) is retried with exponential backoff and jitter (429 honours
Retry-After). What was learned stays in force meanwhile: an outage never empties the
datapath. Changes wake a debounced rebuild in the trio side; the state of each watch is
kept for the log, metrics and console. The threads only call the API: everything they
learn, and the state of their watch, is handed to the trio thread, which alone changes
``cluster`` and the ``Follow`` records (the views read them there).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import trio
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from ..model import ClusterSpec
from .translate import Cluster, key, relevant

log = logging.getLogger("edgelb.sync")

Obj = dict[str, Any]

WATCH_SECONDS = 240  # server-side watch timeout; the watch is then simply renewed
MAX_BACKOFF = 30.0


@dataclass
class Follow:
    """One followed collection: a kind, optionally in one namespace."""

    kind: str  # the Cluster attribute: nodes, services, slices, ingresses, classes, secrets
    lister: Callable[..., Any]
    namespace: str | None = None
    field_selector: str = ""
    state: str = "starting"  # starting | synced | degraded
    detail: str = ""
    since: float = field(default_factory=time.monotonic)
    lists: int = 0
    errors: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.namespace}" if self.namespace else self.kind


def api_client(spec: ClusterSpec) -> client.ApiClient:
    """An ApiClient from the kubeconfig (or the in-cluster service account)."""
    # urllib3 warns of every retry it makes (a line per request while the API is down);
    # edgelb says what failed itself, once per cause.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # The client's config helpers carry no type hints.
    cfg_module = cast(Any, config)
    if spec.kubeconfig:
        api: client.ApiClient = cfg_module.new_client_from_config(spec.kubeconfig,
                                                                  context=spec.context)
        return api
    cfg = client.Configuration()
    cfg_module.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


def follows(api: client.ApiClient, spec: ClusterSpec) -> list[Follow]:
    core, disc, net = client.CoreV1Api(api), client.DiscoveryV1Api(api), \
        client.NetworkingV1Api(api)
    out = [Follow("nodes", core.list_node), Follow("classes", net.list_ingress_class)]
    namespaced = [("services", core.list_service_for_all_namespaces,
                   core.list_namespaced_service, ""),
                  ("slices", disc.list_endpoint_slice_for_all_namespaces,
                   disc.list_namespaced_endpoint_slice, ""),
                  ("ingresses", net.list_ingress_for_all_namespaces,
                   net.list_namespaced_ingress, ""),
                  ("secrets", core.list_secret_for_all_namespaces,
                   core.list_namespaced_secret, "type=kubernetes.io/tls")]
    for kind, every, one, selector in namespaced:
        if spec.namespaces:
            out += [Follow(kind, one, ns, selector) for ns in spec.namespaces]
        else:
            out.append(Follow(kind, every, None, selector))
    return out


class ClusterSync:
    """Follows the cluster and calls ``on_change(cluster)`` (in trio) after changes,
    debounced, once every followed collection has been listed."""

    def __init__(self, spec: ClusterSpec, on_change: Callable[[Cluster], None],
                 on_quiet: Callable[[str, Obj], None] | None = None) -> None:
        self.spec = spec
        self.on_change = on_change
        self.on_quiet = on_quiet
        self.cluster = Cluster()
        self.follows: list[Follow] = []
        self.dirty = trio.Event()
        self.stop = threading.Event()
        self.changes = 0
        self.quiet = 0  # events that changed nothing translation reads
        self.last_change = 0.0
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def synced(self) -> bool:
        return bool(self.follows) and all(f.lists > 0 for f in self.follows)

    @property
    def degraded(self) -> list[Follow]:
        return [f for f in self.follows if f.state == "degraded"]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Follow until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        api = await trio.to_thread.run_sync(api_client, self.spec)
        self.follows = follows(api, self.spec)
        for f in self.follows:
            threading.Thread(target=self._follow, args=(f,), daemon=True,
                             name=f"edgelb-watch-{f.name}").start()
        task_status.started()
        try:
            while True:
                await self.dirty.wait()
                # Debounce: a burst of events (a rollout, a re-list) is one rebuild.
                await trio.sleep(self.spec.debounce)
                self.dirty = trio.Event()
                if self.synced:
                    self.on_change(self.cluster)
        finally:
            self.stop.set()

    # -- in trio -------------------------------------------------------------------------

    def _replace(self, follow: Follow, objects: list[Obj]) -> None:
        follow.lists += 1
        table: dict[str, Obj] = getattr(self.cluster, follow.kind)
        for k in [k for k, o in table.items()
                  if follow.namespace is None or o["metadata"].get("namespace") ==
                  follow.namespace]:
            del table[k]
        for obj in objects:
            table[key(obj)] = obj
        self._changed()

    def _event(self, follow: Follow, kind: str, obj: Obj) -> None:
        table: dict[str, Obj] = getattr(self.cluster, follow.kind)
        k = key(obj)
        if kind == "DELETED":
            table.pop(k, None)
            self._changed()
            return
        old = table.get(k)
        table[k] = obj
        # Heartbeats and our own status writes come back as MODIFIED: only a change in
        # what translation reads rebuilds the Snapshot.
        if old is None or relevant(follow.kind, old) != relevant(follow.kind, obj):
            self._changed()
        else:
            self.quiet += 1
            if self.on_quiet is not None:
                self.on_quiet(follow.kind, obj)

    def _changed(self) -> None:
        self.changes += 1
        self.last_change = time.monotonic()
        self.dirty.set()

    def _healthy(self, follow: Follow) -> None:
        if follow.state == "degraded":
            log.info("watch %s: recovered after %.1fs", follow.name,
                     time.monotonic() - follow.since)
        if follow.state != "synced":
            follow.since = time.monotonic()
        follow.state, follow.detail = "synced", ""

    def _degraded(self, follow: Follow, why: str) -> None:
        follow.errors += 1
        if follow.state != "degraded" or follow.detail != why:
            log.warning("watch %s: %s; still serving the last good state, retrying", follow.name,
                        why)
        if follow.state != "degraded":
            follow.since = time.monotonic()
        follow.state, follow.detail = "degraded", why

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            self.stop.set()

    # -- in a thread ---------------------------------------------------------------------

    def _call(self, follow: Follow, **kw: Any) -> Any:
        if follow.namespace is not None:
            kw["namespace"] = follow.namespace
        if follow.field_selector:
            kw["field_selector"] = follow.field_selector
        return follow.lister(_preload_content=False, **kw)

    def _follow(self, follow: Follow) -> None:
        backoff = 0.5
        rv: str | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    resp = self._call(follow, _request_timeout=(5, 60))
                    body = json.loads(resp.data)
                    rv = body["metadata"]["resourceVersion"]
                    self._to_trio(self._replace, follow, body.get("items") or [])
                    self._to_trio(self._healthy, follow)
                    backoff = 0.5
                rv = self._watch(follow, rv)
                backoff = 0.5
            except ApiException as e:
                wait = backoff
                if e.status == 429:
                    retry = (e.headers or {}).get("Retry-After")
                    wait = float(retry) if retry and retry.isdigit() else backoff
                self._to_trio(self._degraded, follow, f"API answered {e.status} {e.reason}")
                backoff = self._sleep(wait, backoff)
            except Exception as e:  # any failure: keep serving, retry
                self._to_trio(self._degraded, follow, f"{type(e).__name__}: {e}")
                backoff = self._sleep(backoff, backoff)

    def _watch(self, follow: Follow, rv: str) -> str | None:
        """Watch from ``rv`` until the server ends the stream; the resourceVersion to
        resume from, or None to re-list (410 Gone)."""
        resp = self._call(follow, watch=True, resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                          _request_timeout=(5, WATCH_SECONDS + 30))
        self._to_trio(self._healthy, follow)  # the API answered: following again
        try:
            for line in cast(Any, iter_resp_lines)(resp):
                if self.stop.is_set():
                    return rv
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        log.info("watch %s: resourceVersion %s expired, re-listing",
                                 follow.name, rv)
                        return None
                    raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if kind == "BOOKMARK":
                    continue
                self._to_trio(self._event, follow, kind, obj)
            return rv
        finally:
            resp.release_conn()

    def _sleep(self, wait: float, backoff: float) -> float:
        """Sleep ``wait`` with jitter; the next backoff."""
        self.stop.wait(wait * random.uniform(0.8, 1.2))
        return min(backoff * 2, MAX_BACKOFF)
