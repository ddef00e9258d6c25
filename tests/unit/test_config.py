"""Config parsing: a valid file becomes a Snapshot; every kind of mistake names its key
path and line, and all mistakes are reported at once."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import (
    ConfigError,
    ConfigIssue,
    load_text,
    parse_address,
    parse_duration,
)

GOOD = """\
workers: 2
drain_timeout: 10s
listeners:
  - name: web
    bind: 127.0.0.1:8080
    protocol: tcp
    balance: least_conn
    backends:
      - {address: 127.0.0.1:9001, weight: 3}
      - 127.0.0.1:9002
    health: {type: http, interval: 1s, timeout: 500ms, rise: 2, fall: 3, path: /hz}
    timeouts: {connect: 250ms, idle: 5m}
    proxy_protocol: v2
  - name: dns
    bind: "[::1]:5353"
    protocol: udp
    backends: ["[::1]:9053"]
"""


def test_good_config_builds_snapshot() -> None:
    snap = load_text(GOOD)
    assert snap.workers == 2
    assert snap.drain_timeout == 10.0
    web, dns = snap.listeners
    assert web.bind == ("127.0.0.1", 8080)
    assert [b.weight for b in web.backends] == [3, 1]
    assert web.health.type == "http" and web.health.path == "/hz"
    assert web.timeouts.connect == 0.25 and web.timeouts.idle == 300.0
    assert web.proxy_protocol == "v2"
    assert dns.bind == ("::1", 5353) and dns.health.type == "none"
    assert dns.timeouts.idle == 30.0  # UDP's own default
    assert dns.bind_text == "[::1]:5353"


def test_digest_tracks_content_not_version() -> None:
    assert load_text(GOOD, version=1).digest == load_text(GOOD, version=7).digest
    assert load_text(GOOD).digest != load_text(GOOD.replace("weight: 3", "weight: 4")).digest


def _errors(text: str) -> list[tuple[str, int, str]]:
    with pytest.raises(ConfigError) as ei:
        load_text(textwrap.dedent(text))
    return [(i.path, i.line, i.message) for i in ei.value.issues]


BASE = """\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    backends: [127.0.0.1:9001]
"""


@pytest.mark.parametrize(
    ("text", "path", "line", "words"),
    [
        # 1. unknown key, with a suggestion
        (BASE + "    protocl: tcp\n", "listeners[0].protocl", 5, "did you mean 'protocol'"),
        # 2. wrong type
        (BASE.replace("backends: [127.0.0.1:9001]", "backends: 127.0.0.1:9001"),
         "listeners[0].backends", 4, "expected a list"),
        # 3. duplicate bind
        (BASE + "  - name: web2\n    bind: 127.0.0.1:8080\n    backends: [127.0.0.1:9]\n",
         "listeners[1].bind", 6, "duplicate bind"),
        # 4. unparseable address
        (BASE.replace("bind: 127.0.0.1:8080", "bind: 127.0.0.300:8080"),
         "listeners[0].bind", 3, "not an IP address"),
        # 5. port out of range
        (BASE.replace("127.0.0.1:9001", "127.0.0.1:70000"),
         "listeners[0].backends[0].address", 4, "not in 1-65535"),
        # 6. bad duration
        (BASE + "    timeouts: {connect: 1 sec}\n", "listeners[0].timeouts.connect", 5,
         "not a duration"),
        # 7. bad enum
        (BASE + "    balance: random\n", "listeners[0].balance", 5, "not one of"),
        # 8. missing required key
        ("listeners:\n  - name: web\n    backends: [127.0.0.1:1]\n", "listeners[0].bind", 2,
         "is required"),
        # 9. duplicate key in a mapping
        (BASE + "    balance: p2c\n    balance: maglev\n", "listeners[0].balance", 6,
         "duplicate key"),
        # 10. weight of the wrong type
        (BASE.replace("[127.0.0.1:9001]", "[{address: 127.0.0.1:9001, weight: heavy}]"),
         "listeners[0].backends[0].weight", 4, "whole number"),
        # 11. duplicate listener name
        (BASE + "  - name: web\n    bind: 127.0.0.1:8081\n    backends: [127.0.0.1:9]\n",
         "listeners[1].name", 5, "duplicate listener name"),
        # 12. workers out of range
        ("workers: 0\n" + BASE, "workers", 1, "not in 1-256"),
        # 13. PROXY protocol on UDP
        (BASE.replace("bind:", "protocol: udp\n    bind:") + "    proxy_protocol: v1\n",
         "listeners[0].proxy_protocol", 6, "only for tcp"),
        # 14. an unknown top-level key
        ("listners: []\n", "listners", 1, "did you mean 'listeners'"),
        # 15. duplicate backend
        (BASE.replace("[127.0.0.1:9001]", "[127.0.0.1:9001, 127.0.0.1:9001]"),
         "listeners[0].backends[1].address", 4, "duplicate backend"),
        # 16. health path that is not a path
        (BASE + "    health: {type: http, path: healthz}\n", "listeners[0].health.path", 5,
         "HTTP path"),
    ],
)
def test_broken_config_names_key_and_line(text: str, path: str, line: int, words: str) -> None:
    errors = _errors(text)
    assert any(p == path and ln == line and words in m for p, ln, m in errors), errors


def test_yaml_syntax_error_has_line() -> None:
    errors = _errors("listeners:\n  - name: web\n    bind: [unclosed\n")
    assert errors[0][1] >= 3 and "YAML syntax" in errors[0][2]


def test_all_errors_reported_at_once() -> None:
    errors = _errors("workers: many\nlisteners:\n  - name: a\n    bind: nowhere\n"
                     "    backends: [x]\n")
    paths = {p for p, _, _ in errors}
    assert {"workers", "listeners[0].bind", "listeners[0].backends[0].address"} <= paths


def test_tcp_and_udp_may_share_a_port() -> None:
    snap = load_text(BASE + "  - name: u\n    protocol: udp\n    bind: 127.0.0.1:8080\n"
                     "    backends: [127.0.0.1:9]\n")
    assert len(snap.listeners) == 2


@pytest.mark.parametrize(("text", "secs"), [("500ms", 0.5), ("1s", 1.0), ("2m", 120.0),
                                             ("1h", 3600.0), (3, 3.0), ("1.5s", 1.5)])
def test_durations(text: str | int, secs: float) -> None:
    assert parse_duration(text) == secs


def test_addresses() -> None:
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("10.0.0.1:443") == ("10.0.0.1", 443)
    for bad in ("::1:80", "host:80", "1.2.3.4", "1.2.3.4:0", "[::1]80"):
        with pytest.raises(ValueError, match=r"not|port"):
            parse_address(bad)


def test_empty_file_is_a_valid_config_with_nothing_to_serve() -> None:
    assert load_text("").listeners == ()


HTTP = """\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    protocol: http
    routes:
      - host: foo.example.com
        paths:
          - {path: /api, type: Prefix, pool: api}
    default_pool: api
    pools:
      api: {balance: least_conn, backends: [127.0.0.1:9001]}
