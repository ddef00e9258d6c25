"""The console (Textual, driven by its Pilot) against a real daemon: every view and
action, read-only for a viewer, and reconnecting after a restart. Console tests run
under asyncio (Textual's loop), each in its own event loop."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label, Log, Static

from appliance.control.client import Client
from tests.accounts import CONTROL_ROLES, Accounts, users  # noqa: F401
from tests.helpers import Edgelb, Server, ask, edgelb, free_port, named, wait_for
from tui.app import Console
from tui.screens import ConfirmScreen, FlowScreen, HelpScreen, PromptScreen
from tui.tables import FittedTable


def _config(port: int, http_port: int, b1: int, b2: int, extra: str = "") -> str:
    return f"""
drain_timeout: 1s
listeners:
  - name: web
    bind: 127.0.0.1:{port}
    datapath: user
    backends: [127.0.0.1:{b1}, 127.0.0.1:{b2}]
    health: {{type: tcp, interval: 0.2, rise: 1, fall: 1}}
  - name: site
    bind: 127.0.0.1:{http_port}
    protocol: http
    routes:
      - host: shop.test
        paths: [{{path: /api, type: Prefix, pool: api}}]
    pools:
      api: {{backends: [127.0.0.1:{b1}]}}
    default_pool: api
{extra}"""


def run_console(sock: str, body: Callable[[Console, Pilot[Any]], Awaitable[None]],
                size: tuple[int, int] = (100, 30)) -> None:
    async def main() -> None:
        app = Console(socket=sock, interval=0.2)
        async with app.run_test(size=size) as pilot:
            await settle(pilot, app)
            await body(app, pilot)
    asyncio.run(main())


async def settle(pilot: Pilot[Any], app: Console, rounds: int = 3) -> None:
    """Let a few refreshes happen."""
    start = app.refreshes
    for _ in range(100):
        await pilot.pause(0.05)
        if app.refreshes >= start + rounds:
            return


def rows(app: Console, table: str) -> list[list[Any]]:
    t = app.query_one(table, DataTable)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


def text(app: Console, widget: str) -> str:
    return str(app.query_one(widget, Static).render())


async def keys(pilot: Pilot[Any], *ks: str) -> None:
    for k in ks:
        await pilot.press(k)
    await pilot.pause(0.1)


def _hold(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"who\n")
        s.makefile("rb").readline()
        out.append(s)
    return out


def _notes(app: Console) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


def test_every_view_and_operator_action(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    with Server(named("one")) as one, Server(named("two")) as two, \
            edgelb(tmp_path, _config(port, http_port, one.port, two.port),
                   wait_port=port) as e:
        api = Client(e.socket)
        wait_for(lambda: {ask(port) for _ in range(6)} == {b"one", b"two"}, 10, "backends")
        held = _hold(port, 12)
        k1, k2 = f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"
        # Rates come from the daemon, over its own window (issue 17, item 5).
        wait_for(lambda: api.get("/v1/status")["rates"]["connections"] > 0, 10, "a rate")

        async def body(app: Console, pilot: Pilot[Any]) -> None:
            assert app.role == "admin"
            assert "HA standalone" in text(app, "#overview-text")
            assert "snapshot v1" in text(app, "#topline")
            # The overview lists every listener with its health (item 2).
            over = rows(app, "#overview-table")
            assert [r[:2] for r in over] == [["ok", "web"], ["ok", "site"]]
            assert over[0][2] == f"127.0.0.1:{port}" and over[0][5] == "2/2"
            assert over[0][6] == "12"  # open flows
            # Flows: paged by the daemon, filtered, sorted, the sorted column marked.
            await keys(pilot, "2")
            await settle(pilot, app)
            assert len(rows(app, "#flows-table")) == 12
            assert "of 12 (12 open)" in text(app, "#flow-info")
            assert "web" in rows(app, "#flows-table")[0]  # the listener (item 6)
            client_port = held[0].getsockname()[1]
            await keys(pilot, "slash", *f":{client_port}", "enter")
            await settle(pilot, app)
            assert [r[2] for r in rows(app, "#flows-table")] == [f"127.0.0.1:{client_port}"]
            await keys(pilot, "escape")  # Esc clears the filter
            await settle(pilot, app)
            assert app.flow_query["q"] == "" and len(rows(app, "#flows-table")) == 12
            await keys(pilot, "s", "s", "s")  # in column order: id, listener, client
            await settle(pilot, app)
            table = app.query_one("#flows-table", FittedTable)
            assert app.flow_query["sort"] == "client" and "CLIENT↑" in [
                str(c.label) for c in table.columns.values()]
            ports = [int(r[2].rsplit(":", 1)[1]) for r in rows(app, "#flows-table")]
            assert ports == sorted(ports)
            # Enter on a flow: its details, and c cuts it after a confirmation.
            await keys(pilot, "enter")
            assert isinstance(app.screen, FlowScreen)
            cut_id = app.screen.flow["id"]
            cut_port = int(app.screen.flow["client"].rsplit(":", 1)[1])
            await keys(pilot, "c")
            assert isinstance(app.screen, ConfirmScreen)
            await keys(pilot, "y")
            await pilot.pause(0.5)
            (gone,) = [s for s in held if s.getsockname()[1] == cut_port]
            gone.settimeout(5)
            assert gone.recv(1) == b""
            # Backends: Enter on a listener of the overview drills in (item 1).
            await keys(pilot, "1")
            await keys(pilot, "enter")
            await settle(pilot, app)
            assert app.query_one("#panes").active == "backends"  # type: ignore[attr-defined]
            assert app.listener_name == "web" and app.backend_detail
            assert f"backends of web (tcp 127.0.0.1:{port}, round_robin)" in text(
                app, "#backends-title")
            assert [r[0] for r in rows(app, "#backends-table")] == [k1, k2]
            await keys(pilot, "d")
            assert isinstance(app.screen, ConfirmScreen)
            await keys(pilot, "n")  # said no: nothing changes
            assert not isinstance(app.screen, ConfirmScreen)
            assert api.get("/v1/listeners/web")["pools"][0]["backends"][0]["state"] == "ready"
            await keys(pilot, "d", "y")
            await pilot.pause(0.5)
            await settle(pilot, app)
            assert rows(app, "#backends-table")[0][2] == "drain"
            assert {ask(port) for _ in range(6)} == {b"two"}
            # What cannot succeed is said, not asked (item 8).
            await keys(pilot, "d")
            await pilot.pause(0.3)
            assert not isinstance(app.screen, ConfirmScreen)
            assert "is drained already" in _notes(app)
            # Weight through the prompt, which shows the weight now (item 9).
            await keys(pilot, "down", "w")
            await pilot.pause(0.3)
            assert isinstance(app.screen, PromptScreen)
            assert app.screen.query_one(Input).value == "1"
            assert "now 1 (as configured" in str(app.screen.query_one(Label).render())
            await keys(pilot, "ctrl+a", "ctrl+k", "7", "enter", "y")
            await pilot.pause(0.5)
            await settle(pilot, app)
            assert rows(app, "#backends-table")[1][3] == "7 set"
            await keys(pilot, "x", "y")
            await pilot.pause(0.5)
            assert api.get("/v1/listeners/web")["pools"][0]["backends"][1]["state"] == "maint"
            await keys(pilot, "e", "y", "up", "u", "y")
            await pilot.pause(0.5)
            states = [b["state"] for b in api.get("/v1/listeners/web")["pools"][0]["backends"]]
            assert states == ["ready", "ready"]
            # Esc back to the listeners; the other one's pool of backends.
            await keys(pilot, "escape")
            assert not app.backend_detail
            await keys(pilot, "down", "enter")
            await settle(pilot, app)
            assert app.listener_name == "site"
            assert [r[0] for r in rows(app, "#backends-table")] == [f"api/{k1}"]
            assert "backends of site (http" in text(app, "#backends-title")
            # :backends NAME moves the list's cursor with it.
            await keys(pilot, "colon", *"backends web", "enter")
            await settle(pilot, app)
            assert app.listener_name == "web"
            assert app.query_one("#listeners-table", FittedTable).cursor_row == 0
            # Routes.
            await keys(pilot, "4")
            await settle(pilot, app)
            assert ["site", "shop.test", "/api", "Prefix", "api", k1] in rows(
                app, "#routes-table")
            # Events: every action, with who did it.
            await keys(pilot, "5")
            await settle(pilot, app)
            log = "\n".join(app.query_one("#events-log", Log).lines)
            assert f"root (admin): drain web {k1}" in log
            assert f"weight web {k2} to 7" in log and f"cut flow {cut_id} of web" in log
            # HA: standalone offers no failover, and the command says why (item 8).
            await keys(pilot, "6")
            await settle(pilot, app)
            assert "No HA configured" in text(app, "#ha-text")
            await keys(pilot, "f")
            assert not isinstance(app.screen, ConfirmScreen)
            await keys(pilot, "colon", *"failover", "enter")
            assert not isinstance(app.screen, ConfirmScreen)
            assert "No HA configured" in _notes(app)
            # : commands that cannot succeed are refused before asking.
            await keys(pilot, "colon", *"drain web nowhere:1", "enter")
            await pilot.pause(0.5)
            assert not isinstance(app.screen, ConfirmScreen)
            assert f"listener web has no backend 'nowhere:1' (its backends: {k1}, {k2})" \
                in _notes(app)
            await keys(pilot, "colon", *"drain nosuch 1.2.3.4:5", "enter")
            await pilot.pause(0.5)
            assert not isinstance(app.screen, ConfirmScreen)
            assert "no listener named 'nosuch'" in _notes(app)
            await keys(pilot, "question_mark")
            assert isinstance(app.screen, HelpScreen)
            await keys(pilot, "escape", "ctrl+p")
            assert isinstance(app.screen, CommandPalette)
            await keys(pilot, "escape")

        try:
            run_console(e.socket, body, size=(140, 42))
        finally:
            for s in held:
                s.close()
        audit = [json.loads(x) for x in
                 (Path(e.control_dir) / "audit.jsonl").read_text().splitlines()]
        assert [a["action"] for a in audit] == ["cut", "drain", "weight", "disable", "enable",
                                                "undrain"]


def test_console_fits_80x24_dims_stale_data_and_reconnects(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    with Server(named("one")) as one:
        e = Edgelb(tmp_path, _config(port, http_port, one.port, one.port + 1))
        e.start(wait_port=port)
        held = _hold(port, 2)

        async def body(app: Console, pilot: Pilot[Any]) -> None:
            assert app.query_one("#topline", Static).size.width == 80
            assert "snapshot v1" in text(app, "#topline")
            assert "Quit" in app.export_screenshot()  # the footer is whole (item 3)
            # The key columns of each table are kept at 80 columns (item 3).
            await keys(pilot, "2")
            await settle(pilot, app)
            shown = app.query_one("#flows-table", FittedTable).shown_columns()
            assert {"CLIENT", "BACKEND", "AGE", "STATE"} <= set(shown), shown
            await keys(pilot, "3", "enter")
            await settle(pilot, app)
            shown = app.query_one("#backends-table", FittedTable).shown_columns()
            assert shown[:3] == ["BACKEND", "HEALTH", "STATE"], shown
            await keys(pilot, "4")
            await settle(pilot, app)
            assert "LISTENER" in app.query_one("#routes-table", FittedTable).shown_columns()
            # The daemon goes: the data stays, dimmed, with its age (item 7).
            pid = app.status["pid"]
            e.stop()
            await settle(pilot, app)
            await pilot.pause(1.2)
            await settle(pilot, app)
            assert app.query_one("#banner").has_class("shown")
            banner = text(app, "#banner")
            assert "disconnected since" in banner and " old)" in banner
            assert app.query_one("#panes").has_class("stale")
            e.start(wait_port=port)
            for _ in range(100):
                await pilot.pause(0.1)
                if app.status.get("pid") not in (None, pid) and app.role:
                    break
            assert not app.query_one("#banner").has_class("shown")
            assert not app.query_one("#panes").has_class("stale")
            assert app.status["pid"] != pid and app.role == "admin"

        try:
            run_console(e.socket, body, size=(80, 24))
        finally:
            for s in held:
                s.close()
            e.stop()


VIEWER_SCRIPT = """
import asyncio, json, sys
from tui.app import Console

