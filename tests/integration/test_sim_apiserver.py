"""The simulated API server against the real clients: the official ``kubernetes`` Python
client and kubectl, unmodified, over the wire."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from appliance.sim.apiserver import SimApiServer
from appliance.sim.semantics import label_matcher


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimApiServer]:
    with SimApiServer(tls_dir=str(tmp_path), bookmark_interval=0.3) as s:
        yield s


def api_client(sim: SimApiServer, tmp_path: Path, token: str = "admin-token") -> client.ApiClient:
    kc = tmp_path / f"kubeconfig-{token}"
    kc.write_text(sim.kubeconfig(token))
    return config.new_client_from_config(str(kc))


def service(name: str, labels: dict[str, str] | None = None, port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP",
                                                         "nodePort": 30000 + port}]}}


def test_crud_status_and_conflicts(sim: SimApiServer, tmp_path: Path) -> None:
    core = client.CoreV1Api(api_client(sim, tmp_path))
    created = core.create_namespaced_service("default", service("web"))
    assert created.metadata.uid and created.spec.ports[0].node_port == 30080
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", service("web"))
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    # A write with a stale resourceVersion is refused.
    stale = core.read_namespaced_service("web", "default")
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"a": "b"}}})
    stale.spec.ports[0].port = 81
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_service("web", "default", stale)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"
    # /status changes only the status; the main resource does not touch it.
    core.patch_namespaced_service_status(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})
    got = core.read_namespaced_service("web", "default")
    assert got.status.load_balancer.ingress[0].ip == "192.0.2.10"
    core.patch_namespaced_service("web", "default", {"status": {"loadBalancer": {}}})
    assert core.read_namespaced_service("web", "default").status.load_balancer.ingress
    # JSON patch (the client sends a list body as application/json-patch+json).
    core.patch_namespaced_service(
        "web", "default", [{"op": "replace", "path": "/spec/ports/0/port", "value": 8080}])
    assert core.read_namespaced_service("web", "default").spec.ports[0].port == 8080
    core.delete_namespaced_service("web", "default")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_service("web", "default")
    assert e.value.status == 404 and json.loads(e.value.body)["kind"] == "Status"


def test_list_selectors_and_pages(sim: SimApiServer, tmp_path: Path) -> None:
    core = client.CoreV1Api(api_client(sim, tmp_path))
    for i in range(7):
        sim.apply(service(f"s{i}", {"tier": "front" if i % 2 else "back", "n": str(i)}, 80 + i))
    assert len(core.list_service_for_all_namespaces(label_selector="tier=front").items) == 3
    assert len(core.list_service_for_all_namespaces(label_selector="tier!=front").items) == 4
    assert len(core.list_service_for_all_namespaces(
        label_selector="n in (1,2,3),tier=back").items) == 1
    assert [s.metadata.name for s in core.list_service_for_all_namespaces(
        field_selector="metadata.name=s4").items] == ["s4"]
    names, token = [], None
    while True:
        page = core.list_namespaced_service("default", limit=3, _continue=token)
        names += [s.metadata.name for s in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"s{i}" for i in range(7)]


def test_label_selector_grammar() -> None:
    m = label_matcher("a=1,b!=2,c,!d,e in (x, y),f notin (z)")
    assert m({"a": "1", "c": "", "e": "x"})
    assert not m({"a": "1", "c": "", "e": "x", "d": ""})
    assert not m({"a": "1", "b": "2", "c": "", "e": "x"})
    assert not m({"a": "1", "c": "", "e": "x", "f": "z"})


def test_watch_events_bookmarks_and_gone(sim: SimApiServer, tmp_path: Path) -> None:
    core = client.CoreV1Api(api_client(sim, tmp_path))
    rv = core.list_service_for_all_namespaces().metadata.resource_version
    seen: list[tuple[str, str]] = []

    def follow() -> None:
        for ev in watch.Watch().stream(core.list_service_for_all_namespaces,
                                       resource_version=rv, timeout_seconds=2,
                                       allow_watch_bookmarks=True):
            obj = ev["object"]
            seen.append((ev["type"], obj.metadata.name if ev["type"] != "BOOKMARK" else ""))

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.3)
    sim.apply(service("a"))
    sim.apply(service("a", {"x": "1"}))
    sim.remove("Service", "a")
    t.join(10)
    events = [e for e in seen if e[0] != "BOOKMARK"]
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert ("BOOKMARK", "") in seen
    # After compaction, resuming from an old resourceVersion is 410 Gone (an ERROR event).
    sim.compact()
    w = watch.Watch()
    with pytest.raises(ApiException) as e:
        for _ in w.stream(core.list_service_for_all_namespaces, resource_version=rv,
                          timeout_seconds=2):
            pass
    assert e.value.status == 410


def test_tokens_and_faults(sim: SimApiServer, tmp_path: Path) -> None:
    viewer = client.CoreV1Api(api_client(sim, tmp_path, "viewer-token"))
    assert viewer.list_node().items == []
    with pytest.raises(ApiException) as e:
        viewer.create_namespaced_service("default", service("x"))
    assert e.value.status == 403
    with pytest.raises(ApiException) as e:
        client.CoreV1Api(api_client(sim, tmp_path, "wrong")).list_node()
    assert e.value.status == 401
    admin = client.CoreV1Api(api_client(sim, tmp_path))
    # 429 with Retry-After: the real client (urllib3) waits as told and asks again.
    sim.fail(429, count=1, retry_after=1)
    before, t0 = sim.requests, time.monotonic()
    assert admin.list_node().items == []
    assert sim.requests - before == 2 and time.monotonic() - t0 >= 0.9
    sim.fail(500, count=1)
    with pytest.raises(ApiException) as e:
        admin.list_node()
    assert e.value.status == 500
    assert admin.list_node().items == []
    # Paused: requests hang until resumed.
    sim.pause()
    done = threading.Event()
    threading.Thread(target=lambda: (admin.list_node(), done.set()), daemon=True).start()
    assert not done.wait(0.5)
    sim.resume()
    assert done.wait(5)


def test_dropped_watch_ends_the_stream(sim: SimApiServer, tmp_path: Path) -> None:
    core = client.CoreV1Api(api_client(sim, tmp_path))
    ended = threading.Event()

    def follow() -> None:
        for _ in watch.Watch().stream(core.list_node, timeout_seconds=30):
            pass
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.3)
    sim.drop_watches()
    assert ended.wait(5)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def _tls_connection(sim: SimApiServer) -> ssl.SSLSocket:
    u = urlsplit(sim.url)
    assert u.hostname and u.port and sim.ca_file
    ctx = ssl.create_default_context(cafile=sim.ca_file)
    raw = socket.create_connection((u.hostname, u.port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=u.hostname)


def test_a_response_goes_out_whole_in_one_write(sim: SimApiServer) -> None:
    """Head and body in one write (one TLS record here, so one read returns both). Sent
    apart, with Nagle on, every answer waited for the client's delayed ACK: about 20
    requests a second on one connection."""
    with _tls_connection(sim) as s:
        for _ in range(3):  # each answer on a kept-alive connection
            s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n"
                      b"Authorization: Bearer admin-token\r\n\r\n")
            first = s.recv(65536)
            head, _, body = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["major"] == "1"


def test_a_body_no_route_reads_is_not_taken_for_the_next_request(sim: SimApiServer) -> None:
    """kubectl sends DeleteOptions with a DELETE: left unread, it was parsed as the next
    request line and answered with an HTML 400 that broke kubectl's connection."""
    body = b'{"propagationPolicy":"Background"}'
    sim.apply(service("gone"))
    with _tls_connection(sim) as s:
        s.sendall(b"DELETE /api/v1/namespaces/default/services/gone HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer admin-token\r\nContent-Length: %d\r\n\r\n%s"
                  b"GET /version HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer admin-token\r\n\r\n" % (len(body), body))
        got = b""
        while got.count(b"HTTP/1.1 ") < 2 or not got.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
    assert got.startswith(b"HTTP/1.1 200") and sim.get("Service", "gone") is None
    assert got.count(b"HTTP/1.1 200") == 2 and b"<!DOCTYPE" not in got


def test_kubectl_works_unmodified(sim: SimApiServer, tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(sim.kubeconfig())
    env = dict(os.environ, KUBECONFIG=str(kc), HOME=str(tmp_path))

    def kubectl(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run(["kubectl", *args], env=env, input=stdin, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "v1.30.0-edgelb-sim" in kubectl("version", "-o", "json")
    # The simulator serves no OpenAPI documents, so kubectl's client-side schema check
    # is turned off; everything else is kubectl as shipped.
    kubectl("create", "--validate=false", "-f", "-", stdin=json.dumps(service("from-kubectl")))
    assert "from-kubectl" in kubectl("get", "svc")
    kubectl("label", "svc", "from-kubectl", "team=edge")
    got = json.loads(kubectl("get", "svc", "from-kubectl", "-o", "json"))
    assert got["metadata"]["labels"] == {"team": "edge"}
    assert "from-kubectl" in kubectl("get", "svc", "-l", "team=edge", "-A")
    kubectl("delete", "svc", "from-kubectl")
    assert sim.get("Service", "from-kubectl") is None
