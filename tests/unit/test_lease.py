"""Lease election decisions (pure)."""

from __future__ import annotations

from appliance.ha.lease import Leadership, decide, micro_time, parse_time


def lease(holder: str | None, renewed: float, duration: int = 10, rv: str = "7") -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "renewTime": micro_time(renewed),
                     "leaseDurationSeconds": duration, "leaseTransitions": 2}}


def test_create_renew_wait_acquire_release() -> None:
    d = decide("a", "l", "ns", None, 1000.0, 10)
    assert d.action == "create" and d.body is not None
    assert d.body["spec"]["holderIdentity"] == "a"
    d = decide("a", "l", "ns", lease("a", 995.0), 1000.0, 10)
    assert d.action == "renew" and d.body is not None
    assert d.body["metadata"]["resourceVersion"] == "7"  # a stale write gets 409
    assert decide("b", "l", "ns", lease("a", 995.0), 1000.0, 10).action == "wait"
    d = decide("b", "l", "ns", lease("a", 985.0), 1000.0, 10)
    assert d.action == "acquire" and d.body is not None
    assert d.body["spec"]["leaseTransitions"] == 3
    d = decide("a", "l", "ns", lease("a", 995.0), 1000.0, 10, release=True)
    assert d.action == "release" and d.body is not None
    assert d.body["spec"]["holderIdentity"] is None
    assert decide("b", "l", "ns", lease(None, 999.0), 1000.0, 10).action == "acquire"


def test_times_round_trip_and_leadership_runs_out() -> None:
    assert abs(parse_time(micro_time(1234.5678)) - 1234.5678) < 1e-5
    # What the official client sends back after its own serialization.
    assert parse_time("1970-01-01T00:20:34.567800+00:00") == 1234.5678
    lead = Leadership(10)
    assert not lead.leading(0)
    lead.won(100.0)
    assert lead.leading(105.0) and not lead.leading(109.5)
