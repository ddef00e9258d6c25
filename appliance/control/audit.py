"""The audit log: one JSON line per action, who asked, what, and what came of it."""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any

from .roles import Caller

log = logging.getLogger("edgelb.audit")


class AuditLog:
    """Appends to ``path`` (created 0640, its directory 0750); every line is also logged,
    so that a journal keeps a copy when the file is lost."""

    def __init__(self, path: str) -> None:
        self.path = path

    def record(self, caller: Caller, action: str, target: dict[str, Any] | str,
               result: str) -> dict[str, Any]:
        """Append one entry and return it."""
        entry = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                 "uid": caller.uid, "user": caller.user, "role": caller.role or "none",
                 "pid": caller.pid, "action": action, "target": target, "result": result}
        line = json.dumps(entry, sort_keys=True)
        log.info("audit: %s", line)
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            with os.fdopen(fd, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            log.error("audit log %s not written: %s", self.path, e.strerror or e)
        return entry
