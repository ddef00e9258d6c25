"""Prometheus metrics: the counters of every worker added up, the health verdicts, HA
and cluster sync, read from the services' views at scrape time. The endpoint is served in
the control process's trio loop (like the control API), so the collector runs in the
thread that owns the state it reads."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..views import HaView, PathsView, SyncView, Traffic, VrrpState
from .http import Exchange, Refusal, accept_forever
from .plane import Views

log = logging.getLogger("edgelb.control")


class StatsCollector(Collector):
    """Reads the views at scrape time, and how many follow streams are open."""

    def __init__(self, views: Views, streams: Callable[[], int]) -> None:
        self.views = views
        self.streams = streams

    def collect(self) -> Iterator[Metric]:
        totals = self.views.traffic()
        snap = self.views.snapshot()
        info = GaugeMetricFamily("edgelb_snapshot_version", "Snapshot in force")
        info.add_metric([], snap.version)
        yield info
        failures = CounterMetricFamily("edgelb_reload_failures", "Reloads refused (config "
                                       "errors, or listeners that could not be bound)")
        failures.add_metric([], snap.reload_failures)
        unbound = GaugeMetricFamily("edgelb_listeners_unbound", "Listeners of the Snapshot "
                                    "in force that could not be bound")
        unbound.add_metric([], len(snap.bind_errors))
        streams = GaugeMetricFamily("edgelb_control_streams", "Follow streams open on the "
                                    "control API")
        streams.add_metric([], self.streams())
        yield from (failures, unbound, streams)
        yield from _kernel_metrics(self.views.paths())
        yield from _families(totals, _LISTENER_COUNTERS)
        yield from _families(totals, _BACKEND_COUNTERS)
        down = self.views.health().down
        up = GaugeMetricFamily("edgelb_backend_up", "Active health verdict (1 up)",
                               labels=["listener", "backend"])
        for name, st in totals.items():
            for key in st.backends:
                up.add_metric([name, key], 0 if (name, key) in down else 1)
        yield up
        http = {n: st for n, st in totals.items()
                if st.requests or st.routes or st.bad_requests}
        yield from _families(http, _HTTP_COUNTERS)
        yield from _http_metrics(http)
        yield from _ha_metrics(self.views.ha())
        sync = self.views.sync()
        if sync is not None:
            yield from _cluster_metrics(sync)


def _kernel_metrics(paths: PathsView) -> Iterator[Metric]:
    served = GaugeMetricFamily("edgelb_listener_kernel", "1 while the kernel datapath "
                               "serves the listener, 0 in user space", labels=["listener"])
    for name, path in paths.listeners.items():
        served.add_metric([name], 1 if path == "kernel" else 0)
    yield served
    changes = CounterMetricFamily("edgelb_kernel_rules_changes", "Kernel rule transactions "
                                  "applied")
    changes.add_metric([], paths.rules_changes)
    failures = CounterMetricFamily("edgelb_kernel_rules_failures", "Kernel rule "
                                   "transactions nft refused (the rules in force stayed)")
    failures.add_metric([], paths.rules_failures)
    seconds = GaugeMetricFamily("edgelb_kernel_rules_seconds", "The last kernel rule "
                                "change: from its Snapshot to the rules in force")
    seconds.add_metric([], paths.rules_seconds)
    yield from (changes, failures, seconds)


def _ha_metrics(ha: HaView) -> Iterator[Metric]:
    leader = GaugeMetricFamily("edgelb_ha_leader", "1 while this box leads (writes "
                               "status); always 1 when standalone")
    leader.add_metric([], 1 if ha.leader else 0)
    yield leader
    # The first virtual router: IPv4's when there is one (they start in version order).
    if ha.routers:
        router = ha.routers[0]
        state = GaugeMetricFamily("edgelb_vrrp_state", "1 for the VRRP state this box is "
                                  "in", labels=["state"])
        for s in VrrpState:
            state.add_metric([str(s)], 1 if router.state == s else 0)
        prio = GaugeMetricFamily("edgelb_vrrp_priority", "The VRRP priority in force "
                                 "(lowered by failing tracked conditions)")
        prio.add_metric([], router.priority)
        yield from (state, prio)
    if ha.mode == "bgp":
        up = GaugeMetricFamily("edgelb_bgp_session_up", "1 while the BGP session to a "
                               "peer is established", labels=["peer"])
        bfd = GaugeMetricFamily("edgelb_bgp_bfd_up", "1 while the BFD session to a peer "
                                "is up (peers with bfd: true)", labels=["peer"])
        for session in ha.sessions:
            up.add_metric([session.peer], 1 if session.established else 0)
            if session.bfd:
                bfd.add_metric([session.peer], 1 if session.bfd == "Up" else 0)
        vips = GaugeMetricFamily("edgelb_bgp_vip_announced", "1 while this box announces "
                                 "the VIP, 0 while it withdraws it", labels=["vip"])
        for v in ha.vips:
            vips.add_metric([v.vip], 1 if v.announced else 0)
        yield from (up, bfd, vips)


def _cluster_metrics(sync: SyncView) -> Iterator[Metric]:
    up = GaugeMetricFamily("edgelb_cluster_watch_up", "1 while a followed collection is "
                           "in sync with the API, 0 while degraded (the last good state "
                           "keeps serving)", labels=["watch"])
    errors = CounterMetricFamily("edgelb_cluster_watch_errors", "Failed list or watch "
                                 "calls", labels=["watch"])
    for w in sync.watches:
        up.add_metric([w.name], 1 if w.state == "synced" else 0)
        errors.add_metric([w.name], w.errors)
    changes = CounterMetricFamily("edgelb_cluster_changes", "Objects changes seen")
    changes.add_metric([], sync.changes)
    writes = CounterMetricFamily("edgelb_cluster_status_writes", "Status updates written")
    writes.add_metric([], sync.status_writes)
    vips = GaugeMetricFamily("edgelb_cluster_vips", "VIPs allocated to services")
    vips.add_metric([], sync.vips)
    problems = GaugeMetricFamily("edgelb_cluster_problems", "Objects edgelb cannot serve "
                                 "as asked (each also an Event)")
    problems.add_metric([], sync.problems)
    yield from (up, errors, changes, writes, vips, problems)


# (family, name, help, attribute): one series per listener (of ListenerStats) or per
# listener and backend (of BackendStats).
_LISTENER_COUNTERS = [
    ("counter", "edgelb_listener_accepted", "Connections or UDP flows accepted", "accepted"),
    ("counter", "edgelb_listener_no_backend", "Connections closed at once because no "
     "backend was usable", "no_backend"),
    ("counter", "edgelb_listener_over_limit", "Connections refused by max_connections",
     "over_limit"),
    ("counter", "edgelb_udp_evicted", "UDP flows evicted by max_flows", "udp_evicted"),
    ("counter", "edgelb_listener_exhausted", "Accepts paused and flows refused because this "
     "box ran out of descriptors or memory", "exhausted"),
]
_HTTP_COUNTERS = [
    ("counter", "edgelb_http_requests", "HTTP requests received", "requests"),
    ("counter", "edgelb_http_bad_requests", "Requests refused as malformed or over a "
     "limit", "bad_requests"),
    ("counter", "edgelb_http_timeouts", "Requests ended by a timeout (408, 504, stalled "
     "bodies)", "timeouts"),
    ("counter", "edgelb_tls_handshake_failures", "TLS handshakes that failed",
     "tls_failures"),
    ("counter", "edgelb_access_log_dropped", "Access log lines dropped: the buffer was "
     "full (a slow target) or the target refused the write", "access_log_dropped"),
    ("backend counter", "edgelb_backend_requests", "HTTP requests sent to a backend",
     "requests"),
]
_BACKEND_COUNTERS = [
    ("backend gauge", "edgelb_backend_active", "Open flows", "active"),
    ("backend counter", "edgelb_backend_connections", "Flows forwarded", "connections"),
    ("backend counter", "edgelb_backend_connect_failures", "Failed connects",
     "connect_failures"),
    ("backend counter", "edgelb_backend_bytes_in", "Bytes client->backend", "bytes_in"),
    ("backend counter", "edgelb_backend_bytes_out", "Bytes backend->client", "bytes_out"),
]


def _families(totals: Traffic, specs: list[tuple[str, str, str, str]]
              ) -> Iterator[Metric]:
    for kind, metric, help_, attr in specs:
        per_backend = kind.startswith("backend")
        labels = ["listener", "backend"] if per_backend else ["listener"]
        fam: CounterMetricFamily | GaugeMetricFamily = (
            GaugeMetricFamily(metric, help_, labels=labels) if kind.endswith("gauge")
            else CounterMetricFamily(metric, help_, labels=labels))
        for name, st in totals.items():
            if not per_backend:
                fam.add_metric([name], getattr(st, attr))
                continue
            for key, b in st.backends.items():
                fam.add_metric([name, key], getattr(b, attr))
        yield fam


def _http_metrics(totals: Traffic) -> Iterator[Metric]:
    resp = CounterMetricFamily("edgelb_http_responses", "Responses by status class",
                               labels=["listener", "class"])
    route = CounterMetricFamily("edgelb_http_route_requests", "Requests by matched route",
                                labels=["listener", "route"])
    for name, st in totals.items():
        for cls, n in sorted(st.statuses.items()):
            resp.add_metric([name, cls], n)
        for label, n in sorted(st.routes.items()):
            route.add_metric([name, label], n)
    yield from (resp, route)


def open_metrics_socket(bind: tuple[str, int]) -> socket.socket:
    """The listening socket of the metrics endpoint (raises OSError)."""
    family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(bind)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


# A scraper gets this long to send its request.
SCRAPE_PATIENCE = 10.0


async def serve_metrics(sock: socket.socket, views: Views, streams: Callable[[], int],
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Answer ``GET /metrics`` on ``sock`` until cancelled."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(views, streams))
    listener = trio.socket.from_stdlib_socket(sock)
    task_status.started()
    with listener:
        await accept_forever(listener, lambda conn: _scrape(conn, registry))


async def _scrape(conn: trio.socket.SocketType, registry: CollectorRegistry) -> None:
    try:
        async with trio.SocketStream(conn) as stream:
            ex = Exchange(stream)
            try:
                with trio.fail_after(SCRAPE_PATIENCE):
                    req = await ex.request(0)
            except Refusal as e:
                await ex.answer(e.status, e.message.encode() + b"\n",
                                [("Content-Type", "text/plain")])
                return
            if req is None:
                return
            if req.method not in ("GET", "HEAD"):
                await ex.answer(405, b"GET /metrics\n", [("Content-Type", "text/plain")])
                return
            body = generate_latest(registry) if req.method == "GET" else b""
            await ex.answer(200, body, [("Content-Type", CONTENT_TYPE_LATEST)])
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return  # the scraper left
    except Exception:
        log.exception("metrics: a scrape failed")