"""


def test_http_listener_builds_routes_and_pools() -> None:
    snap = load_text(HTTP + "    limits: {max_headers: 50}\n    trusted_proxies: [10.0.0.0/8]\n"
                            "    timeouts: {request: 5s, response: 30s}\n")
    lst = snap.listeners[0]
    assert lst.http is not None and lst.http.default_pool == "api"
    assert lst.http.routes[0].paths[0].pool == "api"
    assert lst.http.pools[0].balance == "least_conn"
    assert lst.http.limits.max_headers == 50 and lst.http.trusted_proxies == ("10.0.0.0/8",)
    assert (lst.timeouts.request, lst.timeouts.response) == (5.0, 30.0)
    assert [k for k, *_ in lst.checked()] == ["api/127.0.0.1:9001"]


def test_http_shorthand_backends_make_the_default_pool() -> None:
    snap = load_text("listeners:\n  - {name: w, bind: 127.0.0.1:80, protocol: http, "
                     "backends: [127.0.0.1:1]}\n")
    http = snap.listeners[0].http
    assert http is not None and http.default_pool == "default"
    assert http.pools[0].backends[0].port == 1


@pytest.mark.parametrize(("text", "path", "line", "words"), [
    (HTTP.replace("pool: api}", "pool: apx}"), "listeners[0].routes[0].paths[0].pool", 8,
     "no pool named 'apx'"),
    (HTTP.replace("default_pool: api", "default_pool: nope"), "listeners[0].default_pool", 9,
     "no pool named"),
    (HTTP.replace("type: Prefix", "type: Regex"), "listeners[0].routes[0].paths[0].type", 8,
     "not one of"),
    (HTTP.replace("path: /api", "path: api"), "listeners[0].routes[0].paths[0].path", 8,
     "HTTP path"),
    (HTTP.replace("host: foo.example.com", "host: foo..com"), "listeners[0].routes[0].host",
     6, "not a host name"),
    (HTTP.replace("pool: api}\n", "pool: api}\n          - {path: /api/, pool: api}\n", 1),
     "listeners[0].routes", 6, "given twice"),
    (HTTP.replace("protocol: http", "protocol: https"), "listeners[0].tls", 4,
     "needs at least one certificate"),
    (HTTP + "    tls: [{hosts: [a], cert: /nonexistent.crt, key: /nonexistent.key}]\n",
     "listeners[0].tls", 12, "only for https"),
    (HTTP.replace("protocol: http", "protocol: tcp"), "listeners[0].routes", 6,
     "only for http and https"),
    (HTTP + "    limits: {max_headers: 0}\n", "listeners[0].limits.max_headers", 12, "not in"),
    (HTTP + "    trusted_proxies: [10.0.0.300]\n", "listeners[0].trusted_proxies[0]", 12,
     "not an address"),
    (HTTP + "    access_log: maybe\n", "listeners[0].access_log", 12, "true or false"),
])
def test_broken_http_config(text: str, path: str, line: int, words: str) -> None:
    errors = _errors(text)
    assert any(p == path and ln == line and words in m for p, ln, m in errors), errors


def test_cluster_and_ha_sections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kc = tmp_path / "kubeconfig"
    kc.write_text("{}")
    snap = load_text(f"""\
