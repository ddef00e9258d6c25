"""What the simulated API server means by its queries and writes: label and field
selectors, JSON merge patch (RFC 7386) and JSON patch (RFC 6902). Pure."""

from __future__ import annotations

import copy
import re
from typing import Any

from .store import ApiError

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur)
    return terms


Requirement = tuple[str, str, frozenset[str]]  # (key or field path, op, values)


def _requirements(selector: str, fields: bool) -> list[Requirement]:
    reqs: list[Requirement] = []
    for raw in _split_terms(selector):
        term = raw.strip()
        m = _SET_TERM.match(term)
        if m and not fields:
            vals = frozenset(v.strip() for v in m.group(3).split(","))
            reqs.append((m.group(1), m.group(2), vals))
        elif "!=" in term:
            key, val = term.split("!=", 1)
            reqs.append((key.strip(), "!=", frozenset({val.strip()})))
        elif "=" in term:
            key, val = term.replace("==", "=").split("=", 1)
            reqs.append((key.strip(), "=", frozenset({val.strip()})))
        elif term.startswith("!") and not fields:
            reqs.append((term[1:].strip(), "!exists", frozenset()))
        elif term and not fields and re.fullmatch(r"[\w./-]+", term):
            reqs.append((term, "exists", frozenset()))
        elif term:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return reqs


def _holds(op: str, value: str | None, values: frozenset[str]) -> bool:
    if op in ("=", "in"):
        return value in values
    if op in ("!=", "notin"):
        return value not in values
    return (value is not None) == (op == "exists")


class LabelSelector:
    """A Kubernetes label selector (``a=1,b!=2,c,!d,e in (x,y),f notin (z)``)."""

    def __init__(self, selector: str) -> None:
        self.reqs = _requirements(selector, fields=False)

    def __call__(self, labels: dict[str, str]) -> bool:
        return all(_holds(op, labels.get(k), vals) for k, op, vals in self.reqs)


class FieldSelector:
    """A field selector (``metadata.name=x,spec.type!=y``) on an object."""

    def __init__(self, selector: str) -> None:
        self.reqs = _requirements(selector, fields=True)

    def __call__(self, obj: dict[str, Any]) -> bool:
        return all(_holds(op, _field(obj, k), vals) for k, op, vals in self.reqs)


def label_matcher(selector: str) -> LabelSelector:
    return LabelSelector(selector)


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


# -- patches ------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)

    def walk(parts: list[str]) -> tuple[Any, str]:
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(parts: list[str]) -> Any:
        cur = doc
        for p in parts:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def add(parts: list[str], value: Any) -> None:
        parent, last = walk(parts)
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    def remove(parts: list[str]) -> Any:
        parent, last = walk(parts)
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    try:
        for op in ops:
            kind, path = op["op"], _pointer(op["path"])
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(path, remove(_pointer(op["from"])))
            elif kind == "copy":
                add(path, copy.deepcopy(get(_pointer(op["from"]))))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
            else:
                raise ApiError(422, "Invalid", f"unknown patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ApiError(422, "Invalid", f"the patch does not apply: {e}") from None
    return doc
