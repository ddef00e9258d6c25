"""What each table of the console shows: its columns (and which collapse first on a
narrow screen) and the cells of a row, from the control API's JSON; and the overview's
lines. Pure."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from appliance.control.format import FLOW_COLUMNS, bgp_summary, human_bytes

from .tables import Column, styled

# Every listener with its health: the overview's table and the backends view's list.
LISTENER_COLUMNS = (Column("STATE"), Column("LISTENER"), Column("VIP", 1), Column("PROTO", 3),
                    Column("PATH", 4), Column("UP", 1), Column("OPEN", 2), Column("RATE", 2),
                    Column("BYTES/S", 3))
BACKEND_COLUMNS = (Column("BACKEND"), Column("HEALTH"), Column("STATE"), Column("WEIGHT", 1),
                   Column("ACTIVE", 1), Column("FLOWS", 3), Column("REQ", 3), Column("FAIL", 2),
                   Column("BYTES", 2))
ROUTE_COLUMNS = (Column("LISTENER", 1), Column("HOST"), Column("PATH"), Column("TYPE", 3),
                 Column("POOL", 1), Column("BACKENDS", 2))
# AGE and STATE stay with the client and backend; the listener and the VIP, which many
# flows share, go before them.
_FLOW_DROP = {"ID": 2, "LISTENER": 3, "CLIENT": 0, "VIP": 4, "BACKEND": 0, "PROTO": 3,
              "IN": 2, "OUT": 2, "AGE": 1, "STATE": 1, "PATH": 4}
FLOW_TABLE = tuple(Column(name, _FLOW_DROP[name]) for name in FLOW_COLUMNS)


def per_second(n: float) -> str:
    return f"{n:.0f}/s" if n >= 10 or n == 0 else f"{n:.1f}/s"


def listener_cells(x: dict[str, Any]) -> list[Any]:
    """A listener's row: its worst state, where it listens, backends up of all, flows
    open, and its rate (requests for HTTP, new connections otherwise)."""
    rate = x.get("rate") or {}
    http = x["protocol"] in ("http", "https")
    flows = rate.get("requests" if http else "connections", 0.0)
    return [styled(x["state"]), x["name"], x["bind"], x["protocol"], x.get("datapath", "user"),
            f"{x['up']}/{x['backends']}", x["active"], per_second(flows),
            human_bytes(rate.get("bytes", 0)) + "/s"]


def backend_cells(b: dict[str, Any]) -> list[Any]:
    """A backend's row; WEIGHT says "set" when an operator changed it."""
    weight = str(b["effective_weight"]) + (" set" if b["admin_weight"] is not None else "")
    return [b["key"], styled(b["health"]), styled(b["state"]), weight, b["active"],
            b["connections"], b["requests"], b["connect_failures"],
            human_bytes(b["bytes_in"] + b["bytes_out"])]


def route_cells(r: dict[str, Any]) -> list[Any]:
    return [r["listener"], r["host"], r["path"], r["type"], r["pool"],
            ",".join(r["backends"]) or "-"]


def overview_lines(st: dict[str, Any]) -> list[str]:
    """The overview's head: what serves, HA and the cluster, and the traffic now."""
    snap, ha = st["snapshot"], st["ha"]
    dp = st.get("datapath")
    path = ""
    if dp is not None:
        path = f"; datapath {dp['mode']}" + (" (kernel unavailable)" if dp["why_not"] else "")
    lines = [f"snapshot v{snap['version']}: {snap['listeners']} listeners "
             f"({snap['from_cluster']} from the cluster), {count(st['workers'], 'worker')}"
             f"{path}"
             + (", DRAINING" if st["draining"] else "")]
    if ha["mode"] == "vrrp":
        routers = ", ".join(f"{r['family']} {r['state'].upper()} {r['priority']}"
                            for r in ha["routers"]) or "starting"
        peers = ", ".join(f"{p['address']} heard {p['seen_ago']}s ago" for p in ha["peers"])
        what = f"HA vrrp {routers}" + (f"; peer {peers}" if peers else "; no peer heard")
    elif ha["mode"] == "lease":
        what = f"HA lease: {'LEADER' if ha['leader'] else 'standby'}"
    elif ha["mode"] == "bgp":
        what = f"HA bgp: {bgp_summary(ha)}"
    else:
        what = "HA standalone"
    sync = st.get("sync")
    if sync is not None:
        what += f"; cluster {'in sync' if sync['synced'] else 'NOT in sync'}, " \
                f"{sync['vips']} VIPs"
    lines.append(what)
    return lines


def rates_line(st: dict[str, Any]) -> str:
    """Traffic now: open flows and the daemon's rates over its window."""
    t, r = st["totals"], st.get("rates") or {}
    return (f"traffic: {t['active']} open, {per_second(r.get('connections', 0))} new "
            f"connections, {per_second(r.get('requests', 0))} requests, "
            f"{human_bytes(r.get('bytes', 0))}/s (the last {r.get('window', 0):g}s)")


def alert_text(alerts: list[str]) -> Text:
    """The alerts in red, one a line; a quiet line when there are none."""
    if not alerts:
        return Text("no alerts", style="green")
    return Text("\n".join(f"! {a}" for a in alerts), style="bold red")


def count(n: int, thing: str) -> str:
    """``1 alert``, ``2 alerts``."""
    return f"{n} {thing}{'' if n == 1 else 's'}"
