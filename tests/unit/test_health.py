from __future__ import annotations

from appliance.datapath.health import ActiveState, PassiveState, http_verdict
from appliance.model import PassiveSpec


def test_rise_and_fall() -> None:
    s = ActiveState(rise=2, fall=3)
    assert s.up
    assert not s.observe(False) and not s.observe(False)
    assert s.observe(False, "refused") and not s.up and s.last_error == "refused"
    assert not s.observe(True)
    assert not s.observe(False)  # a failure resets the rise streak
    assert not s.observe(True)
    assert s.observe(True) and s.up


def test_passive_ejection_backs_off_exponentially() -> None:
    p = PassiveState(PassiveSpec(failures=2, backoff=1.0, max_backoff=3.0))
    assert not p.failure(0.0)
    assert p.failure(0.0) and p.ejected(0.5) and not p.ejected(1.0)
    p.failure(1.0)
    assert p.failure(1.0) and p.ejected(2.9) and not p.ejected(3.0)  # 2s
    p.failure(3.0)
    assert p.failure(3.0) and p.ejected(5.9) and not p.ejected(6.0)  # capped at 3s
    p.success()
    p.failure(10.0)
    assert p.failure(10.0) and not p.ejected(11.0)  # back to 1s after a success


def test_passive_disabled() -> None:
    p = PassiveState(PassiveSpec(failures=0))
    assert not any(p.failure(0.0) for _ in range(10))


def test_http_verdict() -> None:
    assert http_verdict(b"HTTP/1.1 200 OK\r\n", 200) == (True, "")
    ok, why = http_verdict(b"HTTP/1.1 503 Busy\r\n", 200)
    assert not ok and "503" in why
    assert not http_verdict(b"SSH-2.0-OpenSSH\r\n", 200)[0]
    assert not http_verdict(b"", 200)[0]
