"""What the control API presents of listeners, backends and routes: JSON built from the
listeners (before operators' changes, so a disabled backend is still listed), the
counters, the health verdicts and the operators' changes. Pure."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..model import Backend, Listener
from ..views import BackendStats, ListenerStats
from .admin import AdminState, backend_keys
from .rates import Rate

Down = Collection[tuple[str, str]]


def _health(lst: Listener, key: str, checked: set[str], down: Down) -> str:
    if key not in checked:
        return "unchecked"
    return "down" if (lst.name, key) in down else "up"


def backend_view(lst: Listener, key: str, b: Backend, stats: BackendStats | None,
                 checked: set[str], down: Down,
                 admin: AdminState) -> dict[str, Any]:
    a = admin.get(lst.name, key)
    st = stats or BackendStats()
    host, port = lst.backend_address(b) if lst.http is None else b.address
    return {"key": key, "address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "weight": b.weight, "admin_weight": a.weight, "state": a.state,
            "effective_weight": 0 if a.state != "ready" else
            (a.weight if a.weight is not None else b.weight),
            "health": _health(lst, key, checked, down), "active": st.active,
            "connections": st.connections, "requests": st.requests,
            "connect_failures": st.connect_failures, "bytes_in": st.bytes_in,
            "bytes_out": st.bytes_out}


def listener_state(up: int, total: int) -> str:
    """A listener's worst state in a word: ``down`` when no backend can take a flow,
    ``degraded`` when some cannot (down, drained, disabled or weighted 0), else ``ok``."""
    if up == 0:
        return "down"
    return "degraded" if up < total else "ok"


def _usable(lst: Listener, key: str, b: Backend, checked: set[str], down: Down,
            admin: AdminState) -> bool:
    """Whether a backend takes new flows: healthy (or unchecked), ready, weight above 0."""
    a = admin.get(lst.name, key)
    weight = a.weight if a.weight is not None else b.weight
    return a.state == "ready" and weight > 0 and not (key in checked and
                                                       (lst.name, key) in down)


def listener_summary(lst: Listener, stats: ListenerStats | None,
                     down: Down, admin: AdminState, path: str = "user",
                     rate: Rate | None = None) -> dict[str, Any]:
    """One line's worth: counts of backends by health and admin state, counters, their
    ``rate`` (per second, on the daemon's clock), and the datapath that serves it
    (``path``)."""
    st = stats or ListenerStats()
    members = backend_keys(lst)
    checked = {k for k, _, _ in lst.checked()}
    n_down = sum(1 for k in checked if (lst.name, k) in down)
    n_admin = sum(1 for k, _ in members if admin.get(lst.name, k).state != "ready")
    up = sum(1 for k, b in members if _usable(lst, k, b, checked, down, admin))
    return {"name": lst.name, "protocol": lst.protocol, "bind": lst.bind_text,
            "datapath": path, "balance": lst.balance, "backends": len(members), "down": n_down,
            "not_ready": n_admin, "up": up, "state": listener_state(up, len(members)),
            "active": sum(b.active for b in st.backends.values()),
            "accepted": st.accepted, "requests": st.requests, "no_backend": st.no_backend,
            "bytes_in": sum(b.bytes_in for b in st.backends.values()),
            "bytes_out": sum(b.bytes_out for b in st.backends.values()),
            "rate": (rate or Rate()).as_json()}


def listener_detail(lst: Listener, stats: ListenerStats | None,
                    down: Down, admin: AdminState, path: str = "user",
                    rate: Rate | None = None) -> dict[str, Any]:
    """The summary plus every pool with its backends."""
    st = stats or ListenerStats()
    checked = {k for k, _, _ in lst.checked()}
    out = listener_summary(lst, stats, down, admin, path, rate)
    if lst.http is None:
        pools = [("", lst.balance, [(lst.backend_key(b), b) for b in lst.backends])]
    else:
        pools = [(p.name, p.balance, [(f"{p.name}/{b.key}", b) for b in p.backends])
                 for p in lst.http.pools]
    out["pools"] = [{"name": name, "balance": balance,
                     "backends": [backend_view(lst, k, b, st.backends.get(k), checked, down,
                                               admin) for k, b in members]}
                    for name, balance, members in pools]
    out["left_out"] = list(lst.left_out)
    if lst.http is not None:
        out["bad_requests"] = st.bad_requests
        out["statuses"] = dict(st.statuses)
    return out


def route_views(listeners: tuple[Listener, ...]) -> list[dict[str, Any]]:
    """Every HTTP route as host, path and type -> pool -> backends (a pool learned from
    the cluster is named after its Service and port)."""
    out = []
    for lst in listeners:
        if lst.http is None:
            continue
        pools = {p.name: p for p in lst.http.pools}
        for r in lst.http.routes:
            for pr in r.paths:
                p = pools.get(pr.pool)
                out.append({"listener": lst.name, "host": r.host or "*", "path": pr.path,
                            "type": pr.type, "pool": pr.pool,
                            "backends": [b.key for b in p.backends] if p else []})
        if lst.http.default_pool:
            p = pools.get(lst.http.default_pool)
            out.append({"listener": lst.name, "host": "*", "path": "(default)",
                        "type": "default", "pool": lst.http.default_pool,
                        "backends": [b.key for b in p.backends] if p else []})
    return out
