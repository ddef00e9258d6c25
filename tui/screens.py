"""Modal screens of the console: a confirmation before anything disruptive, a prompt for
a value, and the help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

HELP = """\
[b]edgelb console[/b]: every view reads the daemon's control API; actions need the
operator or admin role (a viewer sees none, and the API refuses them anyway).

[b]Views[/b]   1 overview  2 flows  3 backends  4 routes  5 events  6 HA
[b]Keys[/b]    ? help   : command   ctrl+p palette   / filter (flows)   q quit
  flows     s sort by the next column   r reverse   n/p next/previous page
  backends  d drain   u undrain   x disable   e enable   w weight
  HA        f failover   D demote   P promote   A auto (configured priority)
  anywhere  R reload the config
Each action asks for confirmation, and its answer is shown and kept in the events view.

[b]Commands[/b] (after :)
  overview | flows | backends [LISTENER] | routes | events | ha
  drain|undrain|disable|enable LISTENER BACKEND     weight LISTENER BACKEND N|config
  failover | demote | promote | auto | reload       sort FIELD [desc]   filter TEXT   q

[b]Flows columns[/b]
  ID       worker.flow number       CLIENT   the client's address and port
  VIP      the listener's address   BACKEND  where the flow goes (pool/address for HTTP)
  PROTO    tcp, udp, http, https    IN/OUT   bytes client->backend / backend->client
  AGE      time since it opened     STATE    connecting or established

[b]Backends columns[/b]
  HEALTH   up/down by active checks; unchecked where none run (node ports: the node's
           Ready condition and passive ejection decide)
  STATE    ready; drain (no new flows, open ones run on); maint (disabled: out of the
           pool, open flows cut after drain_timeout)
  WEIGHT   in force (0 while drained or disabled); "set" when an operator changed it
  ACTIVE   open flows   FLOWS all flows   REQ HTTP requests   FAIL failed connects

[b]Overview[/b]  HA state and peers, VIPs, requests/s and bytes/s over the last minute,
  cluster sync, and alerts (no healthy backend, lowered VRRP priority, a watch out of
  sync, operators' changes in force).
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
    """One value typed in (Enter) or nothing (Esc)."""

    AUTO_FOCUS = "Input"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            yield Input(id="answer")

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