cluster:
  kubeconfig: {kc}
  address_pools: ["192.0.2.0/28", "198.51.100.1-198.51.100.9"]
  ingress: {{http: "192.0.2.100:80"}}
  namespaces: [web]
ha: {{mode: lease, identity: edge-1, lease: {{duration: 6s}}}}
""")
    assert snap.cluster is not None and snap.cluster.namespaces == ("web",)
    assert snap.cluster.ingress_http == (("192.0.2.100", 80),)
    assert (snap.ha.mode, snap.ha.identity, snap.ha.lease_duration) == ("lease", "edge-1", 6.0)


@pytest.mark.parametrize(("text", "path", "line", "words"), [
    ("cluster:\n  kubeconfig: /nonexistent/kc\n", "cluster.kubeconfig", 2, "no such file"),
    ("cluster:\n  address_pools: [192.0.2.9-192.0.2.1]\n", "cluster.address_pools[0]", 2,
     "not a range"),
    ("cluster:\n  ingress: {http: nowhere}\n", "cluster.ingress.http", 2, "host:port"),
    ("ha: {mode: lease}\n", "ha.mode", 1, "needs the cluster section"),
    ("ha: {mode: carp}\n", "ha.mode", 1, "not one of"),
    ("ha: {mode: vrrp}\n", "ha.interface", 1, "is required"),
    ("ha: {mode: vrrp, interface: eth0, vips: [10.0.0.1], track: {listeners: [web]}}\n",
     "ha.track.listeners", 1, "no listener named 'web'"),
    ("ha: {mode: vrrp, interface: eth0, vips: [10.0.0.300]}\n", "ha.vips[0]", 1,
     "not an IP address"),
    ("ha: {mode: vrrp, interface: eth0, vips: [10.0.0.1], advert_interval: 60s}\n",
     "ha.advert_interval", 1, "10ms-40.95s"),
])
def test_broken_cluster_config(text: str, path: str, line: int, words: str) -> None:
    errors = _errors(text)
    assert any(p == path and ln == line and words in m for p, ln, m in errors), errors


# -- what a file may not do to the reader (each crashed or hung it before) -------------------

_BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize(("text", "line", "words"), [
    (BASE + "\x00", 5, "#x0000 is not allowed"),
    (BASE + "\x1b", 5, "#x001b is not allowed"),
    (BASE + "\x7f", 5, "#x007f is not allowed"),
    (BASE + "\x0c", 5, "#x000c is not allowed"),
    ("workers: !foo 2\n" + BASE, 1, "tag '!foo'"),
    ("workers: " + "9" * 5000 + "\n" + BASE, 1, "cannot read this value"),
    ("[" * 100_000, 0, "nested too deeply"),
    ("a:" + " [" * 70 + "]" * 70 + "\n", 1, "nested more than 64 levels"),
    ("? [a, b]\n: 1\n" + BASE, 1, "a key must be a plain name"),
    (_BOMB, 6, "expands to more than"),
])
def test_no_file_does_more_than_fail_with_a_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_text(text, source="x.yaml")
    assert any(i.line == line and words in i.message for i in ei.value.issues), \
        ei.value.issues


def test_aliases_within_bounds_still_work() -> None:
    snap = load_text("listeners:\n"
                     "  - {name: a, bind: 127.0.0.1:80, backends: &both [127.0.0.1:1, "
                     "127.0.0.1:2]}\n"
                     "  - {name: b, bind: 127.0.0.1:81, backends: *both}\n")
    assert [len(lst.backends) for lst in snap.listeners] == [2, 2]


@pytest.mark.parametrize(("value", "words"), [
    (".nan", "not a duration"), (".inf", "not a duration"), ("-.inf", "not a duration"),
    ("-1", "negative"), ("99999999h", "longer than 30 days"), ("0", "above zero"),
])
@pytest.mark.parametrize("key", ["timeouts.connect", "timeouts.request", "timeouts.idle",
                                 "health.interval", "health.timeout"])
def test_every_duration_is_range_checked(key: str, value: str, words: str) -> None:
    section, name = key.split(".")
    errors = _errors(BASE + f"    {section}: {{{name}: {value}}}\n")
    assert any(p == f"listeners[0].{key}" and words in m for p, _, m in errors), errors


_VALID = GOOD + HTTP.replace("listeners:\n", "").replace("name: web", "name: www").replace(
    "8080", "8081")


@settings(max_examples=300, deadline=2000)
@given(st.lists(st.tuples(st.integers(0, len(_VALID)), st.integers(0, 40),
                          st.text(max_size=8)), min_size=1, max_size=6))
def test_mutated_configs_never_do_more_than_fail(edits: list[tuple[int, int, str]]) -> None:
    """Random cuts and insertions into a valid file: a Snapshot or a ConfigError, never
    another exception, and never a hang (hypothesis' deadline)."""
    text = _VALID
    for at, cut, insert in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut:]
    issues: list[ConfigIssue] = []
    try:
        load_text(text, source="x.yaml")
    except ConfigError as e:
        issues = e.issues or [ConfigIssue("", 0, "")]
    assert all(i.message for i in issues)


