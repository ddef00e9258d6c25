"""Cluster sync end to end: ``edgelb run`` with the official client against the simulated
API server, traffic through the VIPs to the simulated nodes' nodePorts."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from appliance.control.client import Client
from appliance.sim import objects as k8s
from appliance.sim.apiserver import SimApiServer
from appliance.sim.cluster import SimCluster

from ..helpers import ROOT, Edgelb, free_port, metrics, wait_for

VIPS = "127.0.0.100-127.0.0.109"
NODES = {"n1": "127.0.0.11", "n2": "127.0.0.12", "n3": "127.0.0.13"}


@dataclass
class Rig:
    sim: SimCluster
    edgelb: Edgelb
    ingress_port: int
    metrics_port: int


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with SimCluster(str(tmp_path)) as sim:
        for name, ip in NODES.items():
            sim.add_node(name, ip)
        ingress_port, metrics_port = free_port(), free_port()
        e = Edgelb(tmp_path, f"""\
metrics: {{bind: 127.0.0.1:{metrics_port}}}
cluster:
  kubeconfig: {sim.kubeconfig_path}
  address_pools: ["{VIPS}"]
  ingress: {{http: "127.0.0.120:{ingress_port}"}}
  tls_dir: {tmp_path}/tls
  debounce: 50ms
