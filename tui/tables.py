"""Drawing the console's data: tables updated by key (touching only the cells that
changed) whose less important columns collapse first when the terminal is narrow, the
colours of states, and the HA view's text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from appliance.control.format import status_lines


@dataclass(frozen=True)
class Column:
    """A table column: its header and how soon it collapses on a narrow screen (0 never,
    higher numbers first)."""

    name: str
    drop: int = 0


# The colour of each state word: the worst ones stand out, the good ones are quiet.
STYLES = {"ok": "green", "up": "green", "ready": "green", "established": "",
          "degraded": "bold yellow", "drain": "bold yellow", "unchecked": "dim",
          "down": "bold red", "maint": "bold red"}


def styled(word: str) -> Text:
    """A state word in its colour (the word says it without colour too)."""
    return Text(word, style=STYLES.get(word, ""))


def fit(columns: Sequence[Column], widths: Sequence[int], room: int) -> list[int]:
    """The columns that fit in ``room`` cells, by index in their order: every column that
    never collapses, then the others by how late they collapse (left first among
    equals), each while it still fits."""
    order = sorted(range(len(columns)), key=lambda i: (columns[i].drop, i))
    kept, used = [], 0
    for i in order:
        if columns[i].drop == 0 or used + widths[i] <= room:
            kept.append(i)
            used += widths[i]
    return sorted(kept)


def sync_rows(table: DataTable[Any], rows: list[tuple[str, list[Any]]]) -> None:
    """Make ``table`` show ``rows`` (key, cells), touching only the cells that changed
    when the keys are the same, in the same order, as before. Cells are plain text (an
    address like [fe80::1]:80 must not be read as markup) or Text in a colour."""
    rows = [(k, [c if isinstance(c, Text) else Text(str(c)) for c in cells])
            for k, cells in rows]
    keys = [k for k, _ in rows]
    current = [str(r.value) for r in table.rows]
    if keys == current:
        columns = list(table.columns)
        for key, cells in rows:
            old = table.get_row(key)
            for col, (a, b) in zip(columns, zip(old, cells, strict=False), strict=False):
                if str(a) != str(b) or getattr(a, "style", "") != b.style:
                    # A wider value widens its column (8.5/s after 0/s was cut off).
                    table.update_cell(key, col, b, update_width=True)
        return
    cursor = table.cursor_row
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if rows:
        table.move_cursor(row=min(cursor, len(rows) - 1), animate=False)


class FittedTable(DataTable[Any]):
    """A table that shows the columns that fit its width, the less important ones
    collapsing first, and marks the column it is sorted by."""

    def __init__(self, columns: Sequence[Column], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = tuple(columns)
        self.rows_shown: list[tuple[str, list[Any]]] = []
        self.sorted_by: tuple[str, bool] | None = None  # (column name, descending)
        self._shape: tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...]] | None = None

    def show(self, rows: list[tuple[str, list[Any]]]) -> None:
        """Show ``rows`` (key, a cell per column of the spec)."""
        self.rows_shown = rows
        self._draw()

    def mark_sorted(self, name: str | None, desc: bool) -> None:
        """Mark the column ``name`` (None: none) as the one the rows are sorted by."""
        self.sorted_by = (name, desc) if name else None
        self._draw()

    def shown_columns(self) -> list[str]:
        """The names of the columns shown now."""
        return [self.spec[i].name for i in (self._shape[0] if self._shape else ())]

    def on_resize(self, event: events.Resize) -> None:
        self._draw()

    def _label(self, name: str) -> str:
        if self.sorted_by is None or self.sorted_by[0] != name:
            return name
        return f"{name}{'↓' if self.sorted_by[1] else '↑'}"

    def _draw(self) -> None:
        labels = [self._label(c.name) for c in self.spec]
        widths = [len(label) + 2 for label in labels]
        for _, cells in self.rows_shown:
            for i, cell in enumerate(cells):
                widths[i] = max(widths[i], len(str(cell)) + 2)
        # The width less a vertical scrollbar's; before the first layout, every column.
        room = self.size.width - 2 if self.size.width else sum(widths)
        kept = tuple(fit(self.spec, widths, room))
        shape = (kept, tuple(labels[i] for i in kept), tuple(widths[i] for i in kept))
        if shape != self._shape:
            cursor = self.cursor_row
            self.clear(columns=True)
            # Widths are set, not measured by the table: it measures new rows only when
            # idle, and rows drawn before that stayed cut at the header's width (seen in
            # a real terminal, never under the test pilot).
            for i in kept:
                self.add_column(labels[i], key=self.spec[i].name, width=widths[i] - 2)
            self._shape = shape
            sync_rows(self, [(k, [cells[i] for i in kept]) for k, cells in self.rows_shown])
            if self.row_count:
                self.move_cursor(row=min(cursor, self.row_count - 1), animate=False)
            return
        sync_rows(self, [(k, [cells[i] for i in kept]) for k, cells in self.rows_shown])


def ha_text(st: dict[str, Any], may_change: bool) -> str:
    """The HA view: the state of each router and its peers, and what may be done."""
    ha = st["ha"]
    out = [line for line in status_lines(st) if line.startswith(("HA", "  peer", "  VIP"))]
    if ha.get("override"):
        out.append(f"held by an operator: {ha['override']}")
    if ha["mode"] == "standalone":
        out.append("\nNo HA configured: nothing to fail over to.")
    elif ha["mode"] == "bgp":
        out.append("\nEvery box serves: the routers spread flows over the boxes that "
                   "announce a VIP.")
        if may_change:
            out.append(":drain-box withdraws this box's VIPs (open flows run on); "
                       ":undrain-box announces them again")
    elif may_change:
        out.append("\nf failover (hand over, or take over if backup)   D demote   P promote"
                   "   A auto")
    else:
        out.append("\n(read-only: failover needs the operator or admin role)")
    return "\n".join(out)
