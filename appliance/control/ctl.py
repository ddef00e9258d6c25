"""``edgelb ctl``: every control API endpoint and action from a shell. Tables by default,
``--json`` for scripts.

Exit status: 0 done; 1 the daemon refused or failed (a reload with config errors, an
action that cannot be done); 2 usage; 3 edgelb is not running or cannot be reached;
4 not allowed (no role, or a viewer asking for an action); 5 no such listener, backend
or endpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..views import FLOW_FILTERS
from .client import Client, ControlError
from .format import (
    format_backends,
    format_bgp,
    format_event,
    format_flows,
    format_listeners,
    format_routes,
    format_status,
)

EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_FORBIDDEN, EXIT_NOT_FOUND = 1, 3, 4, 5


def add_parser(sub: Any) -> None:
    """Add ``ctl`` and its commands to the ``edgelb`` parser."""
    ctl = sub.add_parser("ctl", help="query and steer a running daemon (control API)",
                         description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    # The options go before or after the command (`ctl status --json`, as kubectl
    # users type it): each command takes them too, and sets them only when given.
    common = argparse.ArgumentParser(add_help=False)
    for parser, default in ((ctl, None), (common, argparse.SUPPRESS)):
        parser.add_argument("--socket", default=default,
                            help="the control socket (default: $EDGELB_SOCKET, "
                                 "else /run/edgelb/control.sock)")
        parser.add_argument("--json", action="store_true",
                            default=False if default is None else default,
                            help="print the API's JSON")
    commands = ctl.add_subparsers(dest="ctl", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **kw)  # type: ignore[no-any-return]

    command("status", help="version, uptime, HA, Snapshot, sync, totals, alerts")
    command("whoami", help="your user and role")
    p = command("listeners", help="listeners; with a name, its backends")
    p.add_argument("name", nargs="?")
    p = command("backends", help="the backends of a listener, by pool")
    p.add_argument("name")
    command("routes", help="HTTP routes: host and path -> pool -> backends")
    p = command("flows", help="open flows: filter, sort, page, or --watch")
    for f in FLOW_FILTERS:
        p.add_argument(f"--{f}")
    p.add_argument("-q", "--query", help="text anywhere in the flow")
    p.add_argument("--sort", help="id, listener, protocol, client, vip, backend, bytes_in, "
                   "bytes_out, bytes, age, state, path")
    p.add_argument("--desc", action="store_true")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--watch", action="store_true", help="a new page every --interval")
    p.add_argument("--interval", type=float, default=1.0)
    p = command("events", help="HA changes, reloads, health, actions")
    p.add_argument("--since", type=int, default=0)
    p.add_argument("-f", "--follow", action="store_true")
    for action, text in (("drain", "no new flows; open flows run to their end"),
                         ("undrain", "back to ready"),
                         ("disable", "out of the pool; open flows cut after drain_timeout"),
                         ("enable", "back to ready")):
        p = command(action, help=f"a backend: {text}")
        p.add_argument("listener")
        p.add_argument("backend", help="its key: address, or pool/address for HTTP")
    p = command("weight", help="set a backend's weight (0-256, or 'config')")
    p.add_argument("listener")
    p.add_argument("backend")
    p.add_argument("weight")
    for action, text in (("failover", "hand the VIPs over (master) or take them (backup)"),
                         ("demote", "stay backup until promote or auto"),
                         ("promote", "become master and stay preferred until auto"),
                         ("auto", "back to the configured priority")):
        command(action, help=f"HA: {text}")
    command("drain-box", help="bgp: withdraw every VIP of this box (new flows go to the "
            "others); open flows run on")
    command("undrain-box", help="bgp: announce again what this box serves")
    command("bgp", help="bgp: sessions, BFD, and each VIP announced or withdrawn and why")
    command("reload", help="re-read the config (refused, with the errors, if bad)")
    p = command("cut", help="cut one open flow now (its id, as ctl flows lists it)")
    p.add_argument("flow")


def run(args: argparse.Namespace) -> int:
    """Run one ``ctl`` command; returns the exit status."""
    client = Client(args.socket)
    try:
        return _run(client, args)
    except ControlError as e:
        _error(args, e.message, e.status)
        if e.status == 0:
            return EXIT_UNREACHABLE
        if e.status == 403:
            return EXIT_FORBIDDEN
        if e.status == 404:
            return EXIT_NOT_FOUND
        return EXIT_REFUSED
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


def _error(args: argparse.Namespace, message: str, status: int) -> None:
    """An error as the output asked for: with --json, a JSON object on stdout (a script
    reading JSON gets JSON either way, and the exit status says it failed)."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "status": status}), flush=True)
    else:
        print(f"edgelb ctl: {message}", file=sys.stderr)


