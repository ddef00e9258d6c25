"""The control API's requests and answers, apart from the socket: which path is which
endpoint, who may call it, query validation, flow filtering and paging. The daemon is
reached through the ``Plant`` protocol, so the API is tested against any object that
has those methods.

Endpoints (all JSON; ``?follow=1`` streams JSON lines):

    GET  /v1/whoami                 the caller's user and role
    GET  /v1/status                 version, uptime, HA, Snapshot, sync, totals, alerts
    GET  /v1/listeners              one summary per listener
    GET  /v1/listeners/NAME         its pools and backends: health, admin state, counters
    GET  /v1/routes                 HTTP routes: host, path -> pool -> backends
    GET  /v1/flows                  filter, sort and page (a stream of pages with follow)
    GET  /v1/events                 events since a sequence number (a stream with follow)
    POST /v1/actions/ACTION         drain, undrain, disable, enable, weight, failover,
                                    demote, promote, auto, reload (operator or admin)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import trio

from ..views import FLOW_FIELDS, FLOW_FILTERS, ActionRefused, FlowRow
from .roles import Caller

_SORTABLE = {f: i for i, f in enumerate(FLOW_FIELDS)} | {"bytes": -1}
_FILTERS = FLOW_FILTERS
ACTIONS = ("drain", "undrain", "disable", "enable", "weight", "failover", "demote",
           "promote", "auto", "reload", "cut", "drain-box", "undrain-box")
MAX_PAGE = 5000


class Plant(Protocol):
    """What the API needs of the daemon."""

    def status(self) -> dict[str, Any]: ...

    def listeners(self) -> list[dict[str, Any]]: ...

    def listener(self, name: str) -> dict[str, Any] | None: ...

    def routes(self) -> list[dict[str, Any]]: ...

    async def flow_rows(self) -> list[FlowRow]: ...

    def events(self, since: int) -> list[dict[str, Any]]: ...

    async def wait_event(self, since: int) -> None: ...

    async def act(self, caller: Caller, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """Do an action; raises ActionRefused with the status to answer."""
        ...

    def audit(self, caller: Caller, action: str, target: dict[str, Any], result: str) -> None:
        ...

    @property
    def streams(self) -> Streams:
        """The follow streams open now."""


# Each follow stream gathers every worker's flows, or waits for events, for as long as
# its client stays: the datapath pays for them. A user gets this many at once, and all
# users together this many; a flows stream refreshes at most once a second.
MAX_STREAMS_PER_USER = 4
MAX_STREAMS = 64
MIN_INTERVAL = 1.0


class Streams:
    """The follow streams open now, by user."""

    def __init__(self) -> None:
        self.by_uid: dict[int, int] = {}

    @property
    def open(self) -> int:
        return sum(self.by_uid.values())

    def take(self, caller: Caller) -> str | None:
        """One more stream for ``caller``; why not, when it may not have one."""
        if self.by_uid.get(caller.uid, 0) >= MAX_STREAMS_PER_USER:
            return (f"{caller.user} has {MAX_STREAMS_PER_USER} follow streams open already; "
                    "close one first")
        if self.open >= MAX_STREAMS:
            return f"{MAX_STREAMS} follow streams are open already; try again later"
        self.by_uid[caller.uid] = self.by_uid.get(caller.uid, 0) + 1
        return None

    def release(self, caller: Caller) -> None:
        left = self.by_uid.get(caller.uid, 0) - 1
        if left > 0:
            self.by_uid[caller.uid] = left
        else:
            self.by_uid.pop(caller.uid, None)


@dataclass
class Reply:
    """A whole answer, or (with ``stream``) JSON lines as they come."""

    status: int
    body: Any = None
    stream: AsyncIterator[Any] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message, "status": status})


class QueryError(ValueError):
    pass


def _int(q: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise QueryError(f"query parameter {key!r}: {raw!r} is not a whole number in "
                         f"{lo}-{hi}")
    return int(raw)


def _float(q: dict[str, str], key: str, default: float, lo: float, hi: float) -> float:
    raw = q.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        v = lo - 1
    if not lo <= v <= hi:
        raise QueryError(f"query parameter {key!r}: {raw!r} is not a number in {lo:g}-{hi:g}")
    return v


def _flag(q: dict[str, str], key: str) -> bool:
    return q.get(key, "") in ("1", "true", "yes")


def select_flows(rows: Sequence[FlowRow], q: dict[str, str]
                 ) -> tuple[int, list[FlowRow]]:
    """Filter (exact ``listener``, ``protocol``, ``state``, ``path``; substring ``backend``,
    ``client``, ``vip``; ``q`` anywhere), sort (``sort`` by a field, ``desc``) and page
    (``offset``, ``limit``) the flows; returns (matching count, the page)."""
    sel: Sequence[FlowRow] = rows
    for f in _FILTERS:
        want = q.get(f)
        if not want:
            continue
        i = FLOW_FIELDS.index(f)
        if f in ("listener", "protocol", "state", "path"):
            sel = [r for r in sel if r[i] == want]
        else:
            sel = [r for r in sel if want in r[i]]
    text = q.get("q")
    if text:
        sel = [r for r in sel if any(text in str(v) for v in r[1:6]) or text in r[9:11]]
    sort = q.get("sort", "")
    desc = _flag(q, "desc")
    if sort:
        if sort not in _SORTABLE:
            raise QueryError(f"cannot sort by {sort!r}; one of {', '.join(_SORTABLE)}")
        i = _SORTABLE[sort]
        key = (lambda r: r[6] + r[7]) if i < 0 else (lambda r: r[i])
        sel = sorted(sel, key=key, reverse=desc)
    elif desc:
        sel = list(reversed(sel))
    offset = _int(q, "offset", 0, 0, 1 << 31)
    limit = _int(q, "limit", 100, 0, MAX_PAGE)
    return len(sel), list(sel[offset:offset + limit])


def flow_dicts(rows: list[FlowRow]) -> list[dict[str, Any]]:
    return [dict(zip(FLOW_FIELDS, r, strict=True)) for r in rows]


async def handle(plant: Plant, caller: Caller, method: str, target: str,
                 body: bytes) -> Reply:
    """Answer one request of ``caller``."""
    parts = urlsplit(target)
    path = unquote(parts.path).rstrip("/") or "/"
    if caller.role is None:
        msg = f"user {caller.user} (uid {caller.uid}) has no edgelb role"
        if path.startswith("/v1/actions/"):  # refused actions are audited too
            _, _, kept = _arguments(body)
            plant.audit(caller, path.removeprefix("/v1/actions/")[:64], kept,
                        f"refused: {msg}")
        return error(403, msg)
    try:
        q = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        if path.startswith("/v1/actions/"):
            if method != "POST":
                return error(405, f"{path} takes POST")
            return await _action(plant, caller, path.removeprefix("/v1/actions/"), body)
        if method != "GET":
            return error(405, f"{path} takes GET")
        return await _read(plant, caller, path, q)
    except QueryError as e:
        return error(400, str(e))


async def _read(plant: Plant, caller: Caller, path: str, q: dict[str, str]) -> Reply:
    if path == "/v1/whoami":
        return Reply(200, {"user": caller.user, "uid": caller.uid, "role": caller.role})
    if path == "/v1/status":
        return Reply(200, plant.status())
    if path == "/v1/listeners":
        return Reply(200, {"listeners": plant.listeners()})
    if path.startswith("/v1/listeners/"):
        name = path.removeprefix("/v1/listeners/")
        found = plant.listener(name)
        if found is None:
            return error(404, f"no listener named {name!r}")
        return Reply(200, found)
    if path == "/v1/routes":
        return Reply(200, {"routes": plant.routes()})
    if path == "/v1/flows":
        select_flows([], q)  # a bad query is refused before anything is gathered
        if _flag(q, "follow"):
            interval = _float(q, "interval", 1.0, MIN_INTERVAL, 60.0)
            return _follow(plant, caller, _flow_pages(plant, q, interval))
        return Reply(200, await _flow_page(plant, q))
    if path == "/v1/events":
        since = _int(q, "since", 0, 0, 1 << 62)
        if _flag(q, "follow"):
            return _follow(plant, caller, _event_stream(plant, since))
        return Reply(200, {"events": plant.events(since)})
    return error(404, f"no endpoint {path}")


def _follow(plant: Plant, caller: Caller, items: AsyncIterator[Any]) -> Reply:
    """A follow stream, if ``caller`` may open one more (429 otherwise)."""
    refused = plant.streams.take(caller)
    if refused is not None:
        return error(429, refused)

    async def counted() -> AsyncIterator[Any]:
        try:
            async for item in items:
                yield item
        finally:
            plant.streams.release(caller)

    return Reply(200, stream=counted())


async def _flow_page(plant: Plant, q: dict[str, str]) -> dict[str, Any]:
    rows = await plant.flow_rows()
    total, page = select_flows(rows, q)
    return {"total": total, "all": len(rows), "offset": _int(q, "offset", 0, 0, 1 << 31),
            "flows": flow_dicts(page)}


async def _flow_pages(plant: Plant, q: dict[str, str], interval: float) -> AsyncIterator[Any]:
    while True:
        yield await _flow_page(plant, q)
        await trio.sleep(interval)


async def _event_stream(plant: Plant, since: int) -> AsyncIterator[Any]:
    while True:
        for e in plant.events(since):
            since = max(since, int(e["seq"]))
            yield e
        await plant.wait_event(since)


async def _action(plant: Plant, caller: Caller, action: str, body: bytes) -> Reply:
    if action not in ACTIONS:
        return error(404, f"no action {action!r}; one of {', '.join(ACTIONS)}")
    args, problem, target = _arguments(body)
    if not caller.may("operator"):
        msg = f"{action} needs the operator or admin role; {caller.user} is a {caller.role}"
        plant.audit(caller, action, target, f"refused: {msg}")
        return error(403, msg)
    if problem is not None:
        plant.audit(caller, action, target, f"failed: {problem}")
        return error(400, problem)
    try:
        done = await plant.act(caller, action, args)
    except ActionRefused as e:
        plant.audit(caller, action, target, f"failed: {e}")
        return error(e.status, str(e))
    plant.audit(caller, action, target, str(done.get("result", "ok")))
    return Reply(200, done)


def _arguments(body: bytes) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """An action's arguments, or why its body holds none; and what the audit log keeps
    of them."""
    try:
        args = json.loads(body or b"{}")
    except ValueError as e:
        problem = f"the body is not JSON: {e}"
    except RecursionError:
        problem = "the body is nested too deeply"
    else:
        if isinstance(args, dict):
            return args, None, audited(args)
        problem = "the body must be a JSON object"
    return {}, problem, {"body": f"{len(body)} bytes: {problem[:AUDITED_CHARS]}"}


# What an audit entry keeps of an action's body: its arguments, each bounded, and not
# whatever else a caller sent along.
AUDITED = ("listener", "backend", "weight", "flow")
AUDITED_CHARS = 256


def audited(args: dict[str, Any]) -> dict[str, Any]:
    """The action's arguments as the audit log records them."""
    out: dict[str, Any] = {}
    for key in AUDITED:
        if key in args:
            value = args[key]
            out[key] = value if isinstance(value, int | None) and not isinstance(
                value, bool) else str(value)[:AUDITED_CHARS]
    return out
