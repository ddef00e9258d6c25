"""``edgelb tui``: the operator console. It polls the control API once a second (and only
for what the open view shows), keeps its tables by key, and asks before anything
disruptive. A viewer gets no actions; the daemon refuses them anyway."""

from __future__ import annotations

import os
import sys
import time
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
    Tabs,
)

from appliance.control.client import Client, ControlError
from appliance.control.format import FLOW_SORTS, flow_cells, format_event, human_age

from .actions import OperatorActions
from .commands import (
    BACKEND_ACTIONS,
    BOX_ACTIONS,
    CHANGES,
    HA_ACTIONS,
    PANES,
    CommandError,
    parse_command,
)
from .rows import (
    BACKEND_COLUMNS,
    FLOW_TABLE,
    LISTENER_COLUMNS,
    ROUTE_COLUMNS,
    alert_text,
    backend_cells,
    count,
    listener_cells,
    overview_lines,
    rates_line,
    route_cells,
)
from .screens import FlowScreen, HelpScreen
from .source import Api, Source
from .tables import FittedTable, ha_text


class _Closed(Exception):
    """The console stopped while a request was out: its widgets may be gone."""


class FlowTable(FittedTable):
    """The flows table: it says when its height changes, since only the rows that fit
    are fetched (a page fetched before the first layout was sized for the screen)."""

    def on_resize(self, event: events.Resize) -> None:
        super().on_resize(event)
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
        Binding("escape", "go_back", "Back"),
        Binding("q", "quit", "Quit"),
        # Each view's own keys are on its title line: a footer holding all of them was
        # cut off at 80 columns, "q Quit" first.
        Binding("slash", "filter", "Filter", show=False),
        Binding("s", "sort", "Sort", show=False),
        Binding("r", "reverse", "Reverse", show=False),
        Binding("n", "page(1)", "Next page", show=False),
        Binding("p", "page(-1)", "Prev page", show=False),
        Binding("d", "backend('drain')", "Drain", show=False),
        Binding("u", "backend('undrain')", "Undrain", show=False),
        Binding("x", "backend('disable')", "Disable", show=False),
        Binding("e", "backend('enable')", "Enable", show=False),
        Binding("w", "weight", "Weight", show=False),
        Binding("f", "ha('failover')", "Failover", show=False),
        Binding("D", "ha('demote')", "Demote", show=False),
        Binding("P", "ha('promote')", "Promote", show=False),
        Binding("A", "ha('auto')", "Auto", show=False),
        Binding("R", "reload_config", "Reload", show=False),
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
        self.backend_detail = False  # the backends view shows one listener's backends
        self.listeners: dict[str, dict[str, Any]] = {}  # the last answer, by name
        self.backends: dict[str, dict[str, Any]] = {}  # the shown listener's, by key
        self.flows: dict[str, dict[str, Any]] = {}  # the page shown, by id
        self.flow_query: dict[str, Any] = {"sort": "", "desc": False, "offset": 0, "q": ""}
        self.flow_total = 0
        self.answered_at = 0.0  # time.time() of the daemon's last answer
        self.lost_since = 0.0  # when it stopped answering (0: it answers)
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
                yield Static("", id="rates", classes="caption", markup=False)
                with Horizontal(id="graphs"):
                    yield Static("flows/s", classes="graph-label", markup=False)
                    yield Sparkline([0.0], id="rps")
                    yield Static("bytes/s", classes="graph-label", markup=False)
                    yield Sparkline([0.0], id="bps")
                yield Static("", id="alerts", markup=False)
                yield FittedTable(LISTENER_COLUMNS, id="overview-table", cursor_type="row")
            with TabPane("2 Flows", id="flows"):
                yield Static("", id="flow-info", markup=False)
                yield Input(placeholder="filter flows (Enter; empty clears)", id="flow-filter",
                            disabled=True)
                yield FlowTable(FLOW_TABLE, id="flows-table", cursor_type="row",
                                zebra_stripes=True)
            with TabPane("3 Backends", id="backends"), Vertical():
                yield Static("", id="backends-title", markup=False)
                yield FittedTable(LISTENER_COLUMNS, id="listeners-table", cursor_type="row")
                yield FittedTable(BACKEND_COLUMNS, id="backends-table", cursor_type="row",
                                  classes="hidden")
            with TabPane("4 Routes", id="routes"):
                yield FittedTable(ROUTE_COLUMNS, id="routes-table", cursor_type="row")
            with TabPane("5 Events", id="events"):
                yield Log(id="events-log", max_lines=2000, auto_scroll=True)
            with TabPane("6 HA", id="ha"), Vertical():
                yield Static("", id="ha-text", markup=False)
        yield Input(placeholder=":command (Enter; Esc closes)", id="command", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        # Tab moves between the tables of a view; the view tabs have their keys (1-6).
        self._main("#panes", TabbedContent).query_one(Tabs).can_focus = False
        self._title_backends()
        self._main("#overview-table", DataTable).focus()
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
            if pane == "overview" or (pane == "backends" and not self.backend_detail):
                await self._read_listeners()
            elif pane == "flows":
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
        """The data stays for reference, dimmed, with its age: a view that looks live
        while the daemon is gone misleads."""
        now = time.time()
        if not self.lost_since:
            self.lost_since = now
        lost = time.strftime("%H:%M:%S", time.localtime(self.lost_since))
        age = f"data {human_age(now - self.answered_at)} old" if self.answered_at \
            else "no data yet"
        banner = self._main("#banner", Static)
        banner.update(f"disconnected since {lost} ({age}); retrying every "
                      f"{self.interval:g}s: {self.source.error}")
        banner.add_class("shown")
        self._main("#panes", TabbedContent).add_class("stale")
        self._main("#topline", Static).add_class("stale")
        self.role = None

    def _show_status(self, st: dict[str, Any]) -> None:
        self.answered_at, self.lost_since = time.time(), 0.0
        self._main("#banner", Static).remove_class("shown")
        self._main("#panes", TabbedContent).remove_class("stale")
        self._main("#topline", Static).remove_class("stale")
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
            + (f"  {count(len(st['alerts']), 'alert')}" if st["alerts"] else ""))
        rates = st.get("rates") or {}
        self._main("#rps", Sparkline).data = rates.get("flows_history") or [0.0]
        self._main("#bps", Sparkline).data = rates.get("bytes_history") or [0.0]
        self._main("#overview-text", Static).update("\n".join(overview_lines(st)))
        self._main("#rates", Static).update(rates_line(st))
        self._main("#alerts", Static).update(alert_text(st["alerts"]))
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

    async def _read_listeners(self) -> None:
        got = await self._get("/v1/listeners")
        if got is None:
            return
        self.listeners = {x["name"]: x for x in got["listeners"]}
        rows = [(x["name"], listener_cells(x)) for x in got["listeners"]]
        self._main("#overview-table", FittedTable).show(rows)
        self._main("#listeners-table", FittedTable).show(rows)
        if not self.listener_name and rows:
            self.listener_name = rows[0][0]

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
        self.flows = {f["id"]: f for f in page["flows"]}
        table = self._main("#flows-table", FlowTable)
        table.show([(f["id"], flow_cells(f)) for f in page["flows"]])
        shown = len(page["flows"])
        first = q["offset"] + 1 if shown else 0
        self._main("#flow-info", Static).update(
            f"flows {first}-{q['offset'] + shown} of {page['total']} ({page['all']} open)"
            f"  filter: {q['q'] or '-'}   keys: / s r n p Enter (? explains)")

    async def _read_backends(self) -> None:
        name = self.listener_name
        try:
            d = await self._get(f"/v1/listeners/{name}")
        except ControlError:
            self.notify(f"listener {name} is gone", severity="warning", markup=False)
            self._show_listener_list()
            return
        if d is None:
            return
        self.listeners[name] = d
        members = [b for p in d["pools"] for b in p["backends"]]
        self.backends = {b["key"]: b for b in members}
        self._main("#backends-table", FittedTable).show(
            [(b["key"], backend_cells(b)) for b in members])
        self._title_backends()

    def _title_backends(self) -> None:
        """Which listener's backends these are, and the keys of the view."""
        title = self._main("#backends-title", Static)
        if not self.backend_detail:
            title.update("listeners: Enter shows a listener's backends\n"
                         "↑ ↓ choose, Enter open")
            return
        d = self.listeners.get(self.listener_name, {})
        pools = [p for p in d.get("pools", []) if p["name"]]
        balance = ", ".join(f"{p['name']} {p['balance']}" for p in pools) if pools \
            else d.get("balance", "")
        keys = "d drain  u undrain  x disable  e enable  w weight  " \
            if self.may_change() else "(read-only)  "
        left_out = d.get("left_out") or []
        title.update(f"backends of {self.listener_name} ({d.get('protocol', '?')} "
                     f"{d.get('bind', '?')}, {balance})\n{keys}Esc: all listeners"
                     + (f"\nleft out: {'; '.join(left_out)}" if left_out else ""))

    async def _read_routes(self) -> None:
        got = await self._get("/v1/routes")
        if got is None:
            return
        self._main("#routes-table", FittedTable).show(
            [(f"{i}", route_cells(r)) for i, r in enumerate(got["routes"])])

    # -- who may do what ----------------------------------------------------------------

    def may_change(self) -> bool:
        return self.role in ("operator", "admin")

    def has_ha(self) -> bool:
        """Whether there is a peer to fail over to (vrrp or lease: in bgp mode every box
        serves, and a box drains instead)."""
        return bool(self.status) and self.status["ha"]["mode"] in ("vrrp", "lease")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in CHANGES and not self.may_change():
            return False  # hidden: a viewer has no actions
        try:
            pane = self._main("#panes", TabbedContent).active
        except Exception:
            pane = ""  # not composed yet
        if action in ("backend", "weight"):
            return pane == "backends" and self.backend_detail
        if action == "ha":
            return pane == "ha" and self.has_ha()
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
        first = {"overview": "#overview-table", "flows": "#flows-table",
                 "backends": "#backends-table" if self.backend_detail else "#listeners-table",
                 "routes": "#routes-table"}.get(pane)
        if first:
            self._main(first, DataTable).focus()

    def show_backends_of(self, name: str) -> None:
        """The backends view, on ``name``'s backends (its row marked in the list)."""
        if name != self.listener_name:
            self._main("#backends-table", FittedTable).show([])
            self.backends = {}
        self.listener_name = name
        self.backend_detail = True
        self._main("#listeners-table", DataTable).add_class("hidden")
        self._main("#backends-table", DataTable).remove_class("hidden")
        listed = self._main("#listeners-table", FittedTable)
        keys = [str(r.value) for r in listed.rows]
        if name in keys:
            listed.move_cursor(row=keys.index(name), animate=False)
        self._title_backends()
        self.action_pane("backends")
        self.refresh_bindings()
        self.refresh_data()

    def _show_listener_list(self) -> None:
        self.backend_detail = False
        self._main("#backends-table", DataTable).add_class("hidden")
        self._main("#listeners-table", DataTable).remove_class("hidden")
        self._title_backends()
        self.action_pane("backends")
        self.refresh_bindings()
        self.refresh_data()

    @on(DataTable.RowSelected, "#overview-table, #listeners-table")
    def _listener_chosen(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.show_backends_of(str(event.row_key.value))

    @on(DataTable.RowSelected, "#flows-table")
    def _flow_chosen(self, event: DataTable.RowSelected) -> None:
        flow = self.flows.get(str(event.row_key.value))
        if flow is None:
            return

        def answered(cut: bool | None) -> None:
            if cut:
                self.confirm_cut(flow["id"], flow)

        self.push_screen(FlowScreen(flow, self.may_change()), answered)

    def action_go_back(self) -> None:
        """Esc: close an open input; else clear the flows filter; else from a listener's
        backends back to the listeners."""
        for box in self.screen_stack[0].query(Input):
            if box.has_class("shown"):
                self._close_input(box)
                self.set_focus(None)
                return
        pane = self._main("#panes", TabbedContent).active
        if pane == "flows" and self.flow_query["q"]:
            self.flow_query.update(q="", offset=0)
            self.refresh_data()
        elif pane == "backends" and self.backend_detail:
            self._show_listener_list()

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

    def _sort_flows(self, field: str, desc: bool) -> None:
        self.flow_query.update(sort=field, desc=desc, offset=0)
        column = FLOW_TABLE[FLOW_SORTS.index(field)].name if field in FLOW_SORTS else None
        self._main("#flows-table", FlowTable).mark_sorted(column, desc)
        self.refresh_data()

    def action_sort(self) -> None:
        """The next column, in the order the columns are shown (after the last: none)."""
        fields = ("", *FLOW_SORTS)
        now = self.flow_query["sort"]
        i = fields.index(now) if now in fields else 0
        self._sort_flows(fields[(i + 1) % len(fields)], self.flow_query["desc"])

    def action_reverse(self) -> None:
        self._sort_flows(self.flow_query["sort"], not self.flow_query["desc"])

    def action_page(self, step: int) -> None:
        size = self._page_size()
        off = self.flow_query["offset"] + step * size
        self.flow_query["offset"] = max(0, min(off, max(0, self.flow_total - 1)))
        self.refresh_data()

    @on(DataTable.HeaderSelected, "#flows-table")
    def _sort_by_header(self, event: DataTable.HeaderSelected) -> None:
        name = str(event.column_key.value)
        field = FLOW_SORTS[[c.name for c in FLOW_TABLE].index(name)]
        same = self.flow_query["sort"] == field
        self._sort_flows(field, not self.flow_query["desc"] if same else False)

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

    def run_command(self, cmd: str, args: Sequence[str]) -> None:
        """Do one parsed ``:`` command."""
        if cmd == "backends" and args:
            self.show_backends_of(args[0])
        elif cmd in PANES:
            self.action_pane(cmd)
        elif cmd in ("q", "quit"):
            self.exit(0)
        elif cmd == "help":
            self.action_help()
        elif cmd == "sort":
            self._sort_flows(args[0], len(args) > 1 and args[1] == "desc")
            self.action_pane("flows")
        elif cmd == "filter":
            self.flow_query.update(q=" ".join(args), offset=0)
            self.action_pane("flows")
        elif not self.may_change():
            self.notify(f"{cmd} needs the operator or admin role; you are a {self.role}",
                        severity="error", markup=False)
        elif cmd in BACKEND_ACTIONS:
            self.check_then_confirm(cmd, args[0], args[1])
        elif cmd == "weight":
            self.check_then_confirm(cmd, args[0], args[1], args[2])
        elif cmd in HA_ACTIONS:
            if not self.has_ha():
                self.notify("No HA configured: nothing to fail over to", severity="error",
                            markup=False)
            else:
                self.action_ha(cmd)
        elif cmd in BOX_ACTIONS:
            if not self.status or self.status["ha"]["mode"] != "bgp":
                self.notify(f"{cmd} is for ha.mode bgp", severity="error", markup=False)
            else:
                self.action_ha(cmd)
        elif cmd == "cut":
            self.confirm_cut(args[0], self.flows.get(args[0]))
        elif cmd == "reload":
            self.action_reload_config()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for pane in PANES:
            yield SystemCommand(f"Show {pane}", f"the {pane} view",
                                lambda p=pane: self.action_pane(p))
        if self.may_change():
            if self.has_ha():
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
