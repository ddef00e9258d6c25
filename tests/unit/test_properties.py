"""Properties of the pure cores, checked with hypothesis:

* HTTP/1.1: a stream of pipelined requests parses the same however it is split into
  reads, and what edgelb forwards to a backend parses back to the same request.
* VRRP: routers that hear each other end up with exactly one master, for any
  interleaving of start times, advertisement delays and priority changes; with
  preemption and distinct priorities it is the best one.
* Translation: over random sequences of Services added and deleted, no address is held
  by two Services that may not share it, no two listeners take one VIP:port, and a
  restart seeded from the status written rebuilds exactly the same VIPs.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.datapath.http1 import (
    CHUNKED,
    END_OF_MESSAGE,
    HOP_BY_HOP,
    LENGTH,
    NEED_DATA,
    NO_BODY,
    BackendConnection,
    Request,
    ServerConnection,
    chunk,
)
from appliance.ha.vrrp import MASTER, Advert, SendAdvert, Vrrp, VrrpConfig
from appliance.model import ClusterSpec, HttpLimits
from appliance.sim import objects as k8s
from appliance.sync.ipam import Ipam
from appliance.sync.translate import Cluster, key, seed_ipam, translate

# -- HTTP/1.1 --------------------------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda t: t[0] != "-")
VALUE = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ;=/,.",
                max_size=20).map(str.strip)
# Fields that edgelb or HTTP itself gives meaning to: the generated ones never use them.
RESERVED = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect",
            b"upgrade", b"te", b"trailer", b"keep-alive", b"proxy-connection", b"forwarded",
            b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}


@dataclass(frozen=True)
class Sent:
    """A request as a client writes it, and what it means."""

    wire: bytes
    method: bytes
    target: bytes
    fields: tuple[tuple[bytes, bytes], ...]  # end-to-end fields, in order
    body: bytes
    framing: int


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE"]))
    target = b"/" + draw(st.text("abc/xyz09.-_~%", max_size=20)).encode()
    fields = tuple((n.encode(), v.encode()) for n, v in draw(st.lists(
        st.tuples(TOKEN.filter(lambda n: n.encode() not in RESERVED), VALUE), max_size=5)))
    # Bodies of every order of size, so that reads fall inside chunk data too.
    size = draw(st.sampled_from([0, 1, 7, 100, 1000, 5000]))
    pattern = draw(st.binary(min_size=1, max_size=16))
    body = (pattern * (size // len(pattern) + 1))[:size]
    framing = draw(st.sampled_from([NO_BODY, LENGTH, CHUNKED])) if body else NO_BODY
    if framing == NO_BODY:
        body = b""
    head = [b"%s %s HTTP/1.1" % (method, target), b"Host: example.test"]
    head += [n + b": " + v for n, v in fields]
    if framing == LENGTH:
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == CHUNKED:
        head.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b"".join(chunk(p) for p in pieces if p) + b"0\r\n\r\n"
    else:
        payload = b""
    return Sent(b"\r\n".join(head) + b"\r\n\r\n" + payload, method, target, fields, body,
                framing)


def parse(reads: list[bytes]) -> list[tuple[Request, bytes]]:
    """Every request in ``reads`` with its body, as the client's side of a connection
    reads them (each response going out at once)."""
    conn = ServerConnection(HttpLimits())
    out: list[tuple[Request, bytes]] = []
    for data in reads:
        conn.receive_data(data)
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, Request):
                out.append((ev, b""))
            elif isinstance(ev, bytes):
                out[-1] = (out[-1][0], out[-1][1] + ev)
            else:
                assert ev is END_OF_MESSAGE
                conn.start_next_cycle()
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` into reads (never an empty one: that is the end)."""
    points = sorted(set(cuts))
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [p for p in pieces if p]


@settings(max_examples=300, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=4), st.data())
def test_requests_parse_the_same_however_the_reads_fall(sent: list[Sent],
                                                        data: st.DataObject) -> None:
    stream = b"".join(s.wire for s in sent)
    # Cut points hypothesis chooses (and shrinks), and uniform ones anywhere.
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    rnd = data.draw(st.randoms(use_true_random=False), label="uniform cuts")
    cuts += rnd.sample(range(len(stream) + 1), min(len(stream), rnd.randint(0, 40)))
    whole = parse([stream])
    assert parse(split(stream, cuts)) == whole
    assert parse([stream[i:i + 1] for i in range(len(stream))]) == whole
    assert len(whole) == len(sent)
    for s, (req, body) in zip(sent, whole, strict=True):
        assert (req.method, req.target, body) == (s.method, s.target, s.body)
        assert tuple(f for f in req.fields if f[0].lower() not in RESERVED) == s.fields
        assert req.framing.kind == s.framing


