"""Snapshots of the console's main views at 80x24 with fixed data (the control API's
answers as recorded from a daemon, with the clock-dependent fields pinned), so that a
layout change shows up as a diff of the SVGs in __snapshots__. Update them on purpose
with ``pytest --snapshot-update tests/unit/test_console_snapshots.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from appliance.control.api import flow_dicts, select_flows
from appliance.control.client import ControlError
from tui.app import Console

STATUS = {
    "version": "0.1.0", "pid": 4242, "config": "/etc/edgelb/edgelb.yaml", "uptime": 3725.0,
    "snapshot": {"version": 7, "digest": "3f2a9c1b0d4e", "listeners": 3, "from_cluster": 1},
    "workers": 2, "draining": False,
    "ha": {"mode": "vrrp", "leader": True, "override": "", "interface": "eth0", "vrid": 51,
           "routers": [{"family": "IPv4", "vrid": 51, "state": "master", "priority": 150,
                        "configured_priority": 150,
                        "reason": "no advertisement from a master for 3.41s",
                        "vips": ["192.0.2.10", "192.0.2.11"]}],
           "peers": [{"address": "10.0.0.2", "priority": 100, "interval": 1.0,
                      "seen": 0.0, "seen_ago": 0.4}]},
    "sync": {"synced": True, "changes": 31, "watches": [], "vips": 4, "status_writes": 9,
             "problems": 0},
    "totals": {"accepted": 1200, "requests": 5400, "active": 3, "bytes_in": 1 << 20,
               "bytes_out": 9 << 20},
    "rates": {"connections": 12.0, "requests": 54.5, "bytes": 1 << 20, "window": 4.0,
              "samples": 3725,
              "flows_history": [float(20 + (i * 7) % 50) for i in range(60)],
              "bytes_history": [float((1 << 19) + (i * 40000) % (1 << 20)) for i in range(60)]},
    "alerts": ["listener api: no healthy backend"], "last_event": 3,
}
LISTENERS = [
    {"name": "web", "protocol": "tcp", "bind": "192.0.2.10:443", "datapath": "kernel",
     "balance": "round_robin", "up": 2, "state": "degraded",
     "backends": 3, "down": 0, "not_ready": 1, "active": 3, "accepted": 1200, "requests": 0,
     "no_backend": 0, "bytes_in": 1 << 20, "bytes_out": 9 << 20,
     "rate": {"connections": 12.0, "requests": 0.0, "bytes": 900000}},
    {"name": "api", "protocol": "http", "bind": "192.0.2.11:80", "datapath": "user",
     "balance": "least_conn", "up": 0, "state": "down",
     "backends": 1, "down": 1, "not_ready": 0, "active": 0, "accepted": 80, "requests": 5400,
     "no_backend": 2, "bytes_in": 0, "bytes_out": 0,
     "rate": {"connections": 0.5, "requests": 54.5, "bytes": 148576}},
    {"name": "default/dns:53/udp", "protocol": "udp", "bind": "192.0.2.12:53",
     "datapath": "kernel", "balance": "maglev", "up": 3, "state": "ok",
     "backends": 3, "down": 0, "not_ready": 0, "active": 0, "accepted": 90, "requests": 0,
     "no_backend": 0, "bytes_in": 9000, "bytes_out": 18000,
     "rate": {"connections": 0.0, "requests": 0.0, "bytes": 0}},
]


def _backend(key: str, health: str, state: str, weight: int, admin: int | None,
             active: int) -> dict[str, Any]:
    return {"key": key, "address": key, "weight": weight, "admin_weight": admin,
            "state": state, "effective_weight": 0 if state != "ready" else (admin or weight),
            "health": health, "active": active, "connections": 400 + active, "requests": 0,
            "connect_failures": 1 if health == "down" else 0, "bytes_in": 300000,
            "bytes_out": 3000000}


WEB = {**LISTENERS[0], "pools": [{"name": "", "balance": "round_robin", "backends": [
    _backend("10.0.1.1:30443", "up", "ready", 1, None, 2),
    _backend("10.0.1.2:30443", "up", "drain", 1, None, 1),
    _backend("10.0.1.3:30443", "unchecked", "ready", 1, 4, 0)]}]}
ROUTES = [{"listener": "api", "host": "shop.example.com", "path": "/api", "type": "Prefix",
           "pool": "default/api:80", "backends": ["10.0.1.1:30080", "10.0.1.2:30080"]},
          {"listener": "api", "host": "*", "path": "(default)", "type": "default",
           "pool": "default/web:80", "backends": ["10.0.1.3:30081"]}]
# The first client is IPv6 with letters in brackets: data is never read as markup.
FLOWS = [(f"{i % 2}.{i}", "web", "tcp", "[fe80::1]:40001" if i == 1 else
          f"198.51.100.{i}:{40000 + i}", "192.0.2.10:443",
          f"10.0.1.{i % 3 + 1}:30443", 1000 * i, 20000 * i, float(i * 7), "established",
          "kernel" if i % 4 == 0 else "user")
         for i in range(1, 41)]
EVENTS: list[dict[str, Any]] = [
          {"seq": 1, "time": 0.0, "kind": "start", "message": "edgelb 0.1.0 serving "
           "snapshot v1: 3 listeners"},
          {"seq": 2, "time": 0.0, "kind": "ha", "message": "IPv4 VRRP master: no "
           "advertisement from a master for 3.41s"},
          {"seq": 3, "time": 0.0, "kind": "action", "message": "ops (operator): drain web "
           "10.0.1.2:30443 -> state drain, weight as configured"}]


class FixedApi:
    """The control API's answers, fixed; refuses actions as a viewer's daemon would.
    With ``down`` set, the daemon is unreachable."""

    def __init__(self, role: str = "operator") -> None:
        self.role = role
        self.down = False

    def get(self, path: str, /, **q: Any) -> Any:
        if self.down:
            raise ControlError(0, "cannot reach the daemon at /run/edgelb/control.sock: "
                                  "connection refused")
        if path == "/v1/whoami":
            return {"user": "ops", "uid": 1001, "role": self.role}
        if path == "/v1/status":
            return STATUS
        if path == "/v1/listeners":
            return {"listeners": LISTENERS}
        if path == "/v1/listeners/web":
            return WEB
        if path == "/v1/routes":
            return {"routes": ROUTES}
        if path == "/v1/events":
            return {"events": [e for e in EVENTS if e["seq"] > int(q.get("since", 0))]}
        if path == "/v1/flows":
            query = {k: str(v) for k, v in q.items() if v is not None}
            total, page = select_flows(FLOWS, query)
            return {"total": total, "all": len(FLOWS), "offset": int(q.get("offset", 0)),
                    "flows": flow_dicts(page)}
        raise ControlError(404, f"no endpoint {path}")

    def act(self, action: str, **args: Any) -> Any:
        raise ControlError(403, "not in a snapshot")


def _app(role: str = "operator") -> Console:
    app = Console(api=FixedApi(role), interval=3600)
    # Still pictures: an animation in flight when the picture is taken would make it
    # differ from run to run (and headless, some never finish).
    app.animation_level = "none"
    return app


def _after(*keys: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """Press ``keys`` once the first refresh is in, then wait for the view's own."""
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, Console)
        for _ in range(200):
            if app.refreshes >= 1 and app.status:
                break
            await pilot.pause(0.02)
        done = app.refreshes
        for k in keys:
            await pilot.press(k)
        for _ in range(200):
            if app.refreshes > done or not keys:
                break
            await pilot.pause(0.02)
        # Quiet: no refresh for 0.3 s (a view may fetch again once it is laid out).
        quiet, seen = 0, app.refreshes
        for _ in range(100):
            await pilot.pause(0.05)
            quiet = quiet + 1 if app.refreshes == seen else 0
            seen = app.refreshes
            if quiet >= 6:
                break
        # Drawn: a picture taken before the last update reached the screen would lack it.
        app.screen.refresh(layout=True)
        await pilot.pause(0.2)
    return run_before


