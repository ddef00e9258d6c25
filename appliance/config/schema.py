"""The config schema, stated once: every key, its type and what it means. The table
drives validation (unknown keys, with a "did you mean"; types and ranges; required keys)
and the check that the README's configuration reference lists every key
(``key_paths``). Defaults are not restated here: a key that is absent keeps the default
of the model's dataclass field it sets, so each default lives in one place, the model.

``Key`` is one scalar value. ``Section`` is a mapping of entries; when it is nested
with ``flat``, its keys set fields of the enclosing object (``ha.lease.name`` sets
``HaSpec.lease_name``). ``ListOf`` and ``MapOf`` are lists and named mappings of items.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..model import BACKEND_PROTOCOLS, BALANCERS, DATAPATHS, PATH_TYPES, Proto
from . import values as v
from .values import Convert


class _Sets:
    """An entry that sets one model field: ``field``, or the one named as the key."""

    name: str
    field: str

    @property
    def target(self) -> str:
        return self.field or self.name


@dataclass(frozen=True)
class Key(_Sets):
    name: str
    conv: Convert
    help: str
    field: str = ""
    required: bool = False


@dataclass(frozen=True)
class Section:
    name: str
    entries: tuple[Entry, ...]
    help: str = ""
    flat: bool = False  # its keys set fields of the enclosing object

    @property
    def names(self) -> set[str]:
        return {e.name for e in self.entries}

    @property
    def keys(self) -> tuple[Key, ...]:
        return tuple(e for e in self.entries if isinstance(e, Key))

    def key(self, name: str) -> Key:
        found = next(e for e in self.entries if e.name == name)
        assert isinstance(found, Key)
        return found

    def list_of(self, name: str) -> ListOf:
        found = next(e for e in self.entries if e.name == name)
        assert isinstance(found, ListOf)
        return found


@dataclass(frozen=True)
class ListOf(_Sets):
    name: str
    item: Section | Convert
    help: str
    what: str = ""  # "addresses": what an error says the list should hold
    field: str = ""


@dataclass(frozen=True)
class MapOf:
    name: str
    item: Section
    help: str


Entry = Key | Section | ListOf | MapOf

HEALTH = Section("health", (
    Key("type", v.choice("none", "tcp", "http"), "active checks: `tcp` connects, `http` "
        "GETs `path` and expects `expect_status`; `none` turns them off (udp: only none)"),
    Key("interval", v.positive_duration, "between checks of one backend"),
    Key("timeout", v.positive_duration, "per check"),
    Key("rise", v.int_range(1, 100), "consecutive successes to come up"),
    Key("fall", v.int_range(1, 100), "consecutive failures to go down"),
    Key("path", v.http_path, "the path an `http` check GETs"),
    Key("expect_status", v.int_range(100, 599), "the status an `http` check expects"),
), "active health checks")

PASSIVE = Section("passive", (
    Key("failures", v.int_range(0, 1000), "consecutive failed connects from real traffic "
        "that eject a backend (0: never)"),
    Key("backoff", v.parse_duration, "the first ejection; doubles on each in a row"),
    Key("max_backoff", v.parse_duration, "the cap of the doubling"),
), "passive ejection")

TIMEOUTS = Section("timeouts", (
    Key("connect", v.positive_duration, "per backend attempt"),
    Key("idle", v.positive_duration, "a flow with no bytes either way is closed"),
    Key("request", v.positive_duration, "http: the request head, from its first byte (408)"),
    Key("keepalive", v.positive_duration, "http: an idle client connection between requests"),
    Key("body", v.positive_duration, "http: a request body may stall this long (408)"),
    Key("response", v.positive_duration, "http: a backend must start its response (504)"),
))

BACKEND = Section("backends", (
    Key("address", v.parse_address, "where to forward", required=True),
    Key("weight", v.int_range(0, 256), "share of new flows; 0 takes none"),
), "each `{address, weight}` or just `\"host:port\"`")

BACKEND_TLS = Section("tls", (
    Key("ca", v.text, "the CA bundle that signs the backends' certificates (PEM)"),
    Key("verify", v.boolean, "verify the backends' certificates"),
    Key("server_name", v.hostname, "the name to verify (and send as SNI)"),
), "HTTPS to the backends: `true` or this mapping")

BACKEND_PROTOCOL = Key("protocol", v.choice(*BACKEND_PROTOCOLS), "how backends are spoken "
                       "to: http1, h2c (HTTP/2 in the clear), h2 (HTTP/2 over TLS)")

POOL = Section("pools", (
    Key("balance", v.choice(*BALANCERS), "the balancer"),
    BACKEND_PROTOCOL,
    ListOf("backends", BACKEND, "the pool's backends"),
    HEALTH, PASSIVE, BACKEND_TLS,
), "named pools of an HTTP listener")

PATH_RULE = Section("paths", (
    Key("path", v.http_path, "the path matched"),
    Key("type", v.choice(*PATH_TYPES), "how it matches"),
    Key("pool", v.text, "the pool requests go to", required=True),
))

ROUTE = Section("routes", (
    Key("host", v.hostname, "exact, or `*.` and a domain; omitted: any host"),
    ListOf("paths", PATH_RULE, "the path rules of this host"),
), "Ingress rules")

TLS_CERT = Section("tls", (
    ListOf("hosts", v.hostname, "the SNI names this certificate serves", "host names"),
    Key("cert", v.text, "the certificate chain (PEM file)", required=True),
    Key("key", v.text, "its private key (PEM file)", required=True),
), "https: the certificates, the first one the default")

LIMITS = Section("limits", (
    Key("max_request_line", v.int_range(64, 1 << 20), "longer: 414"),
    Key("max_header_bytes", v.int_range(256, 1 << 22), "a larger head: 431"),
    Key("max_headers", v.int_range(1, 10000), "more fields: 431"),
    Key("max_concurrent_streams", v.int_range(1, 10000), "HTTP/2: streams open at once "
        "per connection"),
    Key("max_resets", v.int_range(1, 1 << 20), "HTTP/2: streams a client may reset per "
        "10 s (rapid reset)"),
    Key("max_control_frames", v.int_range(1, 1 << 20), "HTTP/2: SETTINGS and PING frames "
        "per 10 s"),
))

HTTP_ONLY = ("routes", "pools", "default_pool", "tls", "limits", "trusted_proxies",
             "access_log", "backend_keepalive", "http2", "h2c", "backend_protocol")

LISTENER = Section("listeners", (
    Key("name", v.name, "unique", required=True),
    Key("bind", v.parse_address, "the address to accept on", required=True),
    Key("protocol", v.member_of(Proto), "what it serves"),
    Key("balance", v.choice(*BALANCERS), "the balancer"),
    ListOf("backends", BACKEND, "where to forward"),
    HEALTH, PASSIVE, TIMEOUTS,
    Key("proxy_protocol", v.choice("none", "v1", "v2"), "tcp: a PROXY header towards the "
        "backends"),
    Key("max_flows", v.int_range(1, 10_000_000), "udp: flows kept"),
    Key("max_connections", v.int_range(0, 10_000_000), "open flows per worker (0: no limit)"),
    Key("backlog", v.int_range(1, 1_000_000), "the listen backlog"),
    ListOf("routes", ROUTE, "http: Ingress rules"),
    MapOf("pools", POOL, "http: named pools"),
    Key("default_pool", v.text, "http: where requests no rule matches go"),
    ListOf("tls", TLS_CERT, "https: certificates"),
    LIMITS,
    ListOf("trusted_proxies", v.ip_network, "http: whose X-Forwarded-* are kept",
           "addresses or CIDRs"),
    Key("access_log", v.boolean, "http: a line per request"),
    Key("backend_keepalive", v.int_range(0, 10000), "http: idle connections kept per "
        "backend"),
    Key("http2", v.boolean, "https: offer HTTP/2 (ALPN h2)"),
    Key("h2c", v.boolean, "http: accept HTTP/2 with prior knowledge"),
    Key("backend_protocol", v.choice(*BACKEND_PROTOCOLS), "http: how the listener's own "
        "backends are spoken to"),
    Key("datapath", v.choice(*DATAPATHS), "tcp, udp: the kernel (nftables) or user space"),
    Key("snat", v.boolean, "kernel: source NAT towards the backends"),
), "what to accept and where to forward it")

CLUSTER = Section("cluster", (
    Key("kubeconfig", v.text, "a kubeconfig file; omitted: the in-cluster service account"),
    Key("context", v.text, "a kubeconfig context"),
    ListOf("namespaces", v.text, "follow only these", "namespace names"),
    Key("load_balancer_class", v.text, "spec.loadBalancerClass of the Services served"),
    Key("default_class", v.boolean, "also serve LoadBalancer Services without a class"),
    Key("ingress_class", v.text, "an IngressClass name served"),
    ListOf("address_pools", v.address_pool, "VIPs for Services", "CIDRs or ranges"),
    Section("ingress", (
        Key("http", v.addresses, "where Ingress routes are served (one address or a "
            "list)", "ingress_http"),
        Key("https", v.addresses, "... over TLS", "ingress_https"),
        Key("h2c", v.boolean, "the http addresses also take HTTP/2 with prior knowledge",
            "ingress_h2c"),
    ), flat=True),
    Key("cross_family", v.boolean, "a VIP may forward to nodes of the other IP family"),
    Key("direct_endpoints", v.boolean, "Ingress traffic to pod IPs, not nodePorts"),
    Key("tls_dir", v.text, "where Ingress TLS Secrets are written"),
    Key("debounce", v.parse_duration, "a burst of changes becomes one rebuild"),
), "following a Kubernetes cluster")

BGP_PEER = Section("peers", (
    Key("address", v.ip_address, "the router's address", required=True),
    Key("asn", v.int_range(1, 4294967295), "its AS number", required=True),
    Key("bfd", v.boolean, "BFD on this session (fast failure detection)"),
    Key("password", v.text, "TCP MD5 password"),
    Key("hold_time", v.positive_duration, "BGP hold time (3s at least)"),
    Key("multihop", v.int_range(0, 255), "not directly connected: the TTL (0: direct)"),
    Key("port", v.int_range(1, 65535), "its BGP port"),
    Key("source", v.ip_address, "this box's address towards it"),
), "bgp: the routers to announce the VIPs to")

BGP_ANNOUNCE = Section("announce", (
    Key("prefix", v.ip_network, "the VIPs within it (a pool, or one VIP)", required=True),
    ListOf("communities", v.community, "BGP communities ASN:VALUE", "communities"),
    Key("local_pref", v.int_range(0, 4294967295), "BGP local preference (0: not set)"),
), "bgp: attributes by VIP or pool, the first prefix that holds a VIP wins")

HA = Section("ha", (
    Key("mode", v.choice("standalone", "lease", "vrrp", "bgp"), "who leads"),
    Key("identity", v.text, "lease: this box's name"),
    Section("lease", (
        Key("name", v.name, "the Lease", "lease_name"),
        Key("namespace", v.name, "its namespace", "lease_namespace"),
        Key("duration", v.parse_duration, "how long a Lease holds", "lease_duration"),
    ), flat=True),
    Key("interface", v.text, "vrrp: the interface (required)"),
    Key("vrid", v.int_range(1, 255), "vrrp: the virtual router id"),
    Key("priority", v.int_range(1, 255), "vrrp: 255 owns the addresses"),
    Key("advert_interval", v.parse_duration, "vrrp: between advertisements"),
    Key("preempt", v.boolean, "vrrp: a higher priority takes over"),
    Key("preempt_delay", v.parse_duration, "vrrp: not within this after start"),
    ListOf("vips", v.ip_interface, "vrrp: the virtual addresses", "addresses"),
    ListOf("unicast_peers", v.ip_address, "vrrp: advertise to these", "addresses"),
    Section("garp", (
        Key("count", v.int_range(1, 100), "announcements on promotion", "garp_count"),
        Key("interval", v.parse_duration, "between them", "garp_interval"),
        Key("refresh", v.parse_duration, "again this often while master", "garp_refresh"),
    ), flat=True),
    Section("track", (
        ListOf("listeners", v.text, "failing: no backend healthy", "listener names",
               "track_listeners"),
        Key("api_timeout", v.parse_duration, "failing: the API unreachable this long",
            "track_api_timeout"),
        Key("weight", v.int_range(1, 254), "priority lost per failing condition",
            "track_weight"),
    ), flat=True),
    Key("asn", v.int_range(1, 4294967295), "bgp: this box's AS number (required)"),
    Key("router_id", v.ipv4_address, "bgp: the BGP router id (required)"),
    ListOf("peers", BGP_PEER, "bgp: the routers (at least one)"),
    ListOf("communities", v.community, "bgp: communities on every VIP", "communities"),
    Key("local_pref", v.int_range(0, 4294967295), "bgp: local preference on every VIP"),
    ListOf("announce", BGP_ANNOUNCE, "bgp: attributes by VIP or pool"),
    Section("bfd", (
        Key("interval", v.positive_duration, "bgp: BFD transmit and receive interval",
            "bfd_interval"),
        Key("multiplier", v.int_range(1, 255), "bgp: missed BFD packets that end a session",
            "bfd_multiplier"),
    ), flat=True),
    Key("withdraw_wait", v.parse_duration, "bgp: after withdrawing, before draining"),
    Section("bird", (
        Key("binary", v.text, "bgp: the BIRD daemon edgelb runs", "bird_binary"),
        Key("birdc", v.text, "bgp: its control client", "birdc_binary"),
        Key("directory", v.abs_path, "bgp: where its config and socket live",
            "bird_directory"),
        ListOf("include", v.abs_path, "bgp: BIRD config files of yours to include",
               "paths", "bird_include"),
    ), flat=True),
), "high availability")

CONTROL = Section("control", (
    Key("socket", v.abs_path, "the control API's Unix socket"),
    Key("group", v.group, "the socket's group"),
    Key("audit_log", v.abs_path, "one JSON line per action"),
    Key("state_file", v.abs_path, "where operators' backend changes survive a restart"),
    Section("roles", (
        Key("admin", v.group, "the group that gives the admin role", "admin_group"),
        Key("operator", v.group, "... the operator role", "operator_group"),
        Key("viewer", v.group, "... the viewer role", "viewer_group"),
    ), flat=True),
), "the control API")

KERNEL = Section("kernel", (
    Key("table", v.nft_name, "the nftables table edgelb owns (family inet)"),
    ListOf("snat_addresses", v.ip_address, "the source NAT address, one per family",
           "addresses"),
    Key("conntrack_sync", v.text, "vrrp: the interface conntrackd replicates flows over"),
), "the kernel datapath")

ACCESS_LOG = Section("access_log", (
    Key("target", v.log_target, "stderr, syslog or a file (reopened on SIGHUP and SIGUSR1)"),
    Key("buffer", v.byte_size(4096, 1 << 26), "lines waiting to be written; beyond: dropped"),
    Key("flush", v.positive_duration, "how often the buffer is written"),
), "where the HTTP listeners' access log goes")

METRICS = Section("metrics", (
    Key("bind", v.parse_address, "Prometheus /metrics", required=True),
))

TOP = Section("", (
    Key("workers", v.workers, "datapath processes"),
    Key("drain_timeout", v.parse_duration, "how long removed backends' flows live on"),
    Key("allow_no_listeners", v.boolean, "a reload to a file without listeners may stop "
        "every listener"),
    METRICS,
    ListOf("listeners", LISTENER, "what to accept and where to forward it"),
    CLUSTER, HA, CONTROL, KERNEL, ACCESS_LOG,
))


def key_paths(section: Section = TOP, prefix: str = "") -> Iterator[str]:
    """Every key's path as the config reference writes it: ``listeners[].health.rise``,
    ``listeners[].pools.NAME.backends[].weight``."""
    for path, entry in entry_paths(section, prefix):
        if isinstance(entry, Key) or (isinstance(entry, ListOf)
                                      and not isinstance(entry.item, Section)):
            yield path


def entry_paths(section: Section = TOP, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """Every entry (keys, and the sections and lists that hold keys) with its path."""
    for e in section.entries:
        path = f"{prefix}.{e.name}" if prefix else e.name
        yield path, e
        if isinstance(e, Section):
            yield from entry_paths(e, path)
        elif isinstance(e, ListOf) and isinstance(e.item, Section):
            yield path + "[]", e
            yield from entry_paths(e.item, f"{path}[]")
        elif isinstance(e, MapOf):
            yield path + ".NAME", e
            yield from entry_paths(e.item, f"{path}.NAME")
