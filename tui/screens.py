"""Modal screens of the console: a confirmation before anything disruptive, a prompt for
a value, and the help."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from appliance.control.format import human_age, human_bytes

HELP = """\
[b]edgelb console[/b]: every view reads the daemon's control API. Actions need
the operator or admin role (a viewer sees none; the API refuses them).

[b]Views[/b]  1 overview  2 flows  3 backends  4 routes  5 events  6 HA
[b]Keys[/b]   ? help  : command  ^p palette  Tab next table  Esc back  q quit
 overview  Enter on a listener: its backends
 flows     / filter (Esc clears it)  s sort by the next column (or click
           its header)  r reverse  n/p page  Enter: details, c cuts it
 backends  Enter on a listener: its backends, Esc back to the listeners
           d drain  u undrain  x disable  e enable  w weight
 HA        f failover  D demote  P promote  A auto (configured priority)
 anywhere  R reload the config
Each action asks first; its answer is shown and kept in the events view.
What cannot succeed (a drained backend drained again, no such listener,
a failover without HA) is said at once and not asked.

[b]Commands[/b] (after :)
 overview | flows | backends \\[LISTENER] | routes | events | ha | help | q
 drain|undrain|disable|enable LISTENER BACKEND
 weight LISTENER BACKEND N|config     cut FLOW     reload
 failover | demote | promote | auto   sort FIELD \\[desc]   filter TEXT
 drain-box | undrain-box (bgp: withdraw this box's VIPs, or announce again)

[b]Listeners[/b] (overview and backends)
 STATE  ok; degraded (a backend down, drained, disabled or weighted 0);
        down (no backend takes flows)
 UP     backends taking flows / all
 OPEN   flows open to backends (HTTP: requests in flight)
 RATE   requests/s (HTTP) or new connections/s, over the daemon's last 4 s
 PATH   kernel, or user (space)

[b]Flows[/b]
 ID     worker.flow, or k.N in the kernel   CLIENT  address and port
 VIP    the listener's address    BACKEND  where it goes (HTTP: pool/addr)
 PROTO  tcp, udp, http, https     IN/OUT   bytes to / from the backend
 AGE    since it opened           STATE    connecting or established
 The sorted column is marked: ↑ ascending, ↓ descending.

[b]Backends[/b]
 HEALTH  up/down by active checks; unchecked where none run (node ports:
         the node's Ready condition and passive ejection decide)
 STATE   ready; drain (no new flows, open ones run on); maint (disabled:
         out of the pool, open flows cut after drain_timeout)
 WEIGHT  in force (0 while drained or disabled); "set": by an operator
 ACTIVE  open flows  FLOWS all flows  REQ requests  FAIL failed connects

A narrow screen keeps the key columns; the others collapse first (80x24
fits). When the daemon does not answer, the views dim and the banner says
how old they are; the console reconnects by itself.
"""


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no before a disruptive action."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n", "answer(False)", "No"),
                Binding("escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="question")
            yield Label("y: yes    n / Esc: no", id="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PromptScreen(ModalScreen[str | None]):
    """One value typed in (Enter) or nothing (Esc); ``value`` is there to start with."""

    AUTO_FOCUS = "Input"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = "") -> None:
        super().__init__()
        self.question = question
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            yield Input(self.value, id="answer", select_on_focus=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every key, command and column explained."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)


class FlowScreen(ModalScreen[bool]):
    """One flow in full: its listener, client, backend, bytes and age. Dismissed with
    True when the operator asks to cut it (``c``, offered only to those who may)."""

    BINDINGS = [Binding("escape,q,enter", "close", "Close"), Binding("c", "cut", "Cut")]

    def __init__(self, flow: dict[str, Any], may_cut: bool) -> None:
        super().__init__()
        self.flow = flow
        self.may_cut = may_cut

    def compose(self) -> ComposeResult:
        f = self.flow
        lines = [f"flow {f['id']} of listener {f['listener']} ({f['protocol']}, "
                 f"{f['path']} datapath)",
                 f"  client   {f['client']}", f"  VIP      {f['vip']}",
                 f"  backend  {f['backend'] or '-'}",
                 f"  state    {f['state']}, open {human_age(f['age'])}",
                 f"  bytes    {human_bytes(f['bytes_in'])} in (client->backend), "
                 f"{human_bytes(f['bytes_out'])} out"]
        hint = "c: cut this flow    Esc: close" if self.may_cut else \
            "Esc: close (cutting a flow needs the operator or admin role)"
        with Vertical(id="dialog"):
            yield Label("\n".join(lines), id="flow-detail", markup=False)
            yield Label(hint, id="hint")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.may_cut if action == "cut" else True

    def action_cut(self) -> None:
        self.dismiss(True)

    def action_close(self) -> None:
        self.dismiss(False)