def _events_at_midnight(monkeypatch: Any) -> None:
    # Event times render in local time: pin the zone so the snapshot is the same anywhere.
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()


SIZES = [(80, 24), (140, 42)]
VIEWS = {"overview": (), "flows": ("2",), "flows-sorted": ("2", "s", "s", "s", "r"),
         "flow-detail": ("2", "enter"), "backends": ("3",), "backends-of-web": ("3", "enter"),
         "routes": ("4",), "ha": ("6",), "help": ("question_mark",)}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("view", VIEWS)
def test_view(snap_compare: Any, view: str, size: tuple[int, int]) -> None:
    assert snap_compare(_app(), run_before=_after(*VIEWS[view]), terminal_size=size)


class DualStackApi(FixedApi):
    """``web`` as a cluster's IPv6 listener that leaves out a node with no IPv6
    InternalIP (issue 19)."""

    def get(self, path: str, /, **q: Any) -> Any:
        if path == "/v1/listeners/web":
            return {**WEB, "left_out": ["n3: no IPv6 InternalIP"]}
        return super().get(path, **q)


def test_backends_say_which_nodes_are_left_out_and_why(snap_compare: Any) -> None:
    app = Console(api=DualStackApi(), interval=3600)
    app.animation_level = "none"
    assert snap_compare(app, run_before=_after("3", "enter"), terminal_size=(80, 24))


