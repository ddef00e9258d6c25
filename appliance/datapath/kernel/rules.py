"""The kernel datapath's rules, pure: what each kernel listener dispatches to, and the
nftables script that puts a set of them in force, whole or as the change from the set in
force, in one transaction either way.

The table (family ``inet``, IPv4 and IPv6):

* ``svc4``/``svc6``: verdict maps from VIP . protocol . port to the listener's chain,
  looked up by the ``prerouting`` (traffic from other hosts) and ``output`` (traffic from
  this box) NAT chains.
* ``l_<id>``: one chain per listener. It marks the flow's conntrack entry (the ``ct
  mark`` says edgelb, source NAT or not, and the listener's id), counts it, and DNATs to a
  backend by looking up a dispatch map: ``numgen inc`` over weighted slots for
  round_robin, ``jhash ip saddr`` over the Maglev table for maglev. With no backend
  usable, TCP is reset and UDP refused (ICMP), and counted.
* ``d_<hash>``: the dispatch maps, named by their content, so listeners whose backends
  are the same (every nodePort Service over the same nodes) share one.
* ``postrouting``: source NAT for marked flows (masquerade, or the configured address),
  and a connection counter per (listener, backend) in a dynamic set.
* ``count_*``: filter chains that add each packet's bytes to its (listener, backend) in
  dynamic sets, original direction in, reply direction out.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from math import gcd

from ...model import Listener, Proto
from ..balance import MAGLEV_SEED, Maglev, SmoothRoundRobin

# ct mark of edgelb's kernel flows: the top byte says edgelb, the next bit source NAT,
# the next an operator's cut, the rest is the listener's id.
MARK = 0xE1000000
MARK_MASK = 0xFF000000
SNAT_BIT = 0x00800000
CUT_BIT = 0x00400000
ID_MASK = 0x003FFFFF
COUNTER_SET_SIZE = 1 << 20


@dataclass(frozen=True, eq=False)
class Dispatch:
    """A dispatch map: slot -> backend host (and port, unless every backend listens on
    the listener's own ``backend_port``: nodePorts). Listeners whose slots are the same
    share one map, so every nodePort Service over the same nodes costs one map."""

    family: int
    hosts: tuple[str, ...]
    ports: tuple[int, ...] | None = None  # None: the listener adds its backend_port
    # The map's port is typed by protocol (``tcp dport``), which is why a map with ports
    # serves one protocol: nft 1.0.6 reads ``th dport`` back from the kernel in a way
    # that no rule added later can use ("conflicting protocols specified: tcp vs. th"),
    # so every change that pointed a chain at a map already in the table was refused.
    proto: str = "tcp"

    @functools.cached_property
    def name(self) -> str:
        text = repr((self.family, self.hosts, self.ports) if self.ports is None else
                    (self.family, self.hosts, self.ports, self.proto))
        return "d_" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.hosts)

    # Equal when their content hashes are: comparing a thousand hosts per listener of
    # thousands would cost more than the change it finds.
    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Dispatch) and self.name == other.name)

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True)
class KernelListener:
    """One listener as the kernel serves it."""

    id: int
    name: str
    family: int
    vip: str
    port: int
    proto: str  # tcp | udp
    balance: str
    snat: bool
    dispatch: Dispatch | None  # None: no backend usable
    backend_port: int = 0  # the port added to a hosts-only dispatch map

    @property
    def mark(self) -> int:
        return MARK | (SNAT_BIT if self.snat else 0) | self.id

    @property
    def chain(self) -> str:
        return f"l_{self.id}"

    @property
    def vmap_key(self) -> str:
        return f"{self.vip} . {self.proto} . {self.port}"


@dataclass(frozen=True)
class Ruleset:
    """What the table holds: the kernel listeners by id, and the source NAT addresses."""

    listeners: Mapping[int, KernelListener] = field(default_factory=dict)
    snat4: str | None = None
    snat6: str | None = None

    @property
    def maps(self) -> dict[str, Dispatch]:
        return {kl.dispatch.name: kl.dispatch for kl in self.listeners.values()
                if kl.dispatch is not None}


def family_of(host: str) -> int:
    """4 or 6 (an address as the config and IPAM write it)."""
    return 6 if ":" in host else 4


def dispatch_of(lst: Listener, usable: Collection[str] | None) -> Dispatch | None:
    """The dispatch map of ``lst`` over its backends whose keys are in ``usable`` (all,
    for None), weight above 0; None when none is left. round_robin: each backend
    ``weight / gcd`` times, interleaved as smooth weighted round robin orders them.
    maglev: the Maglev table as user space would pick on it, slot by slot."""
    backends = lst.backends
    keys = [lst.backend_key(b) for b in backends] if usable is not None else []
    avail = [i for i, b in enumerate(backends)
             if b.weight > 0 and (usable is None or keys[i] in usable)]
    if not avail:
        return None
    if lst.balance == "maglev":
        # Named as user space names them (the Backend's own key), so that both build
        # the same table.
        maglev = Maglev([(b.key, b.weight) for b in backends])
        order = maglev.effective(avail)
    else:
        weights = [backends[i].weight for i in avail]
        g = 0
        for w in weights:
            g = gcd(g, w)
        reduced = [w // g for w in weights]
        rr = SmoothRoundRobin(reduced)
        order = []
        for _ in range(sum(reduced)):
            j = rr.pick(range(len(avail)))
            assert j is not None
            order.append(avail[j])
    family = family_of(lst.bind[0])
    hosts = tuple(backends[i].host for i in order)
    if lst.backend_port:
        return Dispatch(family, hosts)
    return Dispatch(family, hosts, tuple(backends[i].port for i in order), lst.protocol)


def plan(lst: Listener, lid: int, dispatch: Dispatch | None) -> KernelListener:
    """``lst`` as the kernel serves it, with id ``lid``, dispatching by ``dispatch``."""
    host, port = lst.bind
    return KernelListener(lid, lst.name, family_of(host), host, port,
                          "udp" if lst.protocol == Proto.UDP else "tcp", lst.balance,
                          lst.snat, dispatch, lst.backend_port)


# -- the script ---------------------------------------------------------------------------

def _ip(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _map_decl(d: Dispatch) -> str:
    ip = _ip(d.family)
    if d.ports is None:
        value = f"{ip} daddr"
        elements = ", ".join(f"{i} : {h}" for i, h in enumerate(d.hosts))
    else:
        value = f"{ip} daddr . {d.proto} dport"
        elements = ", ".join(f"{i} : {h} . {p}"
                             for i, (h, p) in enumerate(zip(d.hosts, d.ports, strict=True)))
    return (f"map {d.name} {{ typeof numgen inc mod {len(d)} : {value}; "
            f"elements = {{ {elements} }}; }}")


def _chain_rules(kl: KernelListener) -> list[str]:
    out = [f"ct mark set {kl.mark:#010x}"]
    d = kl.dispatch
    if d is None:
        reject = "reject with tcp reset" if kl.proto == "tcp" else "reject"
        out.append("update @refused { ct mark counter }")
        out.append(f"meta l4proto {kl.proto} {reject}")
        return out
    n = len(d)
    if kl.balance == "maglev":
        key = f"jhash {_ip(kl.family)} saddr mod {n} seed {MAGLEV_SEED:#x}"
    else:
        key = f"numgen inc mod {n}"
    to = f"{key} map @{d.name}" + (f" : {kl.backend_port}" if d.ports is None else "")
    out.append(f"meta l4proto {kl.proto} dnat {_ip(kl.family)} to {to}")
    return out


def _chain(kl: KernelListener) -> str:
    body = "\n".join(f"    {r}" for r in _chain_rules(kl))
    return f"  chain {kl.chain} {{\n    # {kl.name}\n{body}\n  }}"


def _counters_decl() -> list[str]:
    # Per listener (by ct mark): flows accepted, and refused for want of a backend. Per
    # (listener, backend): connections, bytes in, bytes out. Dynamic sets: an element
    # (and its counter) appears with the first packet that needs it.
    out = [f"  set {name} {{ typeof ct mark; flags dynamic; size {COUNTER_SET_SIZE}; }}"
           for name in ("accepted", "refused")]
    for fam, ip in ((4, "ip"), (6, "ip6")):
        for name, addr, port in ((f"bconn{fam}", "daddr", "dport"),
                                 (f"bin{fam}", "daddr", "dport"),
                                 (f"bout{fam}", "saddr", "sport")):
            out.append(f"  set {name} {{ typeof ct mark . {ip} {addr} . tcp {port}; "
                       f"flags dynamic; size {COUNTER_SET_SIZE}; }}")
    return out


def _count_rules() -> list[str]:
    """Rules adding a packet to its (listener, backend) byte counters."""
    out = []
    for fam, ip in ((4, "ip"), (6, "ip6")):
        nf = "ipv4" if fam == 4 else "ipv6"
        out.append(f"ct direction original meta nfproto {nf} update @bin{fam} "
                   f"{{ ct mark . {ip} daddr . th dport counter }}")
        out.append(f"ct direction reply meta nfproto {nf} update @bout{fam} "
                   f"{{ ct mark . {ip} saddr . th sport counter }}")
    return out


def _base(rs: Ruleset) -> list[str]:
    """The table's fixed part: hooks, vmaps, counters and source NAT."""
    ours = f"ct mark & {MARK_MASK:#010x} != {MARK:#010x} accept"
    snat = []
    for fam, addr in ((4, rs.snat4), (6, rs.snat6)):
        nf = "ipv4" if fam == 4 else "ipv6"
        how = f"snat {_ip(fam)} to {addr}" if addr else "masquerade"
        snat.append(f"ct mark & {SNAT_BIT:#010x} == {SNAT_BIT:#010x} meta nfproto {nf} {how}")
    hooks = []
    for hook, prio in (("prerouting", "dstnat"), ("output", "-100")):
        hooks.append(
            f"  chain {hook} {{\n    type nat hook {hook} priority {prio}; policy accept;\n"
            "    ip daddr . meta l4proto . th dport vmap @svc4\n"
            "    ip6 daddr . meta l4proto . th dport vmap @svc6\n  }")
    conn = ["update @accepted { ct mark counter }"] + [
        f"meta nfproto {'ipv4' if f == 4 else 'ipv6'} update @bconn{f} "
        f"{{ ct mark . {_ip(f)} daddr . th dport counter }}" for f in (4, 6)]
    # A backend on this box (over loopback) is reached from this box's own address
    # anyway, and masquerading loopback traffic drops it.
    post = "\n".join(f"    {r}" for r in [ours, *conn, 'oif "lo" accept', *snat])
    lines = [
        "  map svc4 { type ipv4_addr . inet_proto . inet_service : verdict; }",
        "  map svc6 { type ipv6_addr . inet_proto . inet_service : verdict; }",
        *_counters_decl(),
        *hooks,
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; "
        f"policy accept;\n{post}\n  }}",
    ]
    # Bytes: routed packets in forward; this box's own (a client or a backend on the
    # box) in output, and what arrives for them from elsewhere in input (what comes in
    # over loopback was counted in output already).
    # A flow an operator cut keeps its conntrack entry, marked: deleted, its next packet
    # would be translated anew, to the same backend by maglev. Each packet of it, either
    # way, gets a reset (TCP) or is dropped, until the entry times out.
    cut = (f"ct mark & {CUT_BIT:#010x} == {CUT_BIT:#010x} meta l4proto tcp "
           "reject with tcp reset\n"
           f"    ct mark & {CUT_BIT:#010x} == {CUT_BIT:#010x} drop\n")
    rules = "\n".join(f"    {r}" for r in _count_rules())
    for hook, extra in (("forward", ""), ("output", ""), ("input", "    iif \"lo\" accept\n")):
        lines.append(f"  chain count_{hook} {{\n    type filter hook {hook} priority 10; "
                     f"policy accept;\n    {ours}\n{extra}    {cut}{rules}\n  }}")
    return lines


def _elements(table: str, verb: str, listeners: Iterable[KernelListener],
              jump: bool) -> list[str]:
    """One command per verdict map for ``listeners``' entries (thousands of entries in
    one command cost what one does; one command each, seconds)."""
    out = []
    for fam in (4, 6):
        items = [f"{kl.vmap_key} : jump {kl.chain}" if jump else kl.vmap_key
                 for kl in listeners if kl.family == fam]
        if items:
            out.append(f"{verb} element inet {table} svc{fam} {{ {', '.join(items)} }}")
    return out


def _block(table: str, lines: list[str]) -> list[str]:
    """Declarations inside one table block: one block for thousands of chains loads in
    a fraction of a second, a block each takes seconds."""
    return [f"table inet {table} {{", *lines, "}"] if lines else []


def render_full(rs: Ruleset, table: str) -> str:
    """The script that replaces the table with ``rs`` in one transaction (the table is
    created first if missing, so that deleting it cannot fail)."""
    listeners = sorted(rs.listeners.values(), key=lambda x: x.id)
    body = _base(rs) + [f"  {_map_decl(d)}" for d in rs.maps.values()] + [
        _chain(kl) for kl in listeners]
    parts = [f"add table inet {table}", f"delete table inet {table}", *_block(table, body),
             *_elements(table, "add", listeners, True)]
    return "\n".join(parts) + "\n"


def render_change(old: Ruleset, new: Ruleset, table: str) -> str | None:
    """The script that turns the table holding ``old`` into ``new`` in one transaction,
    touching only what differs (counters of listeners that stay keep counting); None
    when nothing differs. The source NAT addresses live in the base: a change of them
    needs ``render_full``."""
    if (old.snat4, old.snat6) != (new.snat4, new.snat6):
        return render_full(new, table)
    decl: list[str] = []
    flushes: list[str] = []
    added: list[KernelListener] = []
    removed: list[KernelListener] = []
    old_maps, new_maps = old.maps, new.maps
    decl += [f"  {_map_decl(d)}" for name, d in new_maps.items() if name not in old_maps]
    for lid, kl in sorted(new.listeners.items()):
        was = old.listeners.get(lid)
        if was is kl or was == kl:
            continue
        if was is not None:
            if was.vmap_key != kl.vmap_key or was.family != kl.family:
                removed.append(was)
                added.append(kl)
            flushes.append(f"flush chain inet {table} {kl.chain}")
        else:
            added.append(kl)
        decl.append(_chain(kl))  # a chain block adds its rules to the chain
    gone = [was for lid, was in sorted(old.listeners.items()) if lid not in new.listeners]
    parts = [*_elements(table, "delete", removed + gone, False), *flushes,
             *_block(table, decl), *_elements(table, "add", added, True)]
    parts += [f"delete chain inet {table} {was.chain}" for was in gone]
    parts += [f"delete map inet {table} {name}" for name in old_maps if name not in new_maps]
    return "\n".join(parts) + "\n" if parts else None


class Ids:
    """An id per listener name, for as long as the daemon runs: ids name chains and mark
    flows, and an id is never given to another listener (its flows, counters and
    dynamic set elements may outlive it)."""

    def __init__(self) -> None:
        self.by_name: dict[str, int] = {}
        self.next = 1

    def of(self, name: str) -> int:
        lid = self.by_name.get(name)
        if lid is None:
            if self.next > ID_MASK:
                raise ValueError("more kernel listeners than ct mark ids in one run")
            lid = self.by_name[name] = self.next
            self.next += 1
        return lid