async def main():
    app = Console(socket=sys.argv[1], interval=0.2)
    out = {}
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(50):
            await pilot.pause(0.1)
            if app.role:
                break
        await pilot.press("3")
        await pilot.pause(0.5)
        out["role"] = app.role
        out["footer"] = sorted(b.binding.action for b in app.active_bindings.values()
                               if b.enabled)
        await pilot.press("d")
        await pilot.pause(0.2)
        out["screen"] = type(app.screen).__name__
        for k in [":", *"drain web 127.0.0.1:1", "enter"]:
            await pilot.press("colon" if k == ":" else k)
        await pilot.pause(0.3)
        out["notes"] = [str(n.message) for n in app._notifications]
    print(json.dumps(out))

asyncio.run(main())
"""


def test_viewer_console_has_no_actions(tmp_path: Path, users: Accounts) -> None:  # noqa: F811
    port, http_port = free_port(), free_port()
    with Server(named("one")) as one, \
            edgelb(tmp_path, _config(port, http_port, one.port, one.port + 1, CONTROL_ROLES),
                   wait_port=port) as e:
        import os

        os.chmod(os.path.dirname(e.socket), 0o755)
        script = Path(e.control_dir) / "viewer.py"
        script.write_text(textwrap.dedent(VIEWER_SCRIPT))
        os.chmod(script, 0o644)
        r = subprocess.run([shutil.which("runuser") or "runuser", "-u", "elbt-view", "--",
                            users.python, str(script),
                            e.socket], capture_output=True, text=True, timeout=60, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TERM": "xterm"})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["role"] == "viewer"
        assert not {"backend", "weight", "ha", "reload_config"} & set(out["footer"])
        assert out["screen"] != "ConfirmScreen"  # d does nothing for a viewer
        assert any("needs the operator or admin role" in n for n in out["notes"])
        assert not (Path(e.control_dir) / "audit.jsonl").exists() or \
            "drain" not in (Path(e.control_dir) / "audit.jsonl").read_text()
