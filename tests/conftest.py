"""Every test's daemons get a control socket of their own (and an audit log beside it),
never the system's /run/edgelb."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.helpers import short_dir


@pytest.fixture(autouse=True)
def _control_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    d = short_dir()
    path = f"{d}/control.sock"
    monkeypatch.setenv("EDGELB_SOCKET", path)
    yield path
    shutil.rmtree(d, ignore_errors=True)
