"""BGP mode, the pure part: which VIPs this box announces and why the others are
withdrawn, the BIRD configuration that announces them, and what ``birdc`` says of the
sessions. edgelb never speaks BGP: BIRD does, with the config written here.

A VIP is announced (a /32 or /128 from a static protocol, exported to every peer)
only while the daemon serves, the box is not drained, and a listener on the VIP has a
backend that takes flows. The routers spread flows over every box that announces it
(ECMP); a box that stops announcing gets no new flows within the routers' update."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from ..model import HaSpec, Listener

Down = Collection[tuple[str, str]]


def vip_address(vip: str) -> str:
    """The address of a VIP given as an address or address/prefix."""
    return str(ipaddress.ip_interface(vip).ip)


def _order(addr: str) -> tuple[int, int]:
    """IPv4 first, then IPv6, each by address."""
    a = ipaddress.ip_address(addr)
    return a.version, int(a)


def decide(vips: Iterable[str], listeners: Iterable[Listener], down: Down,
           drained: str) -> dict[str, str]:
    """Each VIP (address) -> "" when it is announced, else why it is withdrawn.
    ``drained`` is why the whole box is out ("" when it is not)."""
    serving: dict[str, list[Listener]] = {}
    for lst in listeners:
        serving.setdefault(lst.bind[0], []).append(lst)
    out = {}
    for vip in sorted({vip_address(v) for v in vips}, key=_order):
        # A listener on the wildcard address serves every VIP of its family.
        wildcard = "0.0.0.0" if ipaddress.ip_address(vip).version == 4 else "::"
        on = serving.get(vip, []) + serving.get(wildcard, [])
        if drained:
            out[vip] = drained
        elif not on:
            out[vip] = "no listener on it"
        elif all(lst.no_healthy_backend(down) or not _takes_flows(lst) for lst in on):
            names = ", ".join(sorted(lst.name for lst in on))
            out[vip] = f"no healthy backend ({names})"
        else:
            out[vip] = ""
    return out


def _takes_flows(lst: Listener) -> bool:
    """Whether some backend has a weight above 0 (an operator's drain sets it to 0)."""
    if lst.http is not None:
        return any(b.weight > 0 for p in lst.http.pools for b in p.backends)
    return any(b.weight > 0 for b in lst.backends)


@dataclass(frozen=True)
class Attributes:
    """What a VIP's route carries besides its prefix."""

    communities: tuple[str, ...] = ()
    local_pref: int = 0


def attributes(vip: str, ha: HaSpec) -> Attributes:
    """The box-wide communities and local preference, then the first ``announce`` rule
    whose prefix holds the VIP (its communities added, its local preference in force)."""
    addr = ipaddress.ip_address(vip)
    communities, pref = list(ha.communities), ha.local_pref
    for rule in ha.announce:
        net = ipaddress.ip_network(rule.prefix, strict=False)
        if net.version == addr.version and addr in net:
            communities += [c for c in rule.communities if c not in communities]
            pref = rule.local_pref or pref
            break
    return Attributes(tuple(communities), pref)


def _quote(text: str) -> str:
    if '"' in text or "\\" in text or "\n" in text:
        raise ValueError(f"{text!r} cannot be written into a BIRD config")
    return f'"{text}"'


def _route(vip: str, attrs: Attributes) -> str:
    addr = ipaddress.ip_address(vip)
    sets = [f"bgp_community.add(({c.replace(':', ',')}));" for c in attrs.communities]
    if attrs.local_pref:
        sets.append(f"bgp_local_pref = {attrs.local_pref};")
    body = f" {{ {' '.join(sets)} }}" if sets else ""
    return f"  route {addr}/{addr.max_prefixlen} blackhole{body};"


def bird_config(ha: HaSpec, announced: Iterable[str]) -> str:
    """BIRD's whole configuration: the router id, BFD, one static protocol per family
    holding the announced VIPs (never exported to the kernel: the VIPs are on this
    box's loopback already), and one BGP session per peer that exports only those."""
    routes: dict[int, list[str]] = {4: [], 6: []}
    for vip in sorted(announced, key=_order):
        routes[ipaddress.ip_address(vip).version].append(_route(vip, attributes(vip, ha)))
    ms = round(ha.bfd_interval * 1000)
    out = ["# Written by edgelb: every change here is replaced at the next one.",
           "log stderr { info, warning, error, fatal };",
           f"router id {ha.router_id};", "protocol device {}",
           "protocol bfd edgelb_bfd {",
           f'  interface "*" {{ min rx interval {ms} ms; min tx interval {ms} ms; '
           f"multiplier {ha.bfd_multiplier}; }};",
           f'  multihop {{ min rx interval {ms} ms; min tx interval {ms} ms; '
           f"multiplier {ha.bfd_multiplier}; }};",
           "}"]
    for fam in (4, 6):
        out += [f"protocol static edgelb_vips{fam} {{", f"  ipv{fam};", *routes[fam], "}"]
    for i, peer in enumerate(ha.peers, 1):
        fam = ipaddress.ip_address(peer.address).version
        lines = [f"protocol bgp edgelb_peer{i} {{",
                 f'  description {_quote(f"peer {peer.address} as {peer.asn}")};',
                 f"  local {peer.source + ' ' if peer.source else ''}as {ha.asn};",
                 f"  neighbor {peer.address} port {peer.port} as {peer.asn};",
                 f"  hold time {max(3, round(peer.hold_time))};",
                 "  connect retry time 1;", "  error wait time 1, 10;"]
        if peer.multihop:
            lines.append(f"  multihop {peer.multihop};")
        if peer.bfd:
            lines.append("  bfd on;")
        if peer.password:
            lines.append(f"  password {_quote(peer.password)};")
        lines += [f"  ipv{fam} {{ import none; export where proto = \"edgelb_vips{fam}\"; }};",
                  "}"]
        out += lines
    out += [f"include {_quote(path)};" for path in ha.bird_include]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Session:
    """One BGP session as ``birdc show protocols all`` says."""

    name: str
    peer: str
    state: str  # BIRD's: up, start, down ...
    info: str  # Established, Active, Connect ...
    since: str
    exported: int = 0  # routes exported to the peer

    @property
    def established(self) -> bool:
        return self.info.startswith("Established")


_PROTO_LINE = re.compile(r"^(edgelb_peer\d+)\s+BGP\s+\S+\s+(\S+)\s+(\S+(?: \S+)?)\s*(.*)$",
                         re.M)
_NEIGHBOR = re.compile(r"Neighbor address:\s+(\S+)")
_EXPORTED = re.compile(r"Routes:\s+\d+ imported, (\d+) exported")


def parse_sessions(text: str) -> list[Session]:
    """The edgelb_peer sessions of ``birdc show protocols all``."""
    out = []
    blocks = re.split(r"\n(?=\S)", text)
    for block in blocks:
        m = _PROTO_LINE.match(block)
        if m is None:
            continue
        name, state, since, info = m.groups()
        peer = _NEIGHBOR.search(block)
        exported = _EXPORTED.search(block)
        out.append(Session(name, peer.group(1) if peer else "", state, info.strip(),
                           since, int(exported.group(1)) if exported else 0))
    return out


@dataclass(frozen=True)
class BfdSession:
    peer: str
    interface: str
    state: str


_BFD_LINE = re.compile(r"^(\S+)\s+(\S+)\s+(Up|Down|Init|AdminDown)\b", re.M)


def parse_bfd(text: str) -> list[BfdSession]:
    """The sessions of ``birdc show bfd sessions``."""
    return [BfdSession(a, i, s) for a, i, s in _BFD_LINE.findall(text)]
