"""IPAM: requested and next-free addresses, sharing by key, exhaustion, release, one
address per family, and the property that no address is ever held by two services that
may not share it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.model import pool_addresses as parse_pool
from appliance.sync.ipam import AddressPool, AddressTaken, Ipam, NotInPool, PoolExhausted


def pool(text: str) -> AddressPool:
    return AddressPool(str(a) for a in parse_pool(text))


def test_pools() -> None:
    assert [str(a) for a in parse_pool("192.0.2.0/30")] == ["192.0.2.1", "192.0.2.2"]
    assert len(parse_pool("192.0.2.10-192.0.2.19")) == 10
    assert [str(a) for a in parse_pool("2001:db8::1")] == ["2001:db8::1"]
    with pytest.raises(ValueError, match="not a range"):
        parse_pool("192.0.2.9-192.0.2.1")


def test_allocate_request_share_release() -> None:
    ipam = pool("192.0.2.1-192.0.2.3")
    assert ipam.allocate("a", [("tcp", 80)]) == "192.0.2.1"
    assert ipam.allocate("a", [("tcp", 80)]) == "192.0.2.1"  # stable
    assert ipam.allocate("b", [("tcp", 80)], requested="192.0.2.3") == "192.0.2.3"
    with pytest.raises(AddressTaken):
        ipam.allocate("c", [("tcp", 80)], requested="192.0.2.3")
    with pytest.raises(NotInPool):
        ipam.allocate("c", [("tcp", 80)], requested="198.51.100.1")
    assert ipam.allocate("c", [("tcp", 80)]) == "192.0.2.2"
    with pytest.raises(PoolExhausted):
        ipam.allocate("d", [("tcp", 80)])
    ipam.release("c")
    assert ipam.allocate("d", [("tcp", 80)]) == "192.0.2.2"


def test_sharing_needs_the_same_key_and_distinct_ports() -> None:
    ipam = pool("192.0.2.1-192.0.2.2")
    a = ipam.allocate("a", [("tcp", 80)], sharing="k")
    assert ipam.allocate("b", [("udp", 80)], sharing="k") == a  # another protocol: fine
    assert ipam.allocate("c", [("tcp", 80)], sharing="k") != a  # collides: another one
    with pytest.raises(AddressTaken):
        ipam.allocate("d", [("tcp", 443)], requested=a)  # no key: may not share
    ipam.release("a")
    assert ipam.address_of("b") == a  # still held by b


def test_retain_releases_the_rest() -> None:
    ipam = Ipam(["192.0.2.0/29", "2001:db8::/126"])
    for s in "abc":
        ipam.allocate(s, 4, [("tcp", 80)])
    ipam.allocate("c", 6, [("tcp", 80)])
    assert ipam.retain(["b"]) == ["a", "c"]
    assert list(ipam) == [("b", "192.0.2.2")]


def test_one_address_per_family() -> None:
    ipam = Ipam(["2001:db8::10-2001:db8::11", "192.0.2.1-192.0.2.2"])
    assert ipam.first == 6 and ipam.offers(4) and ipam.offers(6)
    assert ipam.allocate("a", 4, [("tcp", 80)]) == "192.0.2.1"
    assert ipam.allocate("a", 6, [("tcp", 80)]) == "2001:db8::10"
    assert ipam.addresses_of("a") == {4: "192.0.2.1", 6: "2001:db8::10"}
    assert list(ipam) == [("a", "192.0.2.1"), ("a", "2001:db8::10")]
    with pytest.raises(NotInPool, match="not an IPv6 address"):
        ipam.allocate("b", 6, [("tcp", 80)], requested="192.0.2.2")
    assert ipam.allocate("b", 6, [("tcp", 80)], requested="2001:db8::11") == "2001:db8::11"
    with pytest.raises(PoolExhausted):
        ipam.allocate("c", 6, [("tcp", 80)])
    assert ipam.allocate("c", 4, [("tcp", 80)]) == "192.0.2.2"  # the other family is apart
    ipam.release("a", 6)
    assert ipam.addresses_of("a") == {4: "192.0.2.1"} and ipam.held() == 3
    assert ipam.allocate("c", 6, [("tcp", 80)]) == "2001:db8::10"
    ipam.release("c")
    assert ipam.addresses_of("c") == {}
    assert not Ipam(["192.0.2.1"]).offers(6)


ops = st.lists(st.tuples(st.sampled_from("abcdefg"), st.sampled_from(["", "k1", "k2"]),
                         st.sets(st.sampled_from([80, 443, 53]), min_size=1, max_size=2),
                         st.one_of(st.none(), st.sampled_from(["192.0.2.1", "192.0.2.2",
                                                               "2001:db8::1"])),
                         st.sampled_from([4, 6]), st.booleans()), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_never_double_allocates(
        steps: list[tuple[str, str, set[int], str | None, int, bool]]) -> None:
    ipam = Ipam(["192.0.2.1-192.0.2.4", "2001:db8::1-2001:db8::2"])
    sharing: dict[tuple[str, int], str] = {}
    ports: dict[tuple[str, int], set[int]] = {}
    for svc, key, prts, requested, family, release in steps:
        if release:
            ipam.release(svc, family)
            continue
        try:
            ipam.allocate(svc, family, [("tcp", p) for p in prts], requested, key)
            sharing[svc, family], ports[svc, family] = key, prts
        except (AddressTaken, PoolExhausted, NotInPool):
            assert ipam.address_of(svc, family) is None
        holders: dict[str, list[tuple[str, int]]] = {}
        for s, addr in ipam:
            holders.setdefault(addr, []).append((s, 6 if ":" in addr else 4))
        for addr, svcs in holders.items():
            if len(svcs) > 1:
                keys = {sharing[s] for s in svcs}
                assert len(keys) == 1 and "" not in keys, (addr, svcs)
                for i, s in enumerate(svcs):
                    for t in svcs[i + 1:]:
                        assert not ports[s] & ports[t]
