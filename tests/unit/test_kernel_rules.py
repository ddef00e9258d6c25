"""The kernel datapath's pure parts: which listeners it serves, the dispatch slots, the
Maglev table it is given, the nftables script (whole and as a change), stable ids, and
conntrack's lines read back. The script running in a real kernel is tested in
tests/integration/test_kernel.py."""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import ConfigError, load_text
from appliance.datapath.balance import Maglev
from appliance.datapath.jhash import jhash, nft_jhash
from appliance.datapath.kernel.conntrack import parse
from appliance.datapath.kernel.rules import (
    Ids,
    Ruleset,
    dispatch_of,
    plan,
    render_change,
    render_full,
)
from appliance.datapath.paths import split
from appliance.model import Listener


def _snap(listeners: str) -> tuple[Listener, ...]:
    return load_text("listeners:\n" + listeners).listeners


def _ruleset(listeners: tuple[Listener, ...], down: frozenset[str] = frozenset()
             ) -> Ruleset:
    ids = Ids()
    out = {}
    for lst in listeners:
        usable = {lst.backend_key(b) for b in lst.backends} - down
        out[ids.of(lst.name)] = plan(lst, ids.of(lst.name), dispatch_of(lst, usable))
    return Ruleset(out)


WEB = """  - name: web
    bind: 192.0.2.10:80
    backends: [{address: 10.0.0.1:8080, weight: 4}, {address: 10.0.0.2:8080, weight: 2},
               {address: 10.0.0.3:8081, weight: 0}]
"""


def test_round_robin_slots_follow_the_weights_interleaved() -> None:
    (web,) = _snap(WEB)
    d = dispatch_of(web, None)
    assert d is not None and d.ports is not None
    # weights 4:2 reduce to 2:1; the drained (weight 0) backend gets no slot
    assert list(zip(d.hosts, d.ports, strict=True)) == [
        ("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.1", 8080)]
    only = dispatch_of(web, {"10.0.0.2:8080"})
    assert only is not None and only.hosts == ("10.0.0.2",)
    assert dispatch_of(web, set()) is None


def test_the_kernel_maglev_table_is_what_user_space_picks() -> None:
    backends = ", ".join(f"10.1.0.{i}:53" for i in range(1, 8))
    (dns,) = _snap(f"  - {{name: dns, bind: 192.0.2.10:53, protocol: udp, balance: maglev, "
                   f"backends: [{backends}]}}\n")
    down = {"10.1.0.3:53", "10.1.0.6:53"}
    d = dispatch_of(dns, {dns.backend_key(b) for b in dns.backends} - down)
    assert d is not None and len(d) == 65537
    user = Maglev([(b.key, b.weight) for b in dns.backends])
    available = [i for i, b in enumerate(dns.backends) if dns.backend_key(b) not in down]
    rnd = random.Random(1)
    for _ in range(1000):
        client = str(ipaddress.IPv4Address(rnd.getrandbits(32))).encode()
        i = user.pick(available, client)
        assert i is not None
        slot = nft_jhash(ipaddress.ip_address(client.decode()).packed, 65537, 0x00ED6E1B)
        assert d.hosts[slot] == dns.backends[i].host


class _AtSlot(Maglev):
    """Maglev whose key is the slot itself, so that pick() can be asked slot by slot."""

    def slot(self, key: bytes) -> int:
        return int(key)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=6), st.data())
def test_maglev_effective_matches_pick_slot_by_slot(weights: list[int],
                                                     data: st.DataObject) -> None:
    m = _AtSlot([(f"b{i}", w) for i, w in enumerate(weights)], table_size=257)
    avail = data.draw(st.sets(st.sampled_from(range(len(weights)))))
    eff = m.effective(avail)
    for s in range(m.size):
        assert eff[s] == (m.pick(avail, str(s).encode()) if avail else -1)


def test_jhash_known_answers() -> None:
    # Checked against the kernel's `jhash ip saddr` in tests/integration/test_kernel.py;
    # these pin the pure function against accidental change.
    assert jhash(b"", 0) == 0xDEADBEEF
    assert nft_jhash(bytes([10, 0, 0, 1]), 65536, 0xED6E) == 28316


