"""Throttled logging: a failure recurring for many objects is said once per cause."""

from __future__ import annotations

import logging

import pytest

from appliance.logs import Causes


def test_each_cause_is_said_once_per_interval_with_its_count(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("appliance.logs.time.monotonic", lambda: now[0])
    warn = Causes(logging.getLogger("t"), every=10)
    with caplog.at_level(logging.WARNING):
        for i in range(500):
            warn("refused", logging.WARNING, "write %d failed: refused", i)
        warn("500", logging.WARNING, "write failed: 500")
        assert [r.getMessage() for r in caplog.records] == [
            "write 0 failed: refused", "write failed: 500"]
        now[0] += 11
        warn("refused", logging.WARNING, "write %d failed: refused", 500)
    assert caplog.records[-1].getMessage() == \
        "write 500 failed: refused (500 times in the last 11s)"