@settings(max_examples=300, deadline=None)
@given(requests(), st.sampled_from(["192.0.2.7", "2001:db8::7"]), st.booleans())
def test_what_is_forwarded_parses_back_to_the_same_request(sent: Sent, client: str,
                                                          trusted: bool) -> None:
    ((req, body),) = parse([sent.wire])
    backend = BackendConnection()
    forwarded = backend.send_request(req, client, "http", trusted)
    if body:
        forwarded += backend.send_data(body)
    forwarded += backend.send_end()
    ((again, again_body),) = parse([forwarded])
    assert (again.method, again.target, again.host, again_body) == \
        (req.method, req.target, req.host, body)
    assert again.framing.kind == req.framing.kind
    assert again.framing.length == req.framing.length
    kept = [f for f in req.fields if f[0].lower() not in HOP_BY_HOP | RESERVED]
    assert [f for f in again.fields if f[0].lower() not in RESERVED] == kept
    assert dict((n.lower(), v) for n, v in again.fields)[b"x-forwarded-for"].endswith(
        client.encode())


# -- VRRP ------------------------------------------------------------------------------------

INTERVAL = 1.0  # seconds between advertisements (100 centiseconds)


@st.composite
def vrrp_runs(draw: st.DrawFn) -> tuple[list[tuple[int, bool, float]], list[float],
                                         list[tuple[float, int, int]]]:
    """Routers (priority, preempt, start), the delays adverts take (cycled through; all
    below the master down interval, so the routers do hear each other), and priority
    changes (time, router, priority)."""
    n = draw(st.integers(2, 4))
    routers = [(draw(st.integers(1, 254)), draw(st.booleans()),
                draw(st.floats(0, 5, allow_nan=False))) for _ in range(n)]
    delays = draw(st.lists(st.floats(0, 0.9 * INTERVAL, allow_nan=False), min_size=1,
                           max_size=10))
    changes = draw(st.lists(st.tuples(st.floats(0, 20, allow_nan=False), st.integers(0, n - 1),
                                      st.integers(1, 254)), max_size=4))
    return routers, delays, changes


def run_vrrp(routers: list[tuple[int, bool, float]], delays: list[float],
             changes: list[tuple[float, int, int]], until: float) -> list[Vrrp]:
    """A discrete-event run of the machines, adverts delivered to every other router."""
    machines = [Vrrp(VrrpConfig(1, prio, ("192.0.2.100",), int(INTERVAL * 100), preempt),
                     f"10.0.0.{i + 1}") for i, (prio, preempt, _) in enumerate(routers)]
    # (time, order, what, router, a number: the timer's deadline, the new priority, or
    # the sender of an advert, whose priority is the last field)
    queue: list[tuple[float, int, str, int, float, int]] = []
    seq = 0

    def push(t: float, kind: str, who: int, value: float = 0.0, prio: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (t, seq, kind, who, value, prio))

    def act(t: float, who: int, actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, SendAdvert):
                for other in range(len(machines)):
                    if other != who:
                        push(t + delays[seq % len(delays)], "advert", other, who, a.priority)
        deadline = machines[who].next_deadline()
        if deadline is not None:
            push(deadline, "timer", who, deadline)

    for i, (_, _, start) in enumerate(routers):
        push(start, "start", i)
    for t, who, prio in changes:
        push(t, "priority", who, prio=prio)
    while queue and queue[0][0] <= until:
        t, _, kind, who, value, prio = heapq.heappop(queue)
        m = machines[who]
        if kind == "start":
            act(t, who, list(m.start(t)))
        elif kind == "timer":
            if m.next_deadline() == value:  # not superseded meanwhile
                act(t, who, list(m.on_timer(t)))
        elif kind == "priority":
            act(t, who, list(m.set_priority(prio, t)))
        else:
            adv = Advert(1, prio, int(INTERVAL * 100), ("192.0.2.100",))
            act(t, who, list(m.on_advert(adv, machines[int(value)].primary_ip, t)))
    return machines


@settings(max_examples=300, deadline=None)
@given(vrrp_runs())
def test_routers_that_hear_each_other_end_with_one_master(
        run: tuple[list[tuple[int, bool, float]], list[float],
                   list[tuple[float, int, int]]]) -> None:
    routers, delays, changes = run
    # Long after the last start and priority change: several master down intervals.
    machines = run_vrrp(routers, delays, changes, until=60.0)
    masters = [m for m in machines if m.state == MASTER]
    assert len(masters) == 1, [(m.primary_ip, m.state, m.priority) for m in machines]
    priorities = [m.priority for m in machines]
    if all(preempt for _, preempt, _ in routers) and len(set(priorities)) == len(priorities):
        assert masters[0].priority == max(priorities)