def test_nodeport_listeners_over_the_same_nodes_share_one_map() -> None:
    from appliance.model import Backend, Proto

    nodes = tuple(Backend(f"10.2.0.{i}", 0) for i in range(1, 50))
    a = Listener("a", ("192.0.2.1", 80), Proto.TCP, backends=nodes, backend_port=30080)
    b = Listener("b", ("192.0.2.2", 443), Proto.TCP, backends=nodes, backend_port=30443)
    rs = _ruleset((a, b))
    assert len(rs.maps) == 1
    script = render_full(rs, "edgelb")
    assert script.count("map d_") == 1 and ": 30080" in script and ": 30443" in script


def test_a_change_touches_only_what_differs() -> None:
    lst = _snap(WEB + "  - {name: other, bind: 192.0.2.11:80, backends: [10.0.0.9:80]}\n")
    old = _ruleset(lst)
    assert render_change(old, old, "edgelb") is None
    new = _ruleset(lst, down=frozenset({"10.0.0.1:8080"}))
    script = render_change(old, new, "edgelb")
    assert script is not None
    assert "flush chain inet edgelb l_1" in script and "l_2" not in script
    assert "delete map" in script  # the old dispatch of web, no longer used
    gone = _ruleset(lst[:1])
    script = render_change(old, gone, "edgelb")
    assert script is not None and "delete chain inet edgelb l_2" in script
    assert "delete element inet edgelb svc4 { 192.0.2.11 . tcp . 80 }" in script


def test_ids_stay_with_their_names_and_are_never_given_again() -> None:
    ids = Ids()
    assert [ids.of(n) for n in ("a", "b", "c")] == [1, 2, 3]
    assert ids.of("c") == 3 and ids.of("d") == 4 and ids.of("a") == 1


def test_thousands_of_listeners_load_as_one_block_and_one_element_command() -> None:
    """One table block and one verdict map command: a block or an element command per
    listener took 5 s for 5,000 listeners here, one of each 0.2 s."""
    listed = "".join(f"  - {{name: l{i}, bind: '192.0.2.1:{10000 + i}', "
                     f"backends: ['10.0.0.{i % 250 + 1}:80']}}\n" for i in range(300))
    script = render_full(_ruleset(_snap(listed)), "edgelb")
    assert script.count("table inet edgelb {") == 1
    assert script.count("add element") == 1 and script.count(": jump l_") == 300
    assert "add counter" not in script  # counters are dynamic set elements


def test_auto_leaves_to_user_space_what_the_kernel_cannot_do() -> None:
    snap = load_text("""
listeners:
  - {name: k, bind: 192.0.2.1:80, backends: [10.0.0.1:80]}
  - {name: pp, bind: 192.0.2.1:81, backends: [10.0.0.1:80], proxy_protocol: v1}
  - {name: lc, bind: 192.0.2.1:82, backends: [10.0.0.1:80], balance: least_conn}
  - {name: mc, bind: 192.0.2.1:83, backends: [10.0.0.1:80], max_connections: 5}
  - {name: any, bind: 0.0.0.0:84, backends: [10.0.0.1:80]}
  - {name: mix, bind: 192.0.2.1:85, backends: ["[2001:db8::1]:80"]}
  - {name: u, bind: 192.0.2.1:86, backends: [10.0.0.1:80], datapath: user}
  - {name: h, bind: 192.0.2.1:87, protocol: http, backends: [10.0.0.1:80]}
""")
    ours, rest = split(snap, kernel=True)
    assert [lst.name for lst in ours] == ["k"]
    assert [lst.name for lst in rest.listeners] == ["pp", "lc", "mc", "any", "mix", "u", "h"]
    none, everything = split(snap, kernel=False)
    assert none == () and everything is snap