def test_a_parse_leaves_no_cyclic_garbage() -> None:
    """The YAML loader refers to itself and kept every node alive with it, so each
    reload left its whole YAML tree for the cycle collector: at 5,000 listeners the
    pauses to collect it (up to 200 ms, on whichever thread) stalled the event loop."""
    import gc

    text = "listeners:\n" + "".join(
        f"  - {{name: l{i}, bind: '127.0.0.1:{20000 + i}', backends: [127.0.0.1:8081]}}\n"
        for i in range(50))
    load_text(text)  # first-use caches (imports, regular expressions) are not garbage
    gc.collect()
    gc.disable()
    try:
        load_text(text)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_reading_a_config_runs_no_cycle_collection() -> None:
    """Each collection during a parse walked the whole heap (~95 ms at 5,000 listeners,
    four per reload), stalling the event loop; a parse makes no cyclic garbage, so the
    collector waits until it is done, and is on again after."""
    import gc

    text = "listeners:\n" + "".join(
        f"  - {{name: l{i}, bind: '127.0.0.1:{20000 + i}', backends: [127.0.0.1:8081]}}\n"
        for i in range(300))
    runs: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        load_text(text)
    finally:
        gc.callbacks.remove(seen)
    # At most the young generation's once the collector is back on (before: 20 here).
    assert runs in ([], [0]), runs
    assert gc.isenabled()
