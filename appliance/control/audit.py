"""The audit log: one JSON line per action, who asked, what, and what came of it."""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

from ..files import append_line, trusted_dir
from .roles import Caller

log = logging.getLogger("edgelb.audit")

RESULT_CHARS = 512


def _bounded(text: str) -> str:
    return text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + "..."


class AuditLog:
    """Appends to ``path`` (created 0640, its directory 0750 and trusted: see
    ``files.trusted_dir``, which raises when it is not); every line is also logged, so
    that a journal keeps a copy when the file is lost."""

    def __init__(self, path: str) -> None:
        self.path = path
        trusted_dir(os.path.dirname(path), 0o750)

    def record(self, caller: Caller, action: str, target: dict[str, Any] | str,
               result: str) -> dict[str, Any]:
        """Append one entry and return it. The action's name and result are bounded: a
        caller's input echoed in them cannot grow the log."""
        entry = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                 "uid": caller.uid, "user": caller.user, "role": caller.role or "none",
                 "pid": caller.pid, "action": action[:64], "target": target,
                 "result": _bounded(result)}
        line = json.dumps(entry, sort_keys=True)
        log.info("audit: %s", line)
        try:
            append_line(self.path, line + "\n")
        except OSError as e:
            log.error("audit log %s not written: %s", self.path, e.strerror or e)
        return entry