# -- translation and IPAM --------------------------------------------------------------------

SPEC = ClusterSpec(address_pools=("192.0.2.1-192.0.2.4", "2001:db8::1-2001:db8::3"))
NODES = [k8s.node("n1", ["10.0.0.1", "fd00::1"]), k8s.node("n2", "10.0.0.2")]
# (spec.ipFamilies, spec.ipFamilyPolicy) as an API server of a dual-stack cluster sets them.
FAMILIES = [(["IPv4"], "SingleStack"), (["IPv6"], "SingleStack"),
            (["IPv4", "IPv6"], "PreferDualStack"), (["IPv6", "IPv4"], "RequireDualStack")]
SERVICES = "abcdef"



@dataclass(frozen=True)
class ServiceOp:
    """Add (or replace) Service ``name``, or delete it (``ports`` empty)."""

    name: str
    ports: frozenset[tuple[int, str]] = frozenset()
    sharing: str = ""  # the edgelb.io/shared-vip key, "" for none
    requested: str | None = None  # the edgelb.io/address annotation
    families: tuple[list[str], str] = (["IPv4"], "SingleStack")

    def service(self) -> dict[str, object]:
        ann = {"edgelb.io/shared-vip": self.sharing} if self.sharing else {}
        if self.requested:
            ann["edgelb.io/address"] = self.requested
        return k8s.service(self.name, [(p, 30000 + p + (1000 if proto == "UDP" else 0), proto)
                                       for p, proto in sorted(self.ports)],
                           annotations=ann, families=self.families[0],
                           policy=self.families[1])


service_ops = st.lists(st.one_of(
    st.builds(ServiceOp, st.sampled_from(SERVICES),
              st.frozensets(st.tuples(st.sampled_from([80, 443, 53]),
                                      st.sampled_from(["TCP", "UDP"])), min_size=1, max_size=2),
              st.sampled_from(["", "k1", "k2"]),
              st.one_of(st.none(), st.sampled_from(["192.0.2.1", "192.0.2.3", "198.51.100.1",
                                                    "2001:db8::2", "192.0.2.3,2001:db8::1"])),
              st.sampled_from(FAMILIES)),
    st.builds(ServiceOp, st.sampled_from(SERVICES))), max_size=25)


def sharing_key(svc: dict[str, object]) -> str:
    meta = svc["metadata"]
    assert isinstance(meta, dict)
    return str((meta.get("annotations") or {}).get("edgelb.io/shared-vip", ""))


@settings(max_examples=200, deadline=None)
@given(service_ops)
def test_translation_never_shares_an_address_it_may_not(ops: list[ServiceOp]) -> None:
    c = Cluster()
    for n in NODES:
        c.nodes[key(n)] = n
    ipam = Ipam(SPEC.address_pools)
    for op in ops:
        if op.ports:
            c.services[f"default/{op.name}"] = op.service()
        else:
            c.services.pop(f"default/{op.name}", None)
        t = translate(c, SPEC, ipam)
        assert set(t.addresses) <= set(c.services)
        holders: dict[str, list[str]] = {}
        for svc, vips in t.addresses.items():
            families = [6 if ":" in v else 4 for v in vips]
            assert len(set(families)) == len(families), vips  # one per family
            for vip in vips:
                holders.setdefault(vip, []).append(svc)
            status = t.status[("Service", "default", svc.split("/")[1])]
            asked = c.services[svc]["spec"]["ipFamilies"]  # type: ignore[index]
            # Status lists every VIP, in the order of the service's ipFamilies.
            assert sorted(status) == sorted(vips)
            shown = [f"IPv{6 if ':' in v else 4}" for v in status]
            assert shown == [f for f in asked if f in shown], (asked, status)
        for vip, svcs in holders.items():
            if len(svcs) > 1:
                keys = {sharing_key(c.services[s]) for s in svcs}
                assert len(keys) == 1 and "" not in keys, (vip, svcs)
        binds = [(lst.transport, lst.bind) for lst in t.listeners]
        assert len(binds) == len(set(binds)), binds
        # The status edgelb writes is what a restart reads back.
        for svc_key in t.addresses:
            name = svc_key.split("/")[1]
            c.services[svc_key]["status"] = {"loadBalancer": {"ingress": [
                {"ip": vip} for vip in t.status[("Service", "default", name)]]}}
    fresh = Ipam(SPEC.address_pools)
    seed_ipam(c, SPEC, fresh)
    assert translate(c, SPEC, fresh).addresses == translate(c, SPEC, ipam).addresses