listeners: []
""").start()
        try:
            yield Rig(sim, e, ingress_port, metrics_port)
        finally:
            e.stop()


def get(ip: str, port: int, path: str = "/", host: str = "x", timeout: float = 2) -> str:
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def try_get(ip: str, port: int, path: str = "/", host: str = "x") -> str:
    try:
        return get(ip, port, path, host)
    except OSError:
        return ""


def vip_of(sim: SimCluster, name: str) -> str | None:
    svc = sim.api.get("Service", name)
    ingress = ((svc or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return ingress[0]["ip"] if ingress else None


def answers(ip: str, port: int, n: int = 12) -> list[str]:
    """The `svc pod node` lines of ``n`` requests (errors as "ERR")."""
    out = []
    for _ in range(n):
        try:
            body = get(ip, port).split("\r\n\r\n", 1)[1]
            out.append(body.split(":")[0])
        except (OSError, IndexError):
            out.append("ERR")
    return out


def nodes_in(lines: list[str]) -> set[str]:
    return {ln.split(" node ")[1] for ln in lines if " node " in ln}


def test_service_lifecycle_follows_the_cluster(rig: Rig) -> None:
    sim = rig.sim
    port, node_port = free_port(), 30000 + free_port() % 2000
    sim.add_service("web", [(port, node_port)], {"web-a": "n1", "web-b": "n2"})
    wait_for(lambda: vip_of(sim, "web") is not None, 10, "status written")
    vip = vip_of(sim, "web")
    assert vip is not None and vip.startswith("127.0.0.10")
    wait_for(lambda: "ERR" not in answers(vip, port, 3), 10, "traffic through the VIP")
    lines = answers(vip, port, 30)
    assert {ln.split(" pod ")[1].split()[0] for ln in lines} == {"web-a", "web-b"}
    assert nodes_in(lines) == {"n1", "n2", "n3"}  # every ready node forwards (kube-proxy)

    # Scale: a new pod answers.
    sim.set_pods("web", {"web-a": "n1", "web-b": "n2", "web-c": "n3"})
    wait_for(lambda: any("web-c" in ln for ln in answers(vip, port, 9)), 10, "new pod")

    # Cordon n1: edgelb stops sending to it.
    sim.add_node("n1", NODES["n1"], unschedulable=True)
    wait_for(lambda: "n1" not in nodes_in(answers(vip, port, 12)), 10, "n1 drained")

    # externalTrafficPolicy: Local: only nodes with a local pod (health-checked).
    hc = 31000 + free_port() % 1000
    sim.api.apply(k8s.service("web", [(port, node_port)], local=True, health_port=hc))
    sim.set_pods("web", {"web-b": "n2"})
    wait_for(lambda: nodes_in(answers(vip, port, 9)) == {"n2"}, 15, "only n2")

    # Delete: the VIP stops answering and its address is free again.
    sim.api.remove("Service", "web")
    wait_for(lambda: "ERR" in answers(vip, port, 2), 10, "listener removed")
    # Each change the cluster made is in the events, naming the listener (issue 17).
    web = f"default/web:{port}/tcp"

    def said() -> list[str]:
        return [e["message"] for e in Client(rig.edgelb.socket).get("/v1/events")["events"]
                if e["kind"] == "cluster"]

    wait_for(lambda: any(f"removed {web}" in m for m in said()), 10, "the removal's event")
    assert any(f"added {web}" in m for m in said()), said()
    assert any(f"changed {web}" in m for m in said()), said()
    sim.add_service("next", [(port, node_port + 1)], {"n-a": "n2"})
    wait_for(lambda: vip_of(sim, "next") == vip, 10, "address reused")


def test_status_is_written_once_per_change(rig: Rig) -> None:
    sim = rig.sim
    for name in ("a", "b", "c"):
        sim.add_service(name, [(free_port(), 30800 + ord(name))], {f"{name}-1": "n1"})
    wait_for(lambda: all(vip_of(sim, n) for n in "abc"), 10, "three statuses")
    time.sleep(1)  # the writes echo back through the watch and trigger rebuilds
    assert sim.api.calls[("patch", "", "services/status")] == 3
    sim.api.remove("Service", "b")
    sim.add_service("d", [(free_port(), 30900)], {"d-1": "n2"})
    wait_for(lambda: vip_of(sim, "d") is not None, 10, "status of d")
    time.sleep(1)
    assert sim.api.calls[("patch", "", "services/status")] == 4


def test_heartbeats_do_not_rebuild_and_a_changed_status_is_put_back(rig: Rig) -> None:
    sim = rig.sim
    sim.add_service("web", [(free_port(), 30950)], {"w-1": "n1"})
    wait_for(lambda: vip_of(sim, "web") is not None, 10, "status")
    vip = vip_of(sim, "web")
    time.sleep(0.5)
    changes = metrics(rig.metrics_port)["edgelb_cluster_changes_total"]
    for _ in range(5):  # a kubelet's heartbeat: only timestamps change
        node = sim.api.get("Node", "n1")
        assert node is not None
        node["status"]["conditions"][0]["lastHeartbeatTime"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        sim.api.apply(node)
        time.sleep(0.1)
    # Someone else overwrites the status: edgelb puts its VIP back.
    svc = sim.api.get("Service", "web")
    assert svc is not None
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
    sim.api.apply(svc)
    wait_for(lambda: vip_of(sim, "web") == vip, 10, "status restored")
    assert metrics(rig.metrics_port)["edgelb_cluster_changes_total"] == changes


def test_api_faults_keep_traffic_flowing(rig: Rig) -> None:
    sim = rig.sim
    port, node_port = free_port(), 30000 + free_port() % 2000
    sim.add_service("web", [(port, node_port)], {"web-a": "n1"})
    wait_for(lambda: vip_of(sim, "web") is not None, 10, "status written")
    vip = vip_of(sim, "web")
    assert vip is not None
    wait_for(lambda: "ERR" not in answers(vip, port, 3), 10, "traffic")
    down_seen = False
    for fault in ("pause", "drop", "500", "429", "401", "compact"):
        if fault == "pause":
            sim.api.pause()
        elif fault == "drop":
            sim.api.drop_watches()
        elif fault in ("500", "429", "401"):
            sim.api.fail(int(fault), retry_after=1)
            sim.api.drop_watches()
        else:
            # While the watches are cut, history moves on and is compacted: every watch
            # resumes from a resourceVersion that is gone, gets 410 and must re-list.
            sim.api.pause()
            sim.api.drop_watches()
            sim.add_node("n3", NODES["n3"], labels={"compacted": "yes"})
            sim.api.compact()
        time.sleep(0.8)
        assert "ERR" not in answers(vip, port, 5), fault
        m = metrics(rig.metrics_port)
        down_seen |= any(v == 0 for k, v in m.items()
                         if k.startswith("edgelb_cluster_watch_up"))
        sim.api.resume()
        sim.api.fail(0)
    # After all that, changes still arrive: a new pod is served.
    sim.set_pods("web", {"web-a": "n1", "web-z": "n2"})
    wait_for(lambda: any("web-z" in ln for ln in answers(vip, port, 8)), 20, "recovered")
    wait_for(lambda: "re-listing" in rig.edgelb.logs(), 20, "a re-list after 410 Gone")
    assert "still serving the last good state" in rig.edgelb.logs()
    assert down_seen  # the degraded state was visible in the metrics
    wait_for(lambda: all(v == 1 for k, v in metrics(rig.metrics_port).items()
                         if k.startswith("edgelb_cluster_watch_up")), 20, "all watches back")


def test_ingress_routes_to_services(rig: Rig) -> None:
    sim = rig.sim
    np1, np2 = 30000 + free_port() % 1000, 31000 + free_port() % 1000
    sim.api.apply(k8s.ingress_class())
    sim.add_service("api", [(80, np1)], {"api-1": "n1"}, kind="NodePort")
    sim.add_service("web", [(80, np2)], {"web-1": "n2"}, kind="NodePort")
    sim.api.apply(k8s.ingress("shop", [("shop.test", "/api", "Prefix", "api", 80),
                                       ("shop.test", "/", "Prefix", "web", 80)]))
    wait_for(lambda: "svc api" in try_get("127.0.0.120", rig.ingress_port, "/api/x",
                                          "shop.test"), 10, "ingress route")
    # The services and the Ingress may arrive in different rebuilds: a path whose
    # service is not known yet is served once it is.
    wait_for(lambda: "svc web" in try_get("127.0.0.120", rig.ingress_port, "/cart",
                                          "shop.test"), 10, "the other route")
    assert " 404 " in get("127.0.0.120", rig.ingress_port, "/", "other.test")
    ing = sim.api.get("Ingress", "shop")
    assert ing is not None
    wait_for(lambda: (sim.api.get("Ingress", "shop") or {}).get("status", {}).get(
        "loadBalancer", {}).get("ingress") == [{"ip": "127.0.0.120"}], 10, "ingress status")


def test_an_ingress_class_of_another_controller_is_left_to_it(rig: Rig) -> None:
    """Served while the IngressClass is ours; once the class names another controller,
    edgelb stops routing it, takes its address back from the status, and says so once
    (one log line, one Event), however often it rebuilds."""
    sim = rig.sim
    np = 30000 + free_port() % 1000
    sim.api.apply(k8s.ingress_class())
    sim.add_service("web", [(80, np)], {"web-1": "n1"}, kind="NodePort")
    sim.api.apply(k8s.ingress("shop", [("shop.test", "/", "Prefix", "web", 80)]))

    def shown() -> object:
        return ((sim.api.get("Ingress", "shop") or {}).get("status") or {}).get(
            "loadBalancer", {}).get("ingress")

    wait_for(lambda: shown() == [{"ip": "127.0.0.120"}], 10, "served and shown")
    sim.api.apply(k8s.ingress_class(controller="example.com/another-controller"))
    wait_for(lambda: " 404 " in try_get("127.0.0.120", rig.ingress_port, "/", "shop.test"),
             10, "no longer routed")
    wait_for(lambda: not shown(), 10, "its status taken back")
    for i in range(3):  # rebuilds: the refusal is not said again
        sim.add_service(f"other{i}", [(free_port(), 30800 + i)], {f"o{i}": "n2"})
    wait_for(lambda: all(vip_of(sim, f"other{i}") for i in range(3)), 10, "rebuilt")
    assert rig.edgelb.logs().count("OtherController") == 1
    events = [e for e in sim.api.list("Event") if e.get("reason") == "OtherController"]
    assert len(events) == 1 and events[0]["involvedObject"]["kind"] == "IngressClass"
    assert not shown()


def test_allocation_failures_become_events(rig: Rig) -> None:
    sim = rig.sim
    sim.add_service("outside", [(free_port(), 30500)], {}, address="10.9.9.9")
    wait_for(lambda: any(e.get("reason") == "AddressNotInPool"
                         for e in sim.api.list("Event")), 10, "an event")
    assert "AddressNotInPool" in rig.edgelb.logs()


def test_kubectl_sees_the_status(rig: Rig, tmp_path: Path) -> None:
    sim = rig.sim
    sim.add_service("web", [(free_port(), 30600)], {"a": "n1"})
    wait_for(lambda: vip_of(sim, "web") is not None, 10, "status")
    out = subprocess.run(["kubectl", "--kubeconfig", sim.kubeconfig_path, "get", "svc",
                          "web", "-o", "json"], capture_output=True, text=True, timeout=30,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout)["status"]["loadBalancer"]["ingress"][0]["ip"] == \
        vip_of(sim, "web")


def test_rbac_manifest_allows_exactly_what_edgelb_uses(rig: Rig) -> None:
    sim = rig.sim  # a fresh cluster: its calls are all edgelb's (the test's are in-process)
    sim.api.apply(k8s.ingress_class())
    sim.add_service("web", [(free_port(), 30700)], {"a": "n1"})
    sim.add_service("bad", [(free_port(), 30701)], {}, address="10.9.9.9")
    sim.api.apply(k8s.ingress("i", [("h.test", "/", "Prefix", "web", 80)]))
    wait_for(lambda: vip_of(sim, "web") is not None, 10, "service status")
    wait_for(lambda: ("patch", "networking.k8s.io", "ingresses/status") in sim.api.calls,
             10, "ingress status")
    wait_for(lambda: ("create", "", "events") in sim.api.calls, 10, "an event")
    manifest = ROOT / "ansible/roles/edgelb/files/rbac.yaml"
    rules = next(doc for doc in yaml.safe_load_all(manifest.read_text())
             if doc["kind"] == "ClusterRole")["rules"]
    allowed = {(verb, group, res) for r in rules for group in r["apiGroups"]
               for res in r["resources"] for verb in r["verbs"]}
    used = set(sim.api.calls)
    assert used <= allowed, used - allowed
    assert allowed <= used, allowed - used


def test_lease_leader_alone_writes_status_and_a_standby_takes_over(tmp_path: Path) -> None:
    with SimCluster(str(tmp_path)) as sim:
        sim.add_node("n1", NODES["n1"])
        boxes = []
        for name in ("box-a", "box-b"):
            d = tmp_path / name
            d.mkdir()
            boxes.append(Edgelb(d, f"""\
