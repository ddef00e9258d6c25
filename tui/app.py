"""``edgelb tui``: the operator console. It polls the control API once a second (and only
for what the open view shows), keeps its tables by key, and asks before anything
disruptive. A viewer gets no actions; the daemon refuses them anyway."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    DataTable,
    Footer,
    Input,
    Log,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)

from appliance.control.client import Client, ControlError
from appliance.control.format import (
    FLOW_COLUMNS,
    flow_cells,
    format_event,
    human_age,
    human_bytes,
    status_lines,
)

from .actions import OperatorActions
from .commands import (
    BACKEND_ACTIONS,
    CHANGES,
    HA_ACTIONS,
    PANES,
    SORTS,
    CommandError,
    parse_command,
)
from .screens import HelpScreen
from .source import Api, Source
from .tables import ha_text, rate, sync_rows


class _Closed(Exception):
    """The console stopped while a request was out: its widgets may be gone."""


class FlowTable(DataTable[Any]):
    """The flows table: it says when its height changes, since only the rows that fit
    are fetched (a page fetched before the first layout was sized for the screen)."""

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(FlowsResized())


class FlowsResized(Message):
    """The flows table's height changed."""


class Console(OperatorActions):
    """The console, on the control API at ``socket`` (or any ``api``)."""

    TITLE = "edgelb"
    AUTO_FOCUS = None
    CSS_PATH = "console.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        # 1-6: the views, in tab order (the tabs show the keys, the footer need not).
        *(Binding(str(i), f"pane({pane!r})", pane.title(), show=False)
          for i, pane in enumerate(PANES, 1)),
        Binding("question_mark", "help", "Help"),
        Binding("colon", "command", "Cmd"),
        Binding("slash", "filter", "Filter", show=False),
        Binding("s", "sort", "Sort", show=False),
        Binding("r", "reverse", "Reverse", show=False),
        Binding("n", "page(1)", "Next page", show=False),
        Binding("p", "page(-1)", "Prev page", show=False),
        Binding("d", "backend('drain')", "Drain"),
        Binding("u", "backend('undrain')", "Undrain"),
        Binding("x", "backend('disable')", "Disable"),
        Binding("e", "backend('enable')", "Enable"),
        Binding("w", "weight", "Weight"),
        Binding("f", "ha('failover')", "Failover"),
        Binding("D", "ha('demote')", "Demote"),
        Binding("P", "ha('promote')", "Promote"),
        Binding("A", "ha('auto')", "Auto"),
        Binding("R", "reload_config", "Reload", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, api: Api | None = None, socket: str | None = None,
                 interval: float = 1.0) -> None:
        super().__init__()
        self.source = Source(api if api is not None else Client(socket, timeout=5))
        self.interval = interval
        self.role: str | None = None
        self.user = ""
        self.status: dict[str, Any] = {}
        self.seq = 0
        self.listener_name = ""
        self.flow_query: dict[str, Any] = {"sort": "", "desc": False, "offset": 0, "q": ""}
        self.flow_total = 0
        self.rps: deque[tuple[float, float]] = deque(maxlen=2)
        self.bps: deque[tuple[float, float]] = deque(maxlen=2)
        self.rps_line: deque[float] = deque([0.0] * 60, maxlen=60)
        self.bps_line: deque[float] = deque([0.0] * 60, maxlen=60)
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.flow_limit = 0  # the rows the flows page was last fetched for

    # -- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="topline", markup=False)
        yield Static("", id="banner", markup=False)
        with TabbedContent(initial="overview", id="panes"):
            with TabPane("1 Overview", id="overview"):
                yield Static("connecting ...", id="overview-text", markup=False)
                yield Static("requests/s", classes="caption", id="rps-caption", markup=False)
                yield Sparkline(list(self.rps_line), id="rps")
                yield Static("bytes/s", classes="caption", id="bps-caption", markup=False)
                yield Sparkline(list(self.bps_line), id="bps")
                yield Static("", id="alerts", markup=False)
            with TabPane("2 Flows", id="flows"):
                yield Static("", id="flow-info", markup=False)
                yield Input(placeholder="filter flows (Enter; empty clears)", id="flow-filter",
                            disabled=True)
                yield FlowTable(id="flows-table", cursor_type="row", zebra_stripes=True)
            with TabPane("3 Backends", id="backends"), Horizontal():
                yield DataTable(id="listeners-table", cursor_type="row")
                yield DataTable(id="backends-table", cursor_type="row")
            with TabPane("4 Routes", id="routes"):
                yield DataTable(id="routes-table", cursor_type="row")
            with TabPane("5 Events", id="events"):
                yield Log(id="events-log", max_lines=2000, auto_scroll=True)
            with TabPane("6 HA", id="ha"), Vertical():
                yield Static("", id="ha-text", markup=False)
        yield Input(placeholder=":command (Enter; Esc closes)", id="command", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self._main("#flows-table", DataTable).add_columns(*FLOW_COLUMNS)
        self._main("#listeners-table", DataTable).add_columns("LISTENER", "PROTO", "B")
        self._main("#backends-table", DataTable).add_columns(
            "BACKEND", "HEALTH", "STATE", "WEIGHT", "ACTIVE", "FLOWS", "REQ", "FAIL", "BYTES")
        self._main("#routes-table", DataTable).add_columns(
            "HOST", "PATH", "TYPE", "POOL", "BACKENDS", "LISTENER")
        self.tick()
        self.set_interval(self.interval, self.tick)

    # -- polling -----------------------------------------------------------------------

    def tick(self) -> None:
        # Paused while a dialog is open: the operator is reading what it is about.
        if isinstance(self.screen, ModalScreen):
            return
        self.refresh_data()

    async def _get(self, path: str, /, **query: Any) -> Any | None:
        """The source's answer, unless the console stopped while it was out (the answer
        comes from a thread, and by then the screens may have been taken down)."""
        got = await self.source.get(path, **query)
        if not self.is_running:
            raise _Closed
        return got

    @work(exclusive=True, group="refresh")
    async def refresh_data(self) -> None:
        """Read what the open view shows; mark the console disconnected (and keep trying)
        when the daemon does not answer."""
        started = time.perf_counter()
        try:
            if self.role is None or not self.source.connected:
                me = await self._get("/v1/whoami")
                if me is None:
                    self._show_disconnected()
                    return
                self.role, self.user = me["role"], me["user"]
                self.refresh_bindings()
            status = await self._get("/v1/status")
            if status is None:
                self._show_disconnected()
                return
            self._show_status(status)
            await self._read_events(status)
            pane = self._main("#panes", TabbedContent).active
            if pane == "flows":
                await self._read_flows()
            elif pane == "backends":
                await self._read_backends()
            elif pane == "routes":
                await self._read_routes()
        except ControlError as e:
            self.notify(f"{e.message}", severity="error", timeout=6, markup=False)
        except _Closed:
            return
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - started

    def _show_disconnected(self) -> None:
        banner = self._main("#banner", Static)
        banner.update(f"disconnected: {self.source.error}; retrying every "
                      f"{self.interval:g}s")
        banner.add_class("shown")
        self.role = None

    def _show_status(self, st: dict[str, Any]) -> None:
        self._main("#banner", Static).remove_class("shown")
        if st.get("last_event", 0) < self.seq:
            self.seq = 0  # the daemon restarted: its events start again from 1
        self.status = st
        ha = st["ha"]
        if ha["mode"] == "vrrp":
            states = "/".join(r["state"].upper() for r in ha["routers"]) or "starting"
        elif ha["mode"] == "lease":
            states = "LEADER" if ha["leader"] else "standby"
        else:
            states = "standalone"
        self._main("#topline", Static).update(
            f"edgelb {st['version']}  {self.user} ({self.role})  HA {states}  "
            f"snapshot v{st['snapshot']['version']}  up {human_age(st['uptime'])}"
            + (f"  {len(st['alerts'])} ALERTS" if st["alerts"] else ""))
        now = time.monotonic()
        t = st["totals"]
        self.rps.append((now, t["requests"] + t["accepted"]))
        self.bps.append((now, t["bytes_in"] + t["bytes_out"]))
        r, b = rate(self.rps), rate(self.bps)
        self.rps_line.append(r)
        self.bps_line.append(b)
        self._main("#rps", Sparkline).data = list(self.rps_line)
        self._main("#bps", Sparkline).data = list(self.bps_line)
        self._main("#rps-caption", Static).update(
            f"requests+connections/s  now {r:.0f}  max {max(self.rps_line):.0f}")
        self._main("#bps-caption", Static).update(
            f"bytes/s  now {human_bytes(b)}  max {human_bytes(max(self.bps_line))}")
        self._main("#overview-text", Static).update("\n".join(status_lines(st)))
        self._main("#alerts", Static).update(
            "\n".join(f"! {a}" for a in st["alerts"]) or "no alerts")
        self._main("#ha-text", Static).update(ha_text(st, self.may_change()))

    async def _read_events(self, st: dict[str, Any]) -> None:
        if st.get("last_event", 0) <= self.seq:
            return
        got = await self._get("/v1/events", since=self.seq)
        if got is None:
            return
        log = self._main("#events-log", Log)
        for e in got["events"]:
            log.write_line(format_event(e))
            self.seq = max(self.seq, e["seq"])

    def _page_size(self) -> int:
        """The rows the flows table shows: only those are fetched (and rendered)."""
        height = self._main("#flows-table", DataTable).size.height
        # Before the first layout of the view: the screen less the lines around it.
        return max(5, (height or self.size.height - 7) - 1)

    def on_flows_resized(self, _: FlowsResized) -> None:
        if self.flow_limit and self._page_size() != self.flow_limit and \
                self._main("#panes", TabbedContent).active == "flows":
            self.refresh_data()

    async def _read_flows(self) -> None:
        q = self.flow_query
        limit = self.flow_limit = self._page_size()
        page = await self._get(
            "/v1/flows", sort=q["sort"] or None, desc=1 if q["desc"] else None,
            offset=q["offset"], limit=limit, q=q["q"] or None)
        if page is None:
            return
        self.flow_total = page["total"]
        rows = [(f["id"], flow_cells(f)) for f in page["flows"]]
        sync_rows(self._main("#flows-table", DataTable), rows)
        first = q["offset"] + 1 if rows else 0
        self._main("#flow-info", Static).update(
            f"flows {first}-{q['offset'] + len(rows)} of {page['total']} matching "
            f"({page['all']} open)  sort: {q['sort'] or 'none'}"
            f"{' desc' if q['desc'] else ''}  filter: {q['q'] or '-'}  [/ s r n p]")

    async def _read_backends(self) -> None:
        got = await self._get("/v1/listeners")
        if got is None:
            return
        lt = self._main("#listeners-table", DataTable)
        sync_rows(lt, [(x["name"], [x["name"], x["protocol"], x["backends"]])
                       for x in got["listeners"]])
        if not self.listener_name and got["listeners"]:
            self.listener_name = got["listeners"][0]["name"]
        if not self.listener_name:
            return
        try:
            d = await self._get(f"/v1/listeners/{self.listener_name}")
        except ControlError:
            self.listener_name = ""
            return
        if d is None:
            return
        rows = []
        for p in d["pools"]:
            for b in p["backends"]:
                weight = str(b["effective_weight"]) + (" set" if b["admin_weight"] is not None
                                                       else "")
                rows.append((b["key"], [b["key"], b["health"], b["state"], weight,
                                        b["active"], b["connections"], b["requests"],
                                        b["connect_failures"],
                                        human_bytes(b["bytes_in"] + b["bytes_out"])]))
        sync_rows(self._main("#backends-table", DataTable), rows)

    async def _read_routes(self) -> None:
        got = await self._get("/v1/routes")
        if got is None:
            return
        rows = [(f"{i}", [r["host"], r["path"], r["type"], r["pool"],
                          ",".join(r["backends"]) or "-", r["listener"]])
                for i, r in enumerate(got["routes"])]
        sync_rows(self._main("#routes-table", DataTable), rows)

    # -- who may do what ----------------------------------------------------------------

    def may_change(self) -> bool:
        return self.role in ("operator", "admin")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in CHANGES and not self.may_change():
            return False  # hidden: a viewer has no actions
        try:
            pane = self._main("#panes", TabbedContent).active
        except Exception:
            pane = ""  # not composed yet
        if action in ("backend", "weight"):
            return pane == "backends"
        if action == "ha":
            return pane == "ha"
        if action in ("filter", "sort", "reverse", "page"):
            return pane == "flows"
        return True

    @on(TabbedContent.TabActivated)
    def _pane_changed(self) -> None:
        self.refresh_bindings()
        self.refresh_data()

    # -- navigation ---------------------------------------------------------------------

    def action_pane(self, pane: str) -> None:
        # Focus leaves the old view first: a focused widget in a hidden pane would be
        # refocused and pull its pane back to the front.
        self.set_focus(None)
        self._main("#panes", TabbedContent).active = pane
        first = {"flows": "#flows-table", "backends": "#backends-table",
                 "routes": "#routes-table"}.get(pane)
        if first:
            self._main(first, DataTable).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def _open_input(self, selector: str, value: str) -> None:
        box = self._main(selector, Input)
        box.disabled = False
        box.add_class("shown")
        box.value = value
        box.focus()

    def _close_input(self, box: Input) -> None:
        box.remove_class("shown")
        box.disabled = True

    def action_command(self) -> None:
        self._open_input("#command", "")

    def action_filter(self) -> None:
        self._open_input("#flow-filter", self.flow_query["q"])

    def action_sort(self) -> None:
        i = SORTS.index(self.flow_query["sort"])
        self.flow_query.update(sort=SORTS[(i + 1) % len(SORTS)], offset=0)
        self.refresh_data()

    def action_reverse(self) -> None:
        self.flow_query["desc"] = not self.flow_query["desc"]
        self.refresh_data()

    def action_page(self, step: int) -> None:
        size = self._page_size()
        off = self.flow_query["offset"] + step * size
        self.flow_query["offset"] = max(0, min(off, max(0, self.flow_total - 1)))
        self.refresh_data()

    @on(DataTable.HeaderSelected, "#flows-table")
    def _sort_by_header(self, event: DataTable.HeaderSelected) -> None:
        name = str(event.label).lower()
        field = {"in": "bytes_in", "out": "bytes_out", "proto": "protocol"}.get(name, name)
        if self.flow_query["sort"] == field:
            self.flow_query["desc"] = not self.flow_query["desc"]
        self.flow_query.update(sort=field, offset=0)
        self.refresh_data()

    @on(DataTable.RowHighlighted, "#listeners-table")
    def _listener_chosen(self, event: DataTable.RowHighlighted) -> None:
        name = event.row_key.value if event.row_key is not None else ""
        if name and name != self.listener_name:
            self.listener_name = name
            self._main("#backends-table", DataTable).clear()
            self.refresh_data()

    @on(Input.Submitted, "#flow-filter")
    def _filter_given(self, event: Input.Submitted) -> None:
        self.flow_query.update(q=event.value.strip(), offset=0)
        self._close_input(event.input)
        self._main("#flows-table", DataTable).focus()
        self.refresh_data()

    @on(Input.Submitted, "#command")
    def _command_given(self, event: Input.Submitted) -> None:
        self._close_input(event.input)
        text = event.value
        event.input.value = ""
        try:
            cmd, args = parse_command(text)
        except CommandError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.run_command(cmd, args)

    def key_escape(self) -> None:
        for box in self.screen_stack[0].query(Input):
            if box.has_class("shown"):
                self._close_input(box)
                self.set_focus(None)

    def run_command(self, cmd: str, args: Sequence[str]) -> None:
        """Do one parsed ``:`` command."""
        if cmd in PANES:
            if cmd == "backends" and args:
                self.listener_name = args[0]
            self.action_pane(cmd)
        elif cmd in ("q", "quit"):
            self.exit(0)
        elif cmd == "help":
            self.action_help()
        elif cmd == "sort":
            self.flow_query.update(sort=args[0], desc=len(args) > 1 and args[1] == "desc",
                                   offset=0)
            self.action_pane("flows")
        elif cmd == "filter":
            self.flow_query.update(q=" ".join(args), offset=0)
            self.action_pane("flows")
        elif not self.may_change():
            self.notify(f"{cmd} needs the operator or admin role; you are a {self.role}",
                        severity="error", markup=False)
        elif cmd in BACKEND_ACTIONS:
            self._confirm_backend(cmd, args[0], args[1])
        elif cmd == "weight":
            self._confirm_weight(args[0], args[1], args[2])
        elif cmd in HA_ACTIONS:
            self.action_ha(cmd)
        elif cmd == "reload":
            self.action_reload_config()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for pane in PANES:
            yield SystemCommand(f"Show {pane}", f"the {pane} view",
                                lambda p=pane: self.action_pane(p))
        if self.may_change():
            for action in HA_ACTIONS:
                yield SystemCommand(f"HA {action}", "asks for confirmation first",
                                    lambda a=action: self.action_ha(a))
            yield SystemCommand("Reload the config", "asks for confirmation first",
                                self.action_reload_config)


def run_console(socket: str | None, no_color: bool = False) -> int:
    """Run the console until the operator quits; returns the exit status."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Over SSH this is the forced command: a command asked for without a terminal
        # gets this line, not a console drawn into a pipe (nor a shell).
        print("edgelb tui needs a terminal: connect with ssh -t (commands are not run "
              "here)", file=sys.stderr)
        return 2
    if no_color:
        os.environ["NO_COLOR"] = "1"
    result = Console(socket=socket).run()
    return result or 0