def test_backends_for_a_viewer(snap_compare: Any) -> None:
    assert snap_compare(_app("viewer"), run_before=_after("3", "enter"),
                        terminal_size=(80, 24))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_events(snap_compare: Any, monkeypatch: Any, size: tuple[int, int]) -> None:
    _events_at_midnight(monkeypatch)
    assert snap_compare(_app(), run_before=_after("5"), terminal_size=size)


def test_disconnected_data_is_dimmed_and_aged(snap_compare: Any, monkeypatch: Any) -> None:
    _events_at_midnight(monkeypatch)
    app = _app()

    async def gone(pilot: Pilot[Any]) -> None:
        await _after()(pilot)
        assert isinstance(app.source.api, FixedApi)
        app.source.api.down = True
        app.answered_at = app.lost_since = 0.0
        app.refresh_data()
        await _after()(pilot)
        # The age in the banner, pinned for the picture.
        app.answered_at, app.lost_since = 1000.0, 1012.0
        monkeypatch.setattr("tui.app.time.time", lambda: 1042.0)
        app.refresh_data()
        await _after()(pilot)

    assert snap_compare(app, run_before=gone, terminal_size=(80, 24))


def test_closing_while_a_request_is_out_is_quiet() -> None:
    """The console closing while a refresh waits on the daemon: the answer comes back
    once the console has stopped running, while its screens are being taken down. The
    refresh must drop it quietly, not touch the going widgets and fail the app (a
    clean-clone CI run caught this as NoMatches('#banner'))."""
    app = Console(api=None, interval=3600)
    before: list[int] = []
    late: list[str] = []

    class ClosingApi(FixedApi):
        def get(self, path: str, /, **q: Any) -> Any:
            if before:
                late.append(path)
            elif path == "/v1/status" and app.refreshes >= 1:
                before.append(app.refreshes)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and app.is_running:
                    time.sleep(0)  # answer the moment the console stops
            return super().get(path, **q)

    app.source.api = ClosingApi()

    class Holder(Static):
        async def on_unmount(self) -> None:
            # Holds the taking down of the main screen until the late answer was dealt
            # with, so that the refresh cannot be cancelled before it sees the answer.
            for _ in range(50):
                if late or app.refreshes != before[0]:
                    return
                await asyncio.sleep(0.01)

    async def run() -> None:  # Textual runs on asyncio; the suite's async tests on trio
        async with app.run_test() as pilot:
            for _ in range(200):
                if app.refreshes >= 1:
                    break
                await pilot.pause(0.02)
            await app.screen_stack[0].mount(Holder())
            app.refresh_data()  # this one waits on the daemon while the console closes
            for _ in range(100):
                if before:
                    break
                await pilot.pause(0.01)

    asyncio.run(run())
    assert before and app.refreshes == before[0] and late == []


