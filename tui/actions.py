"""The console's operator actions: drain, undrain, disable, enable and weight a
backend, cut a flow, fail over, reload. What cannot succeed is said at once and never
asked about; the rest asks first (y/n), then goes to the control API, whose answer is
shown and kept in the events view; the daemon audits it either way."""

from __future__ import annotations

from typing import Any, TypeVar

from textual import work
from textual.app import App
from textual.widget import Widget
from textual.widgets import DataTable, Log

from appliance.control.client import ControlError

from .commands import CommandError, parse_command
from .screens import ConfirmScreen, PromptScreen
from .source import Source

W = TypeVar("W", bound=Widget)


class OperatorActions(App[int]):
    """The actions of the console (``Console`` mixes them in)."""

    source: Source
    listener_name: str
    backends: dict[str, dict[str, Any]]

    def _main(self, selector: str, kind: type[W]) -> W:
        """A widget of the main screen, also while a dialog is on top."""
        return self.screen_stack[0].query_one(selector, kind)

    def may_change(self) -> bool:
        """Whether the caller's role may act (operator or admin)."""
        raise NotImplementedError

    def refresh_data(self) -> Any:
        """Read the daemon again (the console's worker)."""
        raise NotImplementedError

    def _selected_backend(self) -> str | None:
        table = self._main("#backends-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return str(key.value) if key.value is not None else None

    def action_backend(self, action: str) -> None:
        backend = self._selected_backend()
        if backend is None or not self.listener_name:
            self.notify("no backend selected", severity="warning", markup=False)
            return
        self.check_then_confirm(action, self.listener_name, backend)

    @work(group="ask")
    async def check_then_confirm(self, action: str, listener: str, backend: str,
                                 weight: str = "") -> None:
        """Ask about a backend action only when it can succeed; otherwise say why not."""
        try:
            d = await self.source.get(f"/v1/listeners/{listener}")
        except ControlError as e:
            self.notify(e.message, severity="error", markup=False)
            return
        if not self.is_running or d is None:
            return
        members = {b["key"]: b for p in d["pools"] for b in p["backends"]}
        b = members.get(backend)
        problem = backend_problem(action, listener, backend, b, list(members))
        if problem:
            self.notify(problem, severity="warning", markup=False)
        elif action == "weight" and not weight:
            assert b is not None
            self._prompt_weight(listener, b)
        elif action == "weight":
            self._confirm_weight(listener, backend, weight)
        else:
            self._confirm_backend(action, listener, backend)

    def _confirm_backend(self, action: str, listener: str, backend: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._act(action, listener=listener, backend=backend)

        what = {"drain": "no new flows; open flows run to their end",
                "disable": "out of the pool; open flows are cut after drain_timeout",
                "undrain": "back to ready", "enable": "back to ready"}[action]
        self.push_screen(ConfirmScreen(f"{action} {backend} of {listener}?\n({what})"),
                         answered)

    def action_weight(self) -> None:
        backend = self._selected_backend()
        if backend is None or not self.listener_name:
            self.notify("no backend selected", severity="warning", markup=False)
            return
        self.check_then_confirm("weight", self.listener_name, backend)

    def _prompt_weight(self, listener: str, b: dict[str, Any]) -> None:
        backend = b["key"]

        def given(value: str | None) -> None:
            if value is None:
                return
            try:
                parse_command(f"weight {listener} {backend} {value}")
            except CommandError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self._confirm_weight(listener, backend, value)

        now = b["effective_weight"]
        source = "set by an operator" if b["admin_weight"] is not None else "as configured"
        self.push_screen(PromptScreen(
            f"Weight for {backend} of {listener}: now {now} ({source}; the config says "
            f"{b['weight']}). 0-256, or config:", str(now)), given)

    def _confirm_weight(self, listener: str, backend: str, value: str) -> None:
        weight = None if value == "config" else int(value)

        def answered(yes: bool | None) -> None:
            if yes:
                self._act("weight", listener=listener, backend=backend, weight=weight)

        to = "the configured weight" if value == "config" else value
        self.push_screen(ConfirmScreen(f"set the weight of {backend} of {listener} to "
                                       f"{to}?"), answered)

    def confirm_cut(self, flow_id: str, flow: dict[str, Any] | None) -> None:
        """Ask, then cut one flow (the daemon says if it is not open any more)."""
        def answered(yes: bool | None) -> None:
            if yes:
                self._act("cut", flow=flow_id)

        what = f" of {flow['listener']} ({flow['client']} -> {flow['backend'] or '-'})" \
            if flow else ""
        self.push_screen(ConfirmScreen(f"cut flow {flow_id}{what}?\n(its connection is "
                                       "closed now; the client sees it end)"), answered)

    def action_ha(self, action: str) -> None:
        what = {"failover": "a master hands its VIPs to the other box; a backup takes "
                            "them",
                "demote": "this box stays backup until promote or auto",
                "promote": "this box takes the VIPs and stays preferred until auto",
                "auto": "back to the configured priority",
                "drain-box": "every VIP of this box withdrawn: the routers send new flows "
                             "to the other boxes; open flows run on",
                "undrain-box": "this box announces again the VIPs it serves"}[action]

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(action)

        self.push_screen(ConfirmScreen(f"HA {action}?\n({what})"), answered)

    def action_reload_config(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._act("reload")

        self.push_screen(ConfirmScreen("reload the config? (a bad config is refused and "
                                       "the current one keeps serving)"), answered)

    @work(group="act")
    async def _act(self, action: str, **args: Any) -> None:
        log = self._main("#events-log", Log)
        target = "".join(f" {v}" for v in args.values() if v is not None)
        try:
            r = await self.source.act(action, **args)
            if not self.is_running:
                return  # done and audited by the daemon; nothing left here to show it
        except ControlError as e:
            log.write_line(f"       you    {action}{target}: refused: {e.message}")
            self.notify(f"{action} refused: {e.message}", severity="error", timeout=8, markup=False)
            return
        text = r.get("result", "ok")
        if action == "cut":
            text = "the flow is cut"
        elif "state" in r:
            w = r["admin_weight"]
            text = f"{r['state']}, weight {w if w is not None else 'as configured'}"
        log.write_line(f"       you    {action}{target}: {text}")
        self.notify(f"{action}{target}: {text}", timeout=6, markup=False)
        self.refresh_data()


# What each backend action leaves the backend in, to say when it is there already.
_ALREADY = {"drain": ("drain", "drained"), "undrain": ("ready", "ready"),
            "disable": ("maint", "disabled"), "enable": ("ready", "ready")}


def backend_problem(action: str, listener: str, key: str, b: dict[str, Any] | None,
                    keys: list[str]) -> str:
    """Why ``action`` on backend ``key`` of ``listener`` cannot do anything ("" if it
    can): no such backend (naming the ones there are), or it is in that state already."""
    if b is None:
        shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
        return f"listener {listener} has no backend {key!r} (its backends: {shown or 'none'})"
    state, word = _ALREADY.get(action, ("", ""))
    if state and b["state"] == state:
        return f"{key} of {listener} is {word} already"
    return ""

