"""The walk of a parsed config along the schema: each value converted by its key's
type, unknown keys reported with a "did you mean", required keys checked, and every
problem collected as a ``ConfigIssue`` with its key path and line."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from . import schema as s
from .source import ConfigIssue, Node
from .values import closest, kind_of

T = TypeVar("T")


class Walker:
    """Walks the Node tree along the schema, converting values and collecting issues."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.lines: dict[int, int] = {}

    def fail(self, path: str, node: Node | None, message: str) -> None:
        self.issues.append(ConfigIssue(path, node.line if node else 0, message))

    def mapping(self, node: Node, path: str, allowed: set[str]) -> dict[str, Node] | None:
        """The mapping at ``node``, with every key outside ``allowed`` reported."""
        if not isinstance(node.value, dict):
            self.fail(path, node, f"expected a mapping, got {kind_of(node.value)}")
            return None
        for key, sub in node.value.items():
            if key not in allowed:
                hint = closest(key, allowed)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                self.fail(f"{path}.{key}" if path else key, sub, f"unknown key{extra}")
        self.lines[id(node.value)] = node.line
        return node.value

    def section(self, m: dict[str, Node], name: str, path: str,
                sec: s.Section) -> dict[str, Node] | None:
        """The sub-mapping ``name`` of ``m``, checked against ``sec``; None if absent."""
        node = m.get(name)
        if node is None or node.value is None:
            return None
        return self.mapping(node, f"{path}.{name}" if path else name, sec.names)

    def get(self, m: dict[str, Node], key: s.Key, path: str) -> Any:
        """The converted value of ``key``: None when it is absent (reported if required)
        or invalid (reported)."""
        node = m.get(key.name)
        full = f"{path}.{key.name}" if path else key.name
        if node is None or node.value is None:
            if key.required:
                # A missing key has no line of its own; point at its mapping.
                self.issues.append(ConfigIssue(full, self.lines.get(id(m), 0), "is required"))
            return None
        try:
            return key.conv(node.value)
        except (ValueError, TypeError) as e:
            self.fail(full, node, str(e))
            return None

    def scalars(self, m: dict[str, Node], path: str, sec: s.Section) -> dict[str, Any]:
        """The model fields that ``sec``'s keys (and its flat sub-sections') set: only
        those given and valid, so that the others keep the model's defaults."""
        out: dict[str, Any] = {}
        for e in sec.entries:
            if isinstance(e, s.Key):
                value = self.get(m, e, path)
                if value is not None:
                    out[e.target] = value
            elif isinstance(e, s.Section) and e.flat:
                sub = self.section(m, e.name, path, e)
                if sub is not None:
                    out.update(self.scalars(sub, f"{path}.{e.name}" if path else e.name, e))
            elif isinstance(e, s.ListOf) and not isinstance(e.item, s.Section) and e.name in m:
                out[e.target] = tuple(self.items(m, e, path))
        return out

    def build(self, base: T, m: dict[str, Node] | None, path: str, sec: s.Section) -> T:
        """``base`` with the values ``m`` gives for ``sec``'s keys."""
        if m is None:
            return base
        return replace(base, **self.scalars(m, path, sec))  # type: ignore[type-var]

    def items(self, m: dict[str, Node], entry: s.ListOf, path: str) -> list[Any]:
        """A list of scalars, each converted (its error at ``key[i]``); empty when absent."""
        node = m.get(entry.name)
        full = f"{path}.{entry.name}" if path else entry.name
        if node is None or node.value is None:
            return []
        if not isinstance(node.value, list):
            self.fail(full, node, f"expected a list of {entry.what}")
            return []
        conv = entry.item
        assert not isinstance(conv, s.Section)
        out = []
        for i, item in enumerate(node.value):
            try:
                out.append(conv(item.value))
            except (ValueError, TypeError) as e:
                self.fail(f"{full}[{i}]", item, str(e))
        return out

    def nodes(self, m: dict[str, Node], name: str, path: str) -> list[Node] | None:
        """The items of a list of mappings; None (reported) when it is not a list."""
        node = m.get(name)
        if node is None or node.value is None:
            return []
        if not isinstance(node.value, list):
            self.fail(f"{path}.{name}" if path else name, node,
                      f"expected a list, got {kind_of(node.value)}")
            return None
        return list(node.value)
