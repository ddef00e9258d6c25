"""A config file as a tree of values with their line numbers, and the errors that point
into it. Every error names the key path (``listeners[0].health.interval``) and the line
where the offending value stands, so that an operator can go straight to it.

Nothing in a file can do more than fail with such an error: the file is bounded in size
(``MAX_BYTES``), in nesting (``MAX_DEPTH``) and in the values it expands to
(``MAX_VALUES``: YAML aliases may be used, but a "billion laughs" of nested aliases is
refused), and every YAML failure (a control character, an unknown tag, an integer too
long to convert) becomes a line-numbered issue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

# A 20,000-backend config is about 1 MB; nothing real comes near these.
MAX_BYTES = 16 << 20
MAX_DEPTH = 64
MAX_VALUES = 1_000_000


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


class _Tree:
    """Builds the Node tree, within the depth and value budgets. A YAML node reached
    again through an alias is converted once and shared; the budgets count it as often
    as it is reached, so a "billion laughs" is refused without being expanded."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.values = 0  # as expanded: each alias counts its whole value again
        self.loader = yaml.SafeLoader("")
        # id(yaml node) -> (its Node, values it expands to, levels below it)
        self.done: dict[int, tuple[Node, int, int]] = {}

    def close(self) -> None:
        """Let the YAML go when the parse returns. The loader refers to itself (its
        parser state) and to every node it constructed, so the whole YAML tree stayed as
        cyclic garbage: at 5,000 listeners, 60,000 objects per reload, collected in
        pauses of up to 200 ms that stalled the event loop (and the rules being put in
        force)."""
        self.loader.constructed_objects.clear()
        self.loader.dispose()
        self.done.clear()

    def node(self, n: yaml.Node, path: str, depth: int) -> tuple[Node, int]:
        """The Node for ``n`` and how many levels deep it goes."""
        seen = self.done.get(id(n))
        if seen is not None:
            node, size, height = seen
            self._count(size, n, path, depth + height)
            return node, height
        before = self.values
        self._count(1, n, path, depth)
        node, height = self._convert(n, path, depth)
        self.done[id(n)] = (node, self.values - before, height)
        return node, height

    def _count(self, values: int, n: yaml.Node, path: str, depth: int) -> None:
        self.values += values
        line = n.start_mark.line + 1
        if self.values > MAX_VALUES:
            raise ConfigError([ConfigIssue("", line, f"the file expands to more than "
                                           f"{MAX_VALUES} values (nested YAML aliases?)")])
        if depth > MAX_DEPTH:
            raise ConfigError([ConfigIssue("", line, f"nested more than {MAX_DEPTH} levels "
                                                     "deep")])

    def _convert(self, n: yaml.Node, path: str, depth: int) -> tuple[Node, int]:
        line = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out: dict[str, Node] = {}
            height = 0
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    self.issues.append(ConfigIssue(path, k.start_mark.line + 1,
                                                   "a key must be a plain name, not a list "
                                                   "or a mapping"))
                    continue
                key = k.value
                sub = f"{path}.{key}" if path else str(key)
                if key in out:
                    # PyYAML silently keeps the last duplicate; an operator almost never
                    # means that.
                    self.issues.append(ConfigIssue(sub, k.start_mark.line + 1,
                                                   "duplicate key"))
                out[key], h = self.node(v, sub, depth + 1)
                height = max(height, h + 1)
            return Node(out, line), height
        if isinstance(n, yaml.SequenceNode):
            items = [self.node(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(n.value)]
            return Node([item for item, _ in items], line), \
                max((h + 1 for _, h in items), default=0)
        assert isinstance(n, yaml.ScalarNode)
        try:
            return Node(self.loader.construct_object(n, deep=True), line), 0
        except yaml.MarkedYAMLError as e:
            self.issues.append(ConfigIssue(path, line, _problem(e)))
        except ValueError as e:  # an integer past Python's conversion limit
            self.issues.append(ConfigIssue(path, line, f"cannot read this value: {e}"))
        return Node(None, line), 0


def _problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        return " ".join(filter(None, (e.context, e.problem))) or "YAML syntax"
    return str(e).split("\n", 1)[0]


def parse_yaml(text: str, source: str = "") -> Node:
    """Parse YAML text into a Node tree; every failure is a ConfigError with the line."""
    if len(text) > MAX_BYTES:
        raise ConfigError([ConfigIssue("", 0, f"the file is larger than {MAX_BYTES >> 20} "
                                              "MiB")], source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise ConfigError([ConfigIssue("", line, f"YAML syntax: {e.problem}")],
                          source) from None
    except yaml.reader.ReaderError as e:
        # A character YAML does not allow (NUL, ESC, DEL, a form feed ...).
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError([ConfigIssue("", line, f"character #x{e.character:04x} is not "
                                                 "allowed in a YAML file")], source) from None
    except yaml.YAMLError as e:
        raise ConfigError([ConfigIssue("", 0, f"YAML: {_problem(e)}")], source) from None
    except RecursionError:
        raise ConfigError([ConfigIssue("", 0, "nested too deeply")], source) from None
    if root is None:
        return Node({}, 1)
    tree = _Tree()
    try:
        node, _ = tree.node(root, "", 0)
    except ConfigError as e:
        raise ConfigError(e.issues, source) from None
    finally:
        tree.close()
    if tree.issues:
        raise ConfigError(tree.issues, source)
    return node