ha: {{mode: lease, identity: {name}, lease: {{name: edgelb, namespace: kube-system,
      duration: 2s}}}}
cluster:
  kubeconfig: {sim.kubeconfig_path}
  address_pools: ["{VIPS}"]
  tls_dir: {d}/tls
  debounce: 50ms
listeners: []
""").start())
        try:
            wait_for(lambda: sum("leading: holding lease" in b.logs() for b in boxes) == 1,
                     10, "one leader")
            leader = next(b for b in boxes if "leading: holding lease" in b.logs())
            standby = next(b for b in boxes if b is not leader)
            for i in range(3):
                sim.add_service(f"s{i}", [(free_port(), 31500 + i)], {f"p{i}": "n1"})
            wait_for(lambda: all(vip_of(sim, f"s{i}") for i in range(3)), 10, "statuses")
            time.sleep(1)
            assert sim.api.calls[("patch", "", "services/status")] == 3, (leader.logs(),
                                                                          standby.logs())
            assert "status of" in leader.logs() and "status of" not in standby.logs()
            # Both boxes serve the VIPs (only the leader writes); the leader dies hard.
            assert leader.proc is not None
            leader.proc.kill()
            leader.proc.wait()
            wait_for(lambda: "leading: holding lease" in standby.logs(), 10, "takeover")
            sim.add_service("after", [(free_port(), 31600)], {"q": "n1"})
            wait_for(lambda: "status of Service default/after" in standby.logs(), 10,
                     "status by the new leader")
            assert vip_of(sim, "after") is not None
            lease = sim.api.get("Lease", "edgelb", "kube-system")
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == standby.path.parent.name
            # An operator hands the lease over: the leader releases it, the other takes it.
            leader.start()
            r = Client(standby.socket).act("failover")
            assert r["result"].startswith("demoted: lease released")
            wait_for(lambda: (sim.api.get("Lease", "edgelb", "kube-system") or {}).get(
                "spec", {}).get("holderIdentity") == leader.path.parent.name, 10,
                "the other box takes the lease")
            ha = Client(standby.socket).get("/v1/status")["ha"]
            assert not ha["leader"] and ha["override"] == "demote"
            wait_for(lambda: Client(leader.socket).get("/v1/status")["ha"]["leader"], 5,
                     "the other box leads")
        finally:
            for b in boxes:
                b.stop()


def test_addresses_survive_a_restart(rig: Rig) -> None:
    sim = rig.sim
    port = free_port()
    sim.api.apply(k8s.service("b", [(port, 31700)], address="127.0.0.105"))
    sim.set_pods("b", {"b-1": "n1"})
    wait_for(lambda: vip_of(sim, "b") == "127.0.0.105", 10, "requested address")
    # The request is withdrawn: b keeps its address, and only the status remembers it.
    sim.api.apply(k8s.service("b", [(port, 31700)]))
    time.sleep(0.5)
    assert vip_of(sim, "b") == "127.0.0.105"
    rig.edgelb.stop()
    rig.edgelb.start()
    sim.add_service("c", [(free_port(), 31701)], {"c-1": "n1"})
    wait_for(lambda: vip_of(sim, "c") is not None, 10, "status of c")
    assert vip_of(sim, "b") == "127.0.0.105" and vip_of(sim, "c") == "127.0.0.100"
    wait_for(lambda: "ERR" not in answers("127.0.0.105", port, 3), 10, "b still served")


def _backlog(d: Path, services: int) -> tuple[SimApiServer, Edgelb]:
    """An API server holding ``services`` LoadBalancer Services, and an edgelb about to
    follow it (not started: the test sets its faults first)."""
    api = SimApiServer(tls_dir=str(d)).start()
    for i in range(services):
        api.apply(k8s.service(f"s{i}", [(80, 30000 + i % 2000)]))
    (d / "kubeconfig").write_text(api.kubeconfig())
    e = Edgelb(d, f"""\