def _out(args: argparse.Namespace, data: Any, table: str) -> int:
    print(json.dumps(data, indent=2) if args.json else table, flush=True)
    return 0


def _run(client: Client, args: argparse.Namespace) -> int:
    cmd = args.ctl
    if cmd in ("flows", "events"):
        return _follow(client, args)
    if cmd in ACTIONS:
        return _act(client, args)
    if cmd == "status":
        st = client.get("/v1/status")
        return _out(args, st, format_status(st))
    if cmd == "whoami":
        me = client.get("/v1/whoami")
        return _out(args, me, f"{me['user']} (uid {me['uid']}): {me['role']}")
    if cmd == "listeners" and not args.name:
        ls = client.get("/v1/listeners")["listeners"]
        return _out(args, ls, format_listeners(ls))
    if cmd in ("listeners", "backends"):
        d = client.get(f"/v1/listeners/{args.name}")
        return _out(args, d, format_backends(d))
    if cmd == "bgp":
        ha = client.get("/v1/status")["ha"]
        return _out(args, ha, format_bgp(ha))
    if cmd == "routes":
        rs = client.get("/v1/routes")["routes"]
        return _out(args, rs, format_routes(rs))
    return 2


def _follow(client: Client, args: argparse.Namespace) -> int:
    """``flows`` and ``events``: a page (or the events) now, or as they come."""
    if args.ctl == "flows":
        q = {f: getattr(args, f) for f in (*FLOW_FILTERS, "sort", "limit", "offset")}
        q.update(q=args.query, desc=1 if args.desc else None)
        pages = (client.stream("/v1/flows", interval=args.interval, **q) if args.watch
                 else iter([client.get("/v1/flows", **q)]))
        for page in pages:
            _out(args, page, format_flows(page))
        return 0
    events = (client.stream("/v1/events", since=args.since) if args.follow
              else iter(client.get("/v1/events", since=args.since)["events"]))
    for e in events:
        print(json.dumps(e) if args.json else format_event(e), flush=True)
    return 0


ACTIONS = ("drain", "undrain", "disable", "enable", "weight", "failover", "demote",
           "promote", "auto", "reload", "cut", "drain-box", "undrain-box")


def _act(client: Client, args: argparse.Namespace) -> int:
    cmd = args.ctl
    if cmd == "weight":
        w: int | None
        if args.weight == "config":
            w = None
        elif args.weight.isdigit():
            w = int(args.weight)
        else:
            _error(args, f"weight {args.weight!r} is not 0-256 or 'config'", 400)
            return 2
        r = client.act("weight", listener=args.listener, backend=args.backend, weight=w)
        return _out(args, r, f"{args.listener} {args.backend}: weight "
                    f"{r['admin_weight'] if r['admin_weight'] is not None else 'as configured'}")
    if cmd == "cut":
        r = client.act("cut", flow=args.flow)
        return _out(args, r, f"cut flow {r['flow']} of {r['listener']} ({r['client']} -> "
                    f"{r['backend'] or '-'})")
    if cmd == "reload":
        r = client.act("reload")
        return _out(args, r, f"reloaded: serving snapshot v{r['snapshot']}")
    if cmd in ("failover", "demote", "promote", "auto", "drain-box", "undrain-box"):
        r = client.act(cmd)
        return _out(args, r, r["result"])
    r = client.act(cmd, listener=args.listener, backend=args.backend)
    return _out(args, r, f"{args.listener} {args.backend}: {r['state']}")
