"""Ingress routing: the conformance cases one by one, then the compiled table against a
naive reference that scans every rule, on rule sets hypothesis makes up."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.datapath.http1 import normalize_host
from appliance.datapath.routing import RouteTable
from appliance.model import PathRule, Route


def table(*routes: Route, default: str | None = None) -> RouteTable:
    return RouteTable(routes, default)


def r(host: str, *paths: tuple[str, str, str]) -> Route:
    return Route(host, tuple(PathRule(p, t, pool) for p, t, pool in paths))


@pytest.mark.parametrize(("rule", "kind", "request_path", "hit"), [
    ("/", "Prefix", "/anything", True),
    ("/foo", "Prefix", "/foo", True),
    ("/foo", "Prefix", "/foo/", True),
    ("/foo/", "Prefix", "/foo", True),
    ("/foo", "Prefix", "/foo/bar", True),
    ("/foo", "Prefix", "/foobar", False),
    ("/aaa/bbb", "Prefix", "/aaa/bbbxyz", False),
    ("/aaa/bbb", "Prefix", "/aaa/bbb/ccc", True),
    ("/foo", "Prefix", "/FOO", False),
    ("/foo", "Exact", "/foo", True),
    ("/foo", "Exact", "/foo/", False),
    ("/foo/", "Exact", "/foo", False),
    ("/foo", "Exact", "/Foo", False),
    ("/foo", "ImplementationSpecific", "/foo/x", True),
    ("/foo", "ImplementationSpecific", "/foox", False),
])
def test_path_types(rule: str, kind: str, request_path: str, hit: bool) -> None:
    t = table(r("", (rule, kind, "p")))
    assert t.lookup("any.host", request_path) == ("p" if hit else None)


def test_longest_match_and_exact_beats_prefix() -> None:
    t = table(r("", ("/", "Prefix", "root"), ("/a", "Prefix", "a"), ("/a/b", "Prefix", "ab"),
                ("/a/b", "Exact", "ab-exact")))
    assert t.lookup("h", "/a/b") == "ab-exact"
    assert t.lookup("h", "/a/b/") == "ab"
    assert t.lookup("h", "/a/b/c") == "ab"
    assert t.lookup("h", "/a/c") == "a"
    assert t.lookup("h", "/x") == "root"


def test_hosts() -> None:
    t = table(r("foo.example.com", ("/", "Prefix", "foo")),
              r("*.example.com", ("/", "Prefix", "wild")),
              r("", ("/", "Prefix", "any")), default="dflt")
    assert t.lookup(normalize_host("FOO.Example.com:8080"), "/") == "foo"
    assert t.lookup("bar.example.com", "/") == "wild"
    assert t.lookup("a.bar.example.com", "/") == "any"
    assert t.lookup("example.com", "/") == "any"
    assert t.lookup("other.org", "/") == "any"


def test_no_match_goes_to_default_or_404() -> None:
    t = table(r("foo.com", ("/api", "Prefix", "api")), default="dflt")
    assert t.lookup("foo.com", "/web") == "dflt"
    assert t.lookup("bar.com", "/api") == "dflt"
    assert table(r("foo.com", ("/api", "Prefix", "api"))).lookup("foo.com", "/web") is None


def test_conflicts_first_wins_and_reported() -> None:
    t = table(r("foo.com", ("/a", "Prefix", "one")), r("FOO.com", ("/a/", "Prefix", "two")))
    assert t.lookup("foo.com", "/a") == "one"
    assert len(t.conflicts) == 1 and "/a/" in t.conflicts[0]


@pytest.mark.parametrize(("raw", "host"), [
    ("Foo.COM", "foo.com"), ("foo.com:80", "foo.com"), ("[::1]:8080", "[::1]"),
    ("127.0.0.1:80", "127.0.0.1"), ("foo.com.", "foo.com"),
])
def test_normalize_host(raw: str, host: str) -> None:
    assert normalize_host(raw) == host


# -- the reference ------------------------------------------------------------------------

def reference(routes: list[Route], default: str | None, host: str, path: str) -> str | None:
    """The Ingress rules read literally, scanning every rule on every request."""
    def host_rank(rule_host: str) -> int | None:
        rule_host = rule_host.lower()
        if rule_host == "":
            return 0
        if rule_host.startswith("*."):
            label, _, rest = host.partition(".")
            return 1 if label and rest == rule_host[2:] else None
        return 2 if rule_host == host else None

    ranks = [(host_rank(rt.host), rt) for rt in routes]
    best = max((rank for rank, _ in ranks if rank is not None), default=None)
    if best is None:
        return default
    candidates: list[tuple[int, int, int, str]] = []  # (length, exact?, -order, pool)
    order = 0
    for rank, rt in ranks:
        if rank != best:
            continue
        for rule in rt.paths:
            order += 1
            if rule.type == "Exact":
                if path == rule.path:
                    candidates.append((len(path), 1, -order, rule.pool))
            else:
                want = [e for e in rule.path.split("/")[1:]]
                got = [e for e in path.split("/")[1:]]
                if want and want[-1] == "":
                    want.pop()
                if got and got[-1] == "":
                    got.pop()
                if got[: len(want)] == want:
                    # Length of the rule without its trailing slash ("//" is longer than "/").
                    length = len(rule.path) - (1 if rule.path.endswith("/") else 0)
                    candidates.append((length, 0, -order, rule.pool))
    if not candidates:
        return default
    # Longest first; Exact beats Prefix; among equals (the same rule given twice), the first.
    return max(candidates)[3]


labels = st.sampled_from(["a", "b", "foo", "x"])
paths = st.lists(st.sampled_from(["a", "b", "ab", "A", ""]), max_size=4).map(
    lambda parts: "/" + "/".join(parts))
hosts = st.one_of(
    st.just(""),
    st.lists(labels, min_size=1, max_size=3).map(".".join),
    st.lists(labels, min_size=1, max_size=2).map(lambda ls: "*." + ".".join(ls)),
)
rules = st.builds(PathRule, paths, st.sampled_from(["Exact", "Prefix",
                                                    "ImplementationSpecific"]),
                  st.sampled_from(["p1", "p2", "p3", "p4"]))
route_lists = st.lists(st.builds(Route, hosts, st.lists(rules, max_size=4).map(tuple)),
                       max_size=5)


@settings(max_examples=600, deadline=None)
@given(route_lists, st.sampled_from([None, "dflt"]),
       st.lists(labels, min_size=1, max_size=3).map(".".join), paths)
def test_table_agrees_with_reference(routes: list[Route], default: str | None, host: str,
                                     path: str) -> None:
    assert RouteTable(routes, default).lookup(host, path) == reference(routes, default,
                                                                       host, path)
