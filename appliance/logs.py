"""Logging set-up: human text or one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def json_record(created: float, level: str, logger: str, msg: str, pid: int | None,
                fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """One log line as ``--log-format json`` writes it (the access log's too)."""
    out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) +
           f".{int((created - int(created)) * 1000):03d}Z", "level": level,
           "logger": logger, "msg": msg, "pid": pid}
    if fields:
        out.update(fields)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = json_record(record.created, record.levelname.lower(), record.name,
                          record.getMessage(), record.process,
                          getattr(record, "access", None))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


_format = "text"


def log_format() -> str:
    """The format ``setup`` was given: ``text`` or ``json``."""
    return _format


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send logs to stderr, where systemd's journal picks them up."""
    global _format
    _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Throttled:
    """A condition that can recur many times a second (descriptors exhausted, an API
    down for a backlog of writes) logged once per ``every`` seconds, with how often it
    happened meanwhile, so that it cannot flood the log."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self.last = -1e18
        self.count = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last < self.every:
            return
        if self.count > 1 and self.last > -1e18:
            msg += f" ({self.count} times in the last {now - self.last:.0f}s)"
        self.logger.log(level, msg, *args)
        self.last, self.count = now, 0


class Causes:
    """``Throttled`` per cause: a failure that recurs for many objects (a status write
    to an API that went away) is logged once per cause and interval, with its count,
    while a different cause is still said at once."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self.by_cause: dict[str, Throttled] = {}

    def __call__(self, cause: str, level: int, msg: str, *args: object) -> None:
        throttled = self.by_cause.get(cause)
        if throttled is None:
            throttled = self.by_cause[cause] = Throttled(self.logger, self.every)
        throttled(level, msg, *args)