@pytest.mark.parametrize(("extra", "key", "words"), [
    ("proxy_protocol: v1, datapath: kernel", "listeners[0].datapath", "proxy_protocol"),
    ("balance: p2c, datapath: kernel", "listeners[0].datapath", "p2c"),
    ("datapath: user, snat: false", "listeners[0].snat", "datapath: user"),
    ("proxy_protocol: v2, snat: false", "listeners[0].snat", "user space"),
    ("datapath: kernal", "listeners[0].datapath", "one of auto, kernel, user"),
])
def test_what_the_kernel_cannot_serve_is_a_config_error(extra: str, key: str,
                                                       words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_text(f"listeners:\n  - {{name: a, bind: 192.0.2.1:80, "
                  f"backends: [10.0.0.1:80], {extra}}}\n")
    issue = e.value.issues[0]
    assert issue.path == key and issue.line == 2 and words in issue.message


def test_kernel_section_one_snat_address_per_family() -> None:
    with pytest.raises(ConfigError) as e:
        load_text("kernel: {snat_addresses: [10.0.0.1, 10.0.0.2]}\nlisteners: []\n")
    assert e.value.issues[0].path == "kernel.snat_addresses"
    spec = load_text("kernel: {snat_addresses: [10.0.0.1, 'fd00::1']}\nlisteners: []\n").kernel
    assert spec.snat_address(4) == "10.0.0.1" and spec.snat_address(6) == "fd00::1"


CONNTRACK = """\
ipv4     2 tcp      6 431999 ESTABLISHED src=198.51.100.7 dst=192.0.2.10 sport=40000 \
dport=80 packets=5 bytes=300 src=10.0.0.1 dst=10.9.0.1 sport=8080 dport=40000 packets=4 \
bytes=2000 [ASSURED] mark=3783262209 delta-time=12 use=1 id=77
ipv4     2 tcp      6 10 TIME_WAIT src=198.51.100.8 dst=192.0.2.10 sport=40001 dport=80 \
src=10.0.0.2 dst=10.9.0.1 sport=8080 dport=40001 [ASSURED] mark=3783262209 use=1 id=78
ipv6     10 udp      17 29 src=2001:db8::7 dst=2001:db8::10 sport=5353 dport=53 \
[UNREPLIED] src=2001:db8::1 dst=2001:db8::9 sport=53 dport=5353 mark=3783262210 use=1 id=79
"""


def test_conntrack_lines_read_back() -> None:
    a, b, c = parse(CONNTRACK)
    assert (a.id, a.proto, a.state, a.client, a.vip, a.backend) == (
        77, "tcp", "established", ("198.51.100.7", 40000), ("192.0.2.10", 80),
        ("10.0.0.1", 8080))
    assert (a.bytes_in, a.bytes_out, a.age, a.mark & 0x7FFFFF) == (300, 2000, 12.0, 1)
    assert a.open and not b.open
    assert (c.proto, c.state, c.backend, c.open) == ("udp", "unreplied", ("2001:db8::1", 53),
                                                     True)


def test_counters_count_by_listener() -> None:
    script = render_full(_ruleset(_snap(WEB)), "edgelb")
    assert "update @accepted { ct mark counter }" in script
    assert "set refused" in script and "set bconn4" in script


def test_a_map_with_ports_is_typed_by_its_protocol() -> None:
    """nft 1.0.6 cannot point a new rule at a map typed ``th dport`` once that map is in
    the kernel; a map typed ``tcp dport`` serves tcp listeners only."""
    tcp, udp = _snap("""  - {name: t, bind: 192.0.2.10:53, backends: [10.0.0.1:53]}
  - {name: u, bind: 192.0.2.10:53, protocol: udp, backends: [10.0.0.1:53]}
""")
    dt, du = dispatch_of(tcp, None), dispatch_of(udp, None)
    assert dt is not None and du is not None and dt.name != du.name
    script = render_full(_ruleset((tcp, udp)), "edgelb")
    assert "ip daddr . tcp dport" in script and "ip daddr . udp dport" in script
    assert "typeof numgen inc mod 1 : ip daddr . th dport" not in script


def test_a_hung_tool_raises_an_oserror_the_poll_loop_catches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """subprocess's TimeoutExpired is not an OSError: a conntrack or nft that hung would
    have escaped the poll loop's ``except OSError`` and ended the daemon."""
    from appliance.datapath.kernel import conntrack, nft

    for tool in ("conntrack", "nft"):
        fake = tmp_path / tool
        fake.write_text("#!/bin/sh\nexec sleep 5\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(conntrack, "TIMEOUT", 0.2)
    monkeypatch.setattr(nft, "TIMEOUT", 0.2)
    with pytest.raises(OSError, match="did not finish"):
        conntrack.list_flows(1, 1)
    with pytest.raises(OSError, match="did not finish"):
        conntrack.delete_flows(1, 1, "tcp", ("10.0.0.1", 80))
    with pytest.raises(OSError, match="did not finish"):
        nft.read_counters("edgelb", 0xFFFF)
    with pytest.raises(nft.NftError):
        nft.run("list tables\n")
