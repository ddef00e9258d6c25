"""Prometheus metrics: the counters of every worker added up, served by prometheus-client
on the configured address."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .datapath.flows import ListenerStats

if TYPE_CHECKING:
    from .daemon import Daemon


class StatsCollector(Collector):
    """Reads the daemon's counters, added up across workers, at scrape time."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        totals = self.daemon.stats_snapshot()
        snap = self.daemon.snapshot
        info = GaugeMetricFamily("edgelb_snapshot_version", "Snapshot in force")
        info.add_metric([], snap.version if snap else 0)
        yield info
        yield from _families(totals, _LISTENER_COUNTERS)
        yield from _families(totals, _BACKEND_COUNTERS)
        down = set(self.daemon.health.down)
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
        yield from _cluster_metrics(self.daemon)


def _cluster_metrics(daemon: Daemon) -> Iterator[Metric]:
    leader = GaugeMetricFamily("edgelb_ha_leader", "1 while this box leads (writes "
                               "status); always 1 when standalone")
    leader.add_metric([], 1 if daemon.is_leader() else 0)
    yield leader
    # The first virtual router: IPv4's when there is one (they start in version order).
    vrrp = daemon.vrrps[0][0] if daemon.vrrps else None
    if vrrp is not None:
        state = GaugeMetricFamily("edgelb_vrrp_state", "1 for the VRRP state this box is "
                                  "in", labels=["state"])
        for s in ("initialize", "backup", "master"):
            state.add_metric([s], 1 if vrrp.state == s else 0)
        prio = GaugeMetricFamily("edgelb_vrrp_priority", "The VRRP priority in force "
                                 "(lowered by failing tracked conditions)")
        prio.add_metric([], vrrp.priority)
        yield from (state, prio)
    sync = daemon.sync
    if sync is None:
        return
    up = GaugeMetricFamily("edgelb_cluster_watch_up", "1 while a followed collection is "
                           "in sync with the API, 0 while degraded (the last good state "
                           "keeps serving)", labels=["watch"])
    errors = CounterMetricFamily("edgelb_cluster_watch_errors", "Failed list or watch "
                                 "calls", labels=["watch"])
    for f in list(sync.follows):
        up.add_metric([f.name], 1 if f.state == "synced" else 0)
        errors.add_metric([f.name], f.errors)
    changes = CounterMetricFamily("edgelb_cluster_changes", "Objects changes seen")
    changes.add_metric([], sync.changes)
    writes = CounterMetricFamily("edgelb_cluster_status_writes", "Status updates written")
    writes.add_metric([], daemon.status_writes)
    vips = GaugeMetricFamily("edgelb_cluster_vips", "VIPs allocated to services")
    vips.add_metric([], len(daemon.ipam.by_service) if daemon.ipam is not None else 0)
    problems = GaugeMetricFamily("edgelb_cluster_problems", "Objects edgelb cannot serve "
                                 "as asked (each also an Event)")
    problems.add_metric([], len(daemon.problems_seen))
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
]
_HTTP_COUNTERS = [
    ("counter", "edgelb_http_requests", "HTTP requests received", "requests"),
    ("counter", "edgelb_http_bad_requests", "Requests refused as malformed or over a "
     "limit", "bad_requests"),
    ("counter", "edgelb_http_timeouts", "Requests ended by a timeout (408, 504, stalled "
     "bodies)", "timeouts"),
    ("counter", "edgelb_tls_handshake_failures", "TLS handshakes that failed",
     "tls_failures"),
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


def _families(totals: dict[str, ListenerStats], specs: list[tuple[str, str, str, str]]
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


def _http_metrics(totals: dict[str, ListenerStats]) -> Iterator[Metric]:
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


def start_metrics_server(bind: tuple[str, int], daemon: Daemon) -> None:
    """Serve /metrics on ``bind`` from a daemon thread of prometheus-client's."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(daemon))
    start_http_server(bind[1], addr=bind[0], registry=registry)
