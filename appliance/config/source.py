"""A config file as a tree of values with their line numbers, and the errors that point
into it. Every error names the key path (``listeners[0].health.interval``) and the line
where the offending value stands, so that an operator can go straight to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class ConfigError(Exception):
    """A config that cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue], source: str = "") -> None:
        self.issues = issues
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(i) for i in issues))


@dataclass
class Node:
    """A YAML value with the line (1-based) it starts on."""

    value: Any
    line: int


def _to_node(n: yaml.Node, issues: list[ConfigIssue], path: str) -> Node:
    line = n.start_mark.line + 1
    if isinstance(n, yaml.MappingNode):
        out: dict[str, Node] = {}
        for k, v in n.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            sub = f"{path}.{key}" if path else str(key)
            if key in out:
                # PyYAML silently keeps the last duplicate; an operator almost never means that.
                issues.append(ConfigIssue(sub, k.start_mark.line + 1, "duplicate key"))
            out[key] = _to_node(v, issues, sub)
        return Node(out, line)
    if isinstance(n, yaml.SequenceNode):
        return Node([_to_node(v, issues, f"{path}[{i}]") for i, v in enumerate(n.value)], line)
    assert isinstance(n, yaml.ScalarNode)
    return Node(yaml.SafeLoader("").construct_object(n, deep=True), line)


def parse_yaml(text: str, source: str = "") -> Node:
    """Parse YAML text into a Node tree, raising ConfigError with the line on bad syntax."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise ConfigError([ConfigIssue("", line, f"YAML syntax: {e.problem}")], source) from e
    if root is None:
        return Node({}, 1)
    issues: list[ConfigIssue] = []
    node = _to_node(root, issues, "")
    if issues:
        raise ConfigError(issues, source)
    return node
