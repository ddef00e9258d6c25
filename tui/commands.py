"""The console's ``:`` commands, k9s-style: what each takes, checked before anything is
asked or sent. Pure."""

from __future__ import annotations

import shlex

from appliance.control.format import FLOW_SORTS

PANES = ("overview", "flows", "backends", "routes", "events", "ha")
# What flows sort by: each column's field, and bytes (in and out together).
SORTS = (*FLOW_SORTS, "bytes")
BACKEND_ACTIONS = ("drain", "undrain", "disable", "enable")
HA_ACTIONS = ("failover", "demote", "promote", "auto")
BOX_ACTIONS = ("drain-box", "undrain-box")  # bgp mode
# Actions that change something: hidden from viewers.
CHANGES = {"backend", "weight", "ha", "reload_config", "cut"}
COMMANDS = ("overview", "flows", "backends", "routes", "events", "ha", "drain", "undrain",
            "disable", "enable", "weight", "failover", "demote", "promote", "auto",
            "reload", "cut", "drain-box", "undrain-box", "sort", "filter", "q", "quit", "help")


class CommandError(ValueError):
    """A ``:`` line that is not a command; the message says what is expected."""


def parse_command(text: str) -> tuple[str, list[str]]:
    """A ``:`` command line as (command, arguments); raises CommandError when it is not
    one (the message says what is expected)."""
    try:
        words = shlex.split(text.strip().lstrip(":"))
    except ValueError as e:
        raise CommandError(str(e)) from None
    if not words:
        raise CommandError("empty command")
    cmd, args = words[0].lower(), words[1:]
    if cmd not in COMMANDS:
        raise CommandError(f"unknown command {cmd!r}; ? lists them")
    need = {"drain": 2, "undrain": 2, "disable": 2, "enable": 2, "weight": 3, "cut": 1}
    if cmd in need and len(args) != need[cmd]:
        shape = "FLOW (its id in the flows view)" if cmd == "cut" else \
            "LISTENER BACKEND" + (" N|config" if cmd == "weight" else "")
        raise CommandError(f"{cmd} takes {shape}")
    if cmd == "weight" and args[2] != "config" and not (args[2].isdigit()
                                                        and int(args[2]) <= 256):
        raise CommandError(f"weight {args[2]!r} is not 0-256 or 'config'")
    if cmd == "sort" and (not args or args[0] not in SORTS):
        raise CommandError(f"sort by one of {', '.join(SORTS)}")
    return cmd, args
