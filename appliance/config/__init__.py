"""The YAML configuration: its schema (``schema``), its value types (``values``), the file
with line numbers (``source``), and the Snapshot it yields (``build``). The service that
loads, reloads and composes Snapshots is ``service``, imported on its own: nothing here
runs an event loop."""

from .build import build_snapshot, default_control, load_file, load_text
from .source import ConfigError, ConfigIssue, Node, parse_yaml
from .values import parse_address, parse_duration

__all__ = ["ConfigError", "ConfigIssue", "Node", "build_snapshot", "default_control",
           "load_file", "load_text", "parse_address", "parse_duration", "parse_yaml"]
