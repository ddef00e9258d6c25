"""The ``edgelb`` command: argument parsing only; the work is done elsewhere."""

from __future__ import annotations

import argparse
import sys

import trio

from . import __version__, logs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgelb", description="Load balancer for the edge of "
                                "bare-metal Kubernetes clusters.")
    p.add_argument("--version", action="version", version=f"edgelb {__version__}")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines as text (default) or JSON objects")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", default="/etc/edgelb/edgelb.yaml")
    check = sub.add_parser("check-config", help="validate a config file; exit 1 on errors")
    check.add_argument("-c", "--config", default="/etc/edgelb/edgelb.yaml")
    demo = sub.add_parser("demo", help="local backends and the daemon, all on loopback")
    demo.add_argument("--port", type=int, default=8080, help="first listener port")
    from .control import ctl

    ctl.add_parser(sub)
    tui = sub.add_parser("tui", help="the operator console (Textual) on the control API")
    tui.add_argument("--socket", help="the control socket (default: $EDGELB_SOCKET, "
                     "else /run/edgelb/control.sock)")
    tui.add_argument("--no-color", action="store_true", help="monochrome (also NO_COLOR)")
    w = sub.add_parser("_worker", help=argparse.SUPPRESS)
    w.add_argument("--fd", type=int, required=True)
    w.add_argument("--id", type=int, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgelb`` script; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # A second Ctrl-C while draining: the operator wants out now, not a traceback.
        return 130


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ctl":
        from .control import ctl

        return ctl.run(args)
    if args.command == "tui":
        from tui.app import run_console

        return run_console(args.socket, args.no_color)
    logs.setup(args.log_format)
    from .config import ConfigError, load_file

    if args.command == "check-config":
        try:
            snap = load_file(args.config)
        except ConfigError as e:
            for issue in e.issues:
                print(f"{e.source}: {issue}", file=sys.stderr)
            return 1
        print(f"{args.config}: OK, {len(snap.listeners)} listeners, digest {snap.digest}")
        return 0
    if args.command == "run":
        from .daemon import Daemon

        try:
            trio.run(Daemon(args.config, args.log_format).serve)
        except ConfigError as e:
            for issue in e.issues:
                print(f"{e.source}: {issue}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"edgelb: cannot start: {e.strerror or e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        from .demo import run_demo

        return trio.run(run_demo, args.port, args.log_format)
    if args.command == "_worker":
        from .datapath.workers import worker_main

        trio.run(worker_main, args.fd, args.id)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
