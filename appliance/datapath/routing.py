"""Kubernetes Ingress routing (networking.k8s.io/v1), compiled for lookups that do not scan
every rule.

The semantics, as the ingress-controller-conformance features check them:

* A rule's host is exact (``foo.example.com``) or a wildcard (``*.example.com``) that
  matches exactly one DNS label (``bar.example.com``, not ``example.com`` nor
  ``a.bar.example.com``). Hosts compare case-insensitively and without the port.
* The most specific host wins: exact, then wildcard, then rules without a host. Paths
  are then matched only within that host's rules; when none matches, the request goes to
  the default pool (or gets a 404).
* ``Exact`` matches the path case-sensitively and exactly. ``Prefix`` matches whole path
  elements split by ``/``: ``/aaa`` matches ``/aaa`` and ``/aaa/bbb`` but not
  ``/aaaccc``; a trailing slash on the rule or the request is ignored.
  ``ImplementationSpecific`` is treated as ``Prefix``.
* The longest matching path wins, and ``Exact`` beats ``Prefix`` at equal length. Since an
  Exact match is as long as the whole request path, which no Prefix match exceeds, an
  Exact match always wins.
* Two rules with the same host, path and type: the first one given wins, and the later
  one is reported as a conflict.

A lookup costs one or two dict lookups for the host, one for Exact, and at most one per
path element for Prefix (longest first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import Route, path_elements, route_conflicts


def _label(host: str, path: str, kind: str) -> str:
    return f"{host or '*'}{path} {kind}"


@dataclass
class _Paths:
    """The path rules of one host, compiled."""

    exact: dict[str, tuple[str, str]] = field(default_factory=dict)
    prefix: dict[tuple[str, ...], tuple[str, str]] = field(default_factory=dict)
    depths: list[int] = field(default_factory=list)  # prefix lengths present, longest first

    def match(self, path: str) -> tuple[str, str] | None:
        """(pool, rule label) of the best matching rule, or None."""
        pool = self.exact.get(path)
        if pool is not None:
            return pool
        if not self.prefix:
            return None
        elems = path_elements(path)
        n = len(elems)
        for depth in self.depths:
            if depth <= n:
                pool = self.prefix.get(elems[:depth])
                if pool is not None:
                    return pool
        return None


class RouteTable:
    """Ingress rules compiled into dicts; ``lookup`` never scans the rule list."""

    def __init__(self, routes: tuple[Route, ...] | list[Route],
                 default_pool: str | None = None) -> None:
        self.default_pool = default_pool
        self.conflicts = route_conflicts(routes)
        self._exact: dict[str, _Paths] = {}
        self._wild: dict[str, _Paths] = {}
        self._any: _Paths | None = None
        for route in routes:
            host = route.host.lower()
            if not host:
                if self._any is None:
                    self._any = _Paths()
                paths = self._any
            elif host.startswith("*."):
                paths = self._wild.setdefault(host[2:], _Paths())
            else:
                paths = self._exact.setdefault(host, _Paths())
            for rule in route.paths:
                # A rule claiming what an earlier one claims is left out (a conflict).
                target = (rule.pool, _label(route.host, rule.path, rule.type))
                if rule.type == "Exact":
                    paths.exact.setdefault(rule.path, target)
                else:
                    paths.prefix.setdefault(path_elements(rule.path), target)
        for paths in (*self._exact.values(), *self._wild.values(),
                      *([self._any] if self._any else [])):
            paths.depths = sorted({len(k) for k in paths.prefix}, reverse=True)

    def host_paths(self, host: str) -> _Paths | None:
        """The compiled paths of the most specific rule host matching ``host``."""
        paths = self._exact.get(host)
        if paths is not None:
            return paths
        dot = host.find(".")
        if dot > 0:
            paths = self._wild.get(host[dot + 1:])
            if paths is not None:
                return paths
        return self._any

    def route(self, host: str, path: str) -> tuple[str | None, str]:
        """(pool, rule label) for a request (host already normalized, path without the
        query): the default pool when no rule matches, and pool None for a 404."""
        paths = self.host_paths(host)
        if paths is not None:
            hit = paths.match(path)
            if hit is not None:
                return hit
        return self.default_pool, "default" if self.default_pool else "no route"

    def lookup(self, host: str, path: str) -> str | None:
        """Only the pool of ``route``."""
        return self.route(host, path)[0]
