"""Drawing the console's data: tables updated by key (touching only the cells that
changed), the HA view's text, rates from the daemon's counters."""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from appliance.control.format import status_lines


def rate(history: deque[tuple[float, float]]) -> float:
    if len(history) < 2:
        return 0.0
    (t0, v0), (t1, v1) = history[-2], history[-1]
    return max(0.0, (v1 - v0) / (t1 - t0)) if t1 > t0 else 0.0


def sync_rows(table: DataTable[Any], rows: list[tuple[str, list[Any]]]) -> None:
    """Make ``table`` show ``rows`` (key, cells), touching only the cells that changed
    when the keys are the same, in the same order, as before. Cells are plain text: an
    address like [fe80::1]:80 must not be read as markup."""
    rows = [(k, [Text(str(c)) for c in cells]) for k, cells in rows]
    keys = [k for k, _ in rows]
    current = [str(r.value) for r in table.rows]
    if keys == current:
        columns = list(table.columns)
        for key, cells in rows:
            old = table.get_row(key)
            for col, (a, b) in zip(columns, zip(old, cells, strict=False), strict=False):
                if str(a) != str(b):
                    table.update_cell(key, col, b)
        return
    cursor = table.cursor_row
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if rows:
        table.move_cursor(row=min(cursor, len(rows) - 1), animate=False)


def ha_text(st: dict[str, Any], may_change: bool) -> str:
    ha = st["ha"]
    out = [line for line in status_lines(st) if line.startswith(("HA", "  peer"))]
    if ha.get("override"):
        out.append(f"held by an operator: {ha['override']}")
    if ha["mode"] == "standalone":
        out.append("\nNo HA configured: nothing to fail over to.")
    elif may_change:
        out.append("\nf failover (hand over, or take over if backup)   D demote   P promote"
                   "   A auto")
    else:
        out.append("\n(read-only: failover needs the operator or admin role)")
    return "\n".join(out)