def test_the_flows_page_follows_the_table_height() -> None:
    """Only the rows that fit are fetched: when the table's height changes after a page
    came in (a resize, or the first layout arriving after the first answer), the page is
    fetched again for the new height. Before, a page fetched before the first layout
    stayed sized for the bare screen, and the flows snapshot differed now and then."""
    app = _app()
    shown: list[str] = []

    async def run() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await _after("2")(pilot)
            shown.append(str(app.query_one("#flow-info", Static).render()))
            await pilot.resize_terminal(80, 40)
            await _after()(pilot)
            shown.append(str(app.query_one("#flow-info", Static).render()))

    asyncio.run(run())
    small, big = (int(s.split()[1].split("-")[1]) for s in shown)
    assert big > small + 10, shown


def test_columns_collapse_by_importance_and_widen_for_new_values() -> None:
    """A narrow table keeps its key columns and drops the others, least important first;
    a cell that grows widens its column (the overview's RATE showed "8.5/" after "0/s")."""
    from textual.app import App, ComposeResult

    from tui.tables import Column, FittedTable, fit

    cols = (Column("KEY"), Column("A", 2), Column("B", 1), Column("C", 3))
    assert fit(cols, [10, 10, 10, 10], 40) == [0, 1, 2, 3]
    assert fit(cols, [10, 10, 10, 10], 30) == [0, 1, 2]  # C goes first
    assert fit(cols, [10, 10, 10, 10], 20) == [0, 2]
    assert fit(cols, [10, 10, 10, 10], 5) == [0]  # a key column stays anyway

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield FittedTable((Column("NAME"), Column("RATE", 1)), id="t")

    lines: list[str] = []

    async def run() -> None:
        app = One()
        async with app.run_test(size=(40, 10)) as pilot:
            t = app.query_one(FittedTable)
            t.show([("web", ["web", "0/s"])])
            await pilot.pause(0.1)
            t.show([("web", ["web", "8.5/s"])])
            await pilot.pause(0.1)
            lines.append(t.render_line(1).text)
            t.mark_sorted("RATE", True)
            await pilot.pause(0.1)
            lines.append(t.render_line(0).text)

    asyncio.run(run())
    assert "8.5/s" in lines[0] and "RATE↓" in lines[1], lines


def test_column_widths_are_set_from_the_rows_not_measured_later() -> None:
    """The table measured rows only when idle, and rows drawn before that stayed cut at
    the header's width: over SSH the backends view showed "127.0.0" for every backend.
    The widths are set as the rows are shown."""
    from textual.app import App, ComposeResult

    from tui.tables import Column, FittedTable

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield FittedTable((Column("BACKEND"), Column("STATE")), id="t")

    widths: list[tuple[bool, int]] = []

    async def run() -> None:
        app = One()
        async with app.run_test(size=(60, 10)):
            t = app.query_one(FittedTable)
            t.show([("a", ["127.0.0.1:34385", "ready"])])
            # No pause: as drawn before the table's next idle.
            widths.extend((c.auto_width, c.width) for c in t.columns.values())

    asyncio.run(run())
    assert widths == [(False, 15), (False, 5)], widths


def test_a_long_question_wraps_inside_its_dialog() -> None:
    """Issue 17, item 8: a failover's explanation was cut off at the dialog's edge."""
    from tui.screens import ConfirmScreen

    app = _app()
    shots: list[str] = []

    async def run() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            app.push_screen(ConfirmScreen(
                "HA failover?\n(a master hands its VIPs to the other box; a backup takes "
                "them, and the end of this sentence is far past the dialog's width)"))
            await pilot.pause(0.3)
            shots.append(app.export_screenshot())

    asyncio.run(run())
    # Text in the picture is split at spaces into runs; the last words are there.
    assert "width)" in shots[0] and "dialog" in shots[0]
