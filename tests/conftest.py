"""Every test's daemons get a control socket of their own (and an audit log beside it),
never the system's /run/edgelb."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _control_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Short: Unix socket paths are limited to 107 bytes, pytest's tmp_path is longer.
    d = tempfile.mkdtemp(prefix="elb-")
    path = f"{d}/control.sock"
    monkeypatch.setenv("EDGELB_SOCKET", path)
    yield path
    shutil.rmtree(d, ignore_errors=True)
