"""Rates on the daemon's clock (issue 17, item 5): a steady load reads steady whatever
the steps the counters move in, asking again at once changes nothing, and a counter
that starts again never reads as a negative or huge rate."""

from __future__ import annotations

from appliance.control.rates import WINDOW, Counts, RateMeter


def _steady(meter: RateMeter, seconds: int, step: float, per_second: int,
            start: float = 0.0) -> None:
    """``per_second`` connections, the counter read only every ``step`` seconds (as the
    kernel's are, every 2 s), sampled each second with a little jitter."""
    for i in range(seconds):
        now = start + i + (0.01 if i % 2 else -0.01)
        read_at = (now // step) * step
        meter.sample(now, {"web": Counts(int(read_at * per_second), 0, 0)})


def test_counters_read_in_steps_give_a_steady_rate() -> None:
    meter = RateMeter()
    _steady(meter, 20, 2.0, 15)
    seen = []
    for i in range(20, 40):
        now = i + (0.01 if i % 2 else -0.01)
        meter.sample(now, {"web": Counts(int((now // 2.0) * 2.0 * 15), 0, 0)})
        seen.append(meter.listeners["web"].connections)
    assert all(14 <= r <= 16 for r in seen), seen
    assert meter.total.connections == meter.listeners["web"].connections


def test_a_refresh_right_after_another_does_not_spike() -> None:
    meter = RateMeter()
    _steady(meter, 10, 0.5, 15)
    before = meter.as_json()
    # The console asking twice in a row reads the same sample: nothing is re-divided.
    assert meter.as_json() == before
    assert 14 <= before["connections"] <= 16  # type: ignore[operator]
    assert before["window"] == WINDOW


def test_a_counter_that_starts_again_reads_zero_not_negative() -> None:
    meter = RateMeter()
    for i in range(6):
        meter.sample(float(i), {"web": Counts(1000 + 100 * i, 50 * i, 10_000 * i)})
    assert meter.listeners["web"].requests == 50
    meter.sample(6.0, {"web": Counts(5, 0, 0)})  # a worker respawned
    assert meter.listeners["web"] == type(meter.listeners["web"])(0, 0, 0)
    meter.sample(7.0, {})  # the listener is gone
    assert "web" not in meter.listeners and meter.total.connections == 0


def test_history_is_a_point_per_sample_of_flows_and_bytes() -> None:
    meter = RateMeter()
    for i in range(70):
        meter.sample(float(i), {"a": Counts(10 * i, 0, 100 * i), "b": Counts(0, 5 * i, 0)})
    out = meter.as_json()
    assert len(out["flows_history"]) == 60  # type: ignore[arg-type]
    assert out["flows_history"][-1] == 15.0  # type: ignore[index]
    assert out["bytes_history"][-1] == 100  # type: ignore[index]
    assert out["samples"] == 70
