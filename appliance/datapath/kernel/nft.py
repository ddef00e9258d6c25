"""nftables, through the ``nft`` command: whether this box may program it, scripts run in
one transaction each, and the counters the rules keep. Blocking calls: the kernel
datapath runs them in a thread."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

from .tools import run_tool

# An nft run that takes longer than this is stuck (a held netlink lock): it fails.
TIMEOUT = 60.0


class NftError(Exception):
    """nft refused a script (nothing of it was applied) or could not run."""


def unavailable() -> str | None:
    """Why this process cannot program nftables (no ``nft``, no CAP_NET_ADMIN, no
    nf_tables in the kernel), or None when it can."""
    nft = shutil.which("nft")
    if nft is None:
        return "the nft command is not installed"
    try:
        r = run_tool([nft, "list", "tables"], TIMEOUT)
    except OSError as e:
        return f"nft could not run: {e}"
    if r.returncode != 0:
        why = r.stderr.strip().splitlines()
        return f"nft cannot list tables: {why[-1] if why else r.returncode}"
    return None


def run(script: str) -> None:
    """Run ``script`` as one transaction: all of it is applied, or none and NftError
    says why."""
    try:
        r = run_tool(["nft", "-f", "-"], TIMEOUT, stdin=script)
    except OSError as e:
        raise NftError(f"nft could not run: {e}") from None
    if r.returncode != 0:
        raise NftError(_first_error(r.stderr) or f"nft exited {r.returncode}")


def _first_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return next((ln for ln in lines if "Error" in ln), lines[0] if lines else "")


def delete_table(table: str) -> None:
    """Remove edgelb's table if it is there."""
    run(f"add table inet {table}\ndelete table inet {table}\n")


def _list(*args: str) -> list[dict[str, Any]]:
    r = run_tool(["nft", "-j", "list", *args], TIMEOUT)
    if r.returncode != 0:
        raise NftError(_first_error(r.stderr) or f"nft exited {r.returncode}")
    items: list[dict[str, Any]] = json.loads(r.stdout or "{}").get("nftables", [])
    return items


@dataclass
class Counters:
    """What the rules counted: per listener id (accepted, refused for want of a backend)
    and per (listener id, backend address) (connections, bytes in, bytes out). A
    listener's marks (with and without source NAT) add up."""

    accepted: dict[int, int] = field(default_factory=dict)
    no_backend: dict[int, int] = field(default_factory=dict)
    backends: dict[tuple[int, str, int], list[int]] = field(default_factory=dict)


def read_counters(table: str, id_mask: int) -> Counters:
    """The table's counters: the ``accepted`` and ``refused`` sets (per listener, by ct
    mark) and the per-backend sets."""
    out = Counters()
    for name, table_of in (("accepted", out.accepted), ("refused", out.no_backend)):
        for item in _list("set", "inet", table, name):
            for elem in (item.get("set") or {}).get("elem", []):
                e = elem.get("elem", elem) if isinstance(elem, dict) else {}
                mark = e.get("val") if isinstance(e, dict) else None
                if isinstance(mark, int):
                    lid = mark & id_mask
                    table_of[lid] = table_of.get(lid, 0) + int(
                        e.get("counter", {}).get("packets", 0))
    for column, prefix in ((0, "bconn"), (1, "bin"), (2, "bout")):
        for family in (4, 6):
            for item in _list("set", "inet", table, f"{prefix}{family}"):
                s = item.get("set")
                if not s:
                    continue
                for elem in s.get("elem", []):
                    key, count = _element(elem)
                    if key is None:
                        continue
                    mark, host, port = key
                    row = out.backends.setdefault((mark & id_mask, host, port), [0, 0, 0])
                    row[column] += count[0] if column == 0 else count[1]
    return out


def _element(elem: Any) -> tuple[tuple[int, str, int] | None, tuple[int, int]]:
    """(mark, host, port) and (packets, bytes) of a dynamic set element with a counter."""
    e = elem.get("elem", elem) if isinstance(elem, dict) else elem
    val = e.get("val") if isinstance(e, dict) else None
    counter = e.get("counter", {}) if isinstance(e, dict) else {}
    concat = val.get("concat") if isinstance(val, dict) else None
    if not concat or len(concat) != 3:
        return None, (0, 0)
    mark, host, port = concat
    return (int(mark), str(host), int(port)), (int(counter.get("packets", 0)),
                                               int(counter.get("bytes", 0)))