cluster:
  kubeconfig: {d}/kubeconfig
  address_pools: ["127.3.0.0/20"]
  tls_dir: {d}/tls
listeners: []
""")
    return api, e


def _at_status_write(api: SimApiServer, n: int, fault: Callable[[], None]) -> None:
    """Inject ``fault`` as the ``n``th status write arrives."""
    seen = itertools.count(1)

    def hook(verb: str, path: str) -> None:
        if verb == "PATCH" and path.endswith("/status") and next(seen) == n:
            fault()
    api.before_request = hook


def test_an_api_outage_during_a_status_backlog_is_logged_once_per_cause(
        tmp_path: Path) -> None:
    """1,500 statuses to write and the API goes away after 100: a line or two, not one
    (and urllib3's retries) per Service; once it is back every status is written."""
    api, e = _backlog(tmp_path, 1500)
    try:
        _at_status_write(api, 100, api.go_away)
        e.start()
        wait_for(lambda: "not written" in e.logs(), 30, "a failed write")
        time.sleep(3)  # what the old daemon did meanwhile: a warning per Service
        api.come_back()
        wait_for(lambda: all((s.get("status") or {}).get("loadBalancer", {}).get("ingress")
                             for s in api.list("Service")), 60, "every status, at last")
        logs = e.logs()
        assert logs.count("not written") <= 3, logs.count("not written")
        assert "Retrying" not in logs
    finally:
        e.stop()
        api.stop()


def test_stopping_does_not_wait_for_status_writes(tmp_path: Path) -> None:
    """SIGTERM while a status write is held by the API: the daemon exits at once, and
    writes nothing after it said it was exiting."""
    api, e = _backlog(tmp_path, 500)
    try:
        _at_status_write(api, 50, api.pause)
        e.start()
        wait_for(lambda: not api.faults.paused.is_set(), 30, "a write held")
        assert e.proc is not None
        e.signal(signal.SIGTERM)
        e.proc.wait(15)  # the old daemon waited for the held write: for ever
        logs = e.logs()
        assert "drained, exiting" in logs
        assert "status of" not in logs.split("drained, exiting", 1)[1]
    finally:
        api.resume()
        e.stop()
        api.stop()
