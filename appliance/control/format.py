"""How the control API's answers read in a terminal: the tables and lines that ``edgelb
ctl`` prints and the console shows. Plain functions of the API's JSON; no I/O."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns as wide as their widest cell, two spaces apart."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}B"


def human_age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_status(st: dict[str, Any]) -> str:
    """The status as a few lines an operator reads at a glance, alerts last."""
    return "\n".join(status_lines(st) + [f"ALERT: {a}" for a in st["alerts"]])


def status_lines(st: dict[str, Any]) -> list[str]:
    """The daemon, its Snapshot, HA (with peers), sync and traffic, a line each."""
    ha = st["ha"]
    lines = [f"edgelb {st['version']} pid {st['pid']} up {human_age(st['uptime'])}, "
             f"{st['workers']} workers{', DRAINING' if st['draining'] else ''}",
             f"snapshot v{st['snapshot']['version']} ({st['snapshot']['digest']}): "
             f"{st['snapshot']['listeners']} listeners, {st['snapshot']['from_cluster']} "
             "from the cluster"]
    dp = st.get("datapath")
    if dp is not None:
        lines.append(f"datapath: {dp['mode']} ({dp['kernel_listeners']} listeners in the "
                     f"kernel, {dp['user_listeners']} in user space)"
                     + (f"; kernel unavailable: {dp['why_not']}" if dp["why_not"] else ""))
    if ha["mode"] == "vrrp":
        for r in ha["routers"]:
            lines.append(f"HA vrrp {r['family']} vrid {r['vrid']}: {r['state'].upper()} "
                         f"priority {r['priority']}/{r['configured_priority']} "
                         f"({r['reason']}); VIPs {', '.join(r['vips'])}"
                         + (f"; from the cluster {_some(r['learned'])}" if r.get("learned")
                            else ""))
        for p in ha["peers"]:
            lines.append(f"  peer {p['address']} priority {p['priority']}, heard "
                         f"{p['seen_ago']}s ago")
    elif ha["mode"] == "lease":
        lines.append(f"HA lease {ha['lease']}: {'LEADER' if ha['leader'] else 'standby'} "
                     f"(holder {ha['holder'] or 'nobody'})")
    elif ha["mode"] == "bgp":
        lines += bgp_lines(ha)
    else:
        lines.append("HA standalone")
    sync = st.get("sync")
    if sync is not None:
        lines.append(f"cluster: {'in sync' if sync['synced'] else 'NOT in sync'}, "
                     f"{sync['vips']} VIPs, {sync['changes']} changes, "
                     f"{sync['status_writes']} status writes")
    t = st["totals"]
    lines.append(f"traffic: {t['active']} open flows, {t['accepted']} accepted, "
                 f"{t['requests']} requests, {human_bytes(t['bytes_in'])} in, "
                 f"{human_bytes(t['bytes_out'])} out")
    return lines


FLOW_COLUMNS = ("ID", "LISTENER", "CLIENT", "VIP", "BACKEND", "PROTO", "IN", "OUT", "AGE",
                "STATE", "PATH")
# The field each of FLOW_COLUMNS sorts by, in the same order.
FLOW_SORTS = ("id", "listener", "client", "vip", "backend", "protocol", "bytes_in",
              "bytes_out", "age", "state", "path")


def flow_cells(f: dict[str, Any]) -> list[Any]:
    """One flow as the cells under FLOW_COLUMNS (the table here and the console's)."""
    return [f["id"], f["listener"], f["client"], f["vip"], f["backend"] or "-",
            f["protocol"], human_bytes(f["bytes_in"]), human_bytes(f["bytes_out"]),
            human_age(f["age"]), f["state"], f["path"]]


def format_flows(page: dict[str, Any]) -> str:
    rows = [flow_cells(f) for f in page["flows"]]
    shown = f"{page['offset'] + 1}-{page['offset'] + len(rows)}" if rows else "none"
    return table(FLOW_COLUMNS, rows) + \
        f"\n{shown} of {page['total']} matching ({page['all']} open)"


def format_event(e: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(e["time"]).strftime("%H:%M:%S")
    return f"{e['seq']:>6} {when} {e['kind']:<7} {e['message']}"


def format_listeners(ls: list[dict[str, Any]]) -> str:
    """``ctl listeners``: one line per listener."""
    return table(["NAME", "STATE", "PROTO", "BIND", "PATH", "UP", "DOWN", "NOT READY",
                  "ACTIVE", "ACCEPTED", "REQUESTS"],
                 [[x["name"], x["state"], x["protocol"], x["bind"], x.get("datapath", "user"),
                   f"{x['up']}/{x['backends']}", x["down"], x["not_ready"], x["active"],
                   x["accepted"], x["requests"]] for x in ls])


def format_backends(d: dict[str, Any]) -> str:
    """``ctl backends NAME``: the listener, then its backends by pool (each HTTP pool
    with its own balance). ADDRESS only where a key is not the address already."""
    members = [b for p in d["pools"] for b in p["backends"]]
    addressed = any(b["key"] != b["address"] for b in members)
    rows = [[b["key"], *([b["address"]] if addressed else []), b["health"], b["state"],
             f"{b['effective_weight']}" + ("" if b["admin_weight"] is None
                                           else f" (set; config {b['weight']})"),
             b["active"], b["connections"], b["requests"], b["connect_failures"],
             human_bytes(b["bytes_in"] + b["bytes_out"])] for b in members]
    pools = [p for p in d["pools"] if p["name"]]
    balance = ", ".join(f"pool {p['name']}: {p['balance']}" for p in pools) if pools \
        else d["balance"]
    return f"{d['name']} {d['protocol']} {d['bind']} ({balance}; " \
        f"{d.get('datapath', 'user')} datapath; {d['up']}/{d['backends']} up, " \
        f"{d['state']})\n" + table(
        ["BACKEND", *(["ADDRESS"] if addressed else []), "HEALTH", "STATE", "WEIGHT",
         "ACTIVE", "FLOWS", "REQUESTS", "FAILS", "BYTES"], rows) + "".join(
        f"\nleft out: {why}" for why in d.get("left_out", []))


def format_routes(rs: list[dict[str, Any]]) -> str:
    """``ctl routes``: host and path -> pool -> backends."""
    return table(["LISTENER", "HOST", "PATH", "TYPE", "POOL", "BACKENDS"],
                 [[r["listener"], r["host"], r["path"], r["type"], r["pool"],
                   ",".join(r["backends"]) or "-"] for r in rs])


def bgp_summary(ha: dict[str, Any]) -> str:
    """Sessions up and VIPs announced, in a few words."""
    up = sum(1 for s in ha["sessions"] if s["established"])
    shown = sum(1 for v in ha["vips"] if v["announced"])
    return (f"{up}/{len(ha['sessions'])} sessions established, {shown}/{len(ha['vips'])} "
            "VIPs announced" + (f"; DRAINED: {ha['drained']}" if ha["drained"] else ""))


def bgp_lines(ha: dict[str, Any]) -> list[str]:
    """The status's HA lines in bgp mode: the summary, each session, each withdrawn VIP."""
    out = [f"HA bgp AS {ha['asn']} router id {ha['router_id']}: {bgp_summary(ha)}"]
    out += [f"  peer {s['peer']} as {s['asn']}: {s['state']}"
            + (f", BFD {s['bfd']}" if s["bfd"] else "") + f", {s['exported']} exported"
            for s in ha["sessions"]]
    out += [f"  VIP {v['vip']} withdrawn: {v['why']}" for v in ha["vips"]
            if not v["announced"] and not ha["drained"]]
    return out


def format_bgp(ha: dict[str, Any]) -> str:
    """``ctl bgp``: the sessions with their BFD state, then each VIP announced or
    withdrawn and why."""
    if ha["mode"] != "bgp":
        return f"ha.mode is {ha['mode']}, not bgp"
    head = f"AS {ha['asn']}, router id {ha['router_id']}" + (
        f"; DRAINED: {ha['drained']}" if ha["drained"] else "")
    sessions = table(["PEER", "AS", "STATE", "SINCE", "BFD", "EXPORTED"],
                     [[s["peer"], s["asn"], s["state"], s["since"], s["bfd"] or "-",
                       s["exported"]] for s in ha["sessions"]])
    vips = table(["VIP", "ANNOUNCED", "WHY NOT"],
                 [[v["vip"], "yes" if v["announced"] else "no", v["why"] or "-"]
                  for v in ha["vips"]])
    return f"{head}\n\n{sessions}\n\n{vips}"


def _some(items: list[str], most: int = 4) -> str:
    """The first ``most`` of ``items``, and how many more."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more
