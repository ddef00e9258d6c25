"""BGP mode's pure part: what is announced and why not, the BIRD config (checked by
BIRD's own parser where BIRD is installed), and reading birdc's answers."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.ha.bgp import attributes, bird_config, decide, parse_bfd, parse_sessions
from appliance.model import Backend, BgpAnnounce, BgpPeer, HaSpec, Listener

HA = HaSpec(mode="bgp", asn=64512, router_id="192.0.2.11",
            peers=(BgpPeer("192.0.2.1", 64500, bfd=True, password="s3cret"),
                   BgpPeer("2001:db8::1", 64500, multihop=2, source="2001:db8::11")),
            vips=("203.0.113.10/32", "2001:db8:9::10/128"), communities=("64512:1",),
            announce=(BgpAnnounce("203.0.113.0/24", ("64512:7",), 200),),
            bird_include=("/etc/edgelb/bird-extra.conf",))
WEB = Listener("web", ("203.0.113.10", 80), backends=(Backend("10.0.0.1", 80),
                                                      Backend("10.0.0.2", 80)))


def test_what_is_announced_and_why_not() -> None:
    vips = ["203.0.113.10/32", "203.0.113.11", "203.0.113.12"]
    drained = replace(WEB, name="drained", bind=("203.0.113.12", 80),
                      backends=tuple(replace(b, weight=0) for b in WEB.backends))
    got = decide(vips, [WEB, drained], set(), "")
    assert got == {"203.0.113.10": "", "203.0.113.11": "no listener on it",
                   "203.0.113.12": "no healthy backend (drained)"}
    down = {("web", "10.0.0.1:80"), ("web", "10.0.0.2:80")}
    assert decide(vips[:1], [WEB], down, "")["203.0.113.10"] == "no healthy backend (web)"
    assert decide(vips[:1], [WEB], set(), "drained by ops") == {
        "203.0.113.10": "drained by ops"}
    # A listener on the wildcard address serves every VIP of its family.
    anywhere = replace(WEB, name="any", bind=("0.0.0.0", 80))
    assert decide(["203.0.113.11", "2001:db8::1"], [anywhere], set(), "") == {
        "203.0.113.11": "", "2001:db8::1": "no listener on it"}


def test_attributes_by_vip_or_pool() -> None:
    assert attributes("203.0.113.10", HA).communities == ("64512:1", "64512:7")
    assert attributes("203.0.113.10", HA).local_pref == 200
    assert attributes("198.51.100.1", HA).communities == ("64512:1",)
    assert attributes("198.51.100.1", HA).local_pref == 0


def test_the_bird_config_says_what_is_announced_and_bird_reads_it(tmp_path: Path) -> None:
    text = bird_config(HA, ["203.0.113.10", "2001:db8:9::10"])
    assert ("route 203.0.113.10/32 blackhole { bgp_community.add((64512,1)); "
            "bgp_community.add((64512,7)); bgp_local_pref = 200; };") in text
    assert "route 2001:db8:9::10/128 blackhole { bgp_community.add((64512,1)); };" in text
    assert 'password "s3cret";' in text and "bfd on;" in text and "multihop 2;" in text
    assert "local 2001:db8::11 as 64512;" in text
    assert 'include "/etc/edgelb/bird-extra.conf";' in text
    assert "route" not in bird_config(HA, []).split("protocol bgp")[0].replace(
        "router id", "")
    with pytest.raises(ValueError, match='cannot be written'):
        bird_config(replace(HA, peers=(BgpPeer("192.0.2.1", 1, password='a"b'),)), [])
    if shutil.which("bird") is None:
        pytest.skip("no bird to parse the config")
    conf = tmp_path / "bird.conf"
    conf.write_text(bird_config(replace(HA, bird_include=()), ["203.0.113.10"]))
    r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# As BIRD 2.0.12 answered, trimmed.
PROTOCOLS = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     21:31:32.598
edgelb_vips4 Static     master4    up     21:31:32.598
  Channel ipv4
    Routes:         1 imported, 0 exported, 1 preferred

edgelb_peer1 BGP        ---        up     21:31:32.601  Established
  Description:    peer 10.210.4.1 as 64500
  BGP state:          Established
    Neighbor address: 10.210.4.1
    Neighbor AS:      64500
  Channel ipv4
    State:          UP
    Routes:         0 imported, 1 exported, 0 preferred

edgelb_peer2 BGP        ---        start  21:31:33.001  Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 10.210.5.1
"""
BFD = """BIRD 2.0.12 ready.
edgelb_bfd:
IP address                Interface  State      Since         Interval  Timeout
10.210.4.1                up0        Up         21:31:32.600    0.100    0.300
10.210.5.1                up1        Down       21:31:33.000    1.000    0.000
"""


def test_birdc_answers_are_read() -> None:
    s1, s2 = parse_sessions(PROTOCOLS)
    assert (s1.name, s1.peer, s1.info, s1.exported, s1.established) == (
        "edgelb_peer1", "10.210.4.1", "Established", 1, True)
    assert (s2.peer, s2.state, s2.established) == ("10.210.5.1", "start", False)
    assert s2.info.startswith("Active")
    assert [(b.peer, b.state) for b in parse_bfd(BFD)] == [("10.210.4.1", "Up"),
                                                            ("10.210.5.1", "Down")]


def test_bgp_config_errors_name_the_key_and_the_line() -> None:
    from appliance.config import ConfigError, load_text

    with pytest.raises(ConfigError) as e:
        load_text("listeners: []\nha:\n  mode: bgp\n  communities: ['64512:100000']\n"
                  "  peers:\n    - {address: 192.0.2.1, hold: 3}\n"
                  "    - {address: 192.0.2.2, asn: 1, hold_time: 1s}\n"
                  "  announce: [{local_pref: 5}]\n")
    text = "\n".join(str(i) for i in e.value.issues)
    for expected in ("ha.asn: is required", "ha.router_id: is required",
                     "line 4: ha.communities[0]: '64512:100000' is not a BGP community",
                     "line 6: ha.peers[0].hold: unknown key (did you mean 'hold_time'?)",
                     "ha.peers[0].asn: is required",
                     "line 7: ha.peers[1].hold_time: must be at least 3s",
                     "ha.announce[0].prefix: is required"):
        assert expected in text, text
    with pytest.raises(ConfigError) as e:
        load_text("listeners: []\nha: {mode: bgp, asn: 1, router_id: 192.0.2.1}\n")
    assert "ha.peers" in str(e.value.issues[0]) and "at least one peer" in str(
        e.value.issues[0])
    snap = load_text("listeners: []\nha:\n  mode: bgp\n  asn: 64512\n"
                     "  router_id: 192.0.2.11\n  peers: [{address: 192.0.2.1, asn: 64500}]\n"
                     "  bfd: {interval: 50ms, multiplier: 5}\n")
    assert (snap.ha.bfd_interval, snap.ha.bfd_multiplier) == (0.05, 5)
    assert snap.ha.peers == (BgpPeer("192.0.2.1", 64500),)
