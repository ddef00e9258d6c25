from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance.datapath.flows import FlowTable
from appliance.datapath.proxyproto import header, parse_v1, parse_v2


def test_v1_exact_bytes() -> None:
    assert header("v1", ("192.0.2.1", 5000), ("198.51.100.2", 80)) == \
        b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 80\r\n"


@given(st.ip_addresses(), st.ip_addresses(), st.integers(1, 65535), st.integers(1, 65535))
def test_roundtrip(src: object, dst: object, sp: int, dp: int) -> None:
    s, d = str(src), str(dst)
    for version, parse in (("v1", parse_v1), ("v2", parse_v2)):
        data = header(version, (s, sp), (d, dp)) + b"payload"
        (ps, psp), (pd, pdp), n = parse(data)
        assert data[n:] == b"payload"
        assert (psp, pdp) == (sp, dp)
        if ":" not in s and ":" not in d:
            assert (ps, pd) == (s, d)


def test_flow_table_evicts_oldest_and_expires_idle() -> None:
    t: FlowTable[str] = FlowTable(max_flows=2, idle=10)
    assert t.add(("a", 1), "A", 0) == []
    assert t.add(("b", 1), "B", 1) == []
    assert t.get(("a", 1), 2) == "A"  # a is now the most recent
    assert t.add(("c", 1), "C", 3) == ["B"]
    assert t.expire(12.5) == ["A"]
    assert len(t) == 1
    t.remove(("c", 1), "not C")
    assert len(t) == 1
    t.remove(("c", 1), "C")
    assert len(t) == 0
