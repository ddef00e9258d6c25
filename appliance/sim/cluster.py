"""A simulated cluster: the simulated API server plus nodes that really serve their
nodePorts. Each node is a loopback address (127.0.0.x; a dual-stack node also has an
IPv6 one), or any address of the namespace it runs in; a reconcile loop keeps, on every
Ready node, a server on each Service's nodePort that answers which pod (and which node)
served it, the way kube-proxy would forward: to any ready pod, or with
``externalTrafficPolicy: Local`` only to the node's own (and the healthCheckNodePort
answers 200 only where there is one).
"""

from __future__ import annotations

import itertools
import os
import socket
import socketserver
import threading
from typing import Any

from . import objects as k8s
from .apiserver import SimApiServer

Obj = dict[str, Any]


class _PortServer:
    """One node's server on one port: HTTP (tcp) or echo (udp), answering via ``pick``."""

    def __init__(self, ip: str, port: int, proto: str, cluster: SimCluster, svc: str,
                 node: str, health: bool = False) -> None:
        self.key = (ip, port, proto)
        outer = self

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                buf = b""
                try:
                    while True:
                        while b"\r\n\r\n" not in buf:
                            data = conn.recv(65536)
                            if not data:
                                return
                            buf += data
                        head, _, buf = buf.partition(b"\r\n\r\n")
                        status, body = outer.answer(head.split(b"\r\n", 1)[0])
                        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\n"
                                     b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))
                        if b"connection: close" in head.lower():
                            return
                except OSError:
                    return

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                _, body = outer.answer(b"")
                sock.sendto(body.rstrip(b"\n") + b": " + data, self.client_address)

        self.cluster, self.svc, self.node, self.health = cluster, svc, node, health
        server_cls: type[socketserver.BaseServer]
        if ":" in ip:
            server_cls = _ThreadingTcp6 if proto == "tcp" else _ThreadingUdp6
        else:
            server_cls = _ThreadingTcp if proto == "tcp" else _ThreadingUdp
        self.server = server_cls((ip, port), Tcp if proto == "tcp" else Udp)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, request_line: bytes) -> tuple[int, bytes]:
        pods = self.cluster.ready_pods(self.svc, self.node)
        if self.health:
            return (200, b"ok\n") if pods else (503, b"no local endpoints\n")
        if not pods:
            return 503, b"no ready pod\n"
        pod = pods[next(self.cluster.counter) % len(pods)]
        who = f"svc {self.svc} pod {pod} node {self.node}".encode()
        return 200, (who + b": " + request_line if request_line else who) + b"\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ThreadingTcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class _ThreadingUdp(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingTcp6(_ThreadingTcp):
    address_family = socket.AF_INET6


class _ThreadingUdp6(_ThreadingUdp):
    address_family = socket.AF_INET6


class SimCluster:
    """The simulated API server and the nodes' nodePort servers, reconciled every
    ``interval`` seconds from what the API holds."""

    def __init__(self, tls_dir: str, interval: float = 0.1, host: str = "127.0.0.1") -> None:
        self.api = SimApiServer(host=host, tls_dir=tls_dir)
        self.interval = interval
        self.servers: dict[tuple[str, int, str], _PortServer] = {}
        self.counter = itertools.count()
        self.stop_flag = threading.Event()
        self.kubeconfig_path = os.path.join(tls_dir, "kubeconfig")
        with open(self.kubeconfig_path, "w") as f:
            f.write(self.api.kubeconfig())
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> SimCluster:
        self.api.start()
        self.reconcile()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(5)
        for srv in self.servers.values():
            srv.close()
        self.servers.clear()
        self.api.stop()

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the scenario, as a test or the demo writes it ----------------------------------

    def add_node(self, name: str, ip: str | list[str], **kw: Any) -> None:
        self.api.apply(k8s.node(name, ip, **kw))

    def add_service(self, name: str, ports: list[Any], pods: dict[str, str],
                    **kw: Any) -> Obj:
        """A Service and its EndpointSlice; ``pods`` maps pod name to node name."""
        svc = self.api.apply(k8s.service(name, ports, **kw))
        self.set_pods(name, pods)
        return svc

    def set_pods(self, service: str, pods: dict[str, str], ready: bool = True,
                 namespace: str = "default") -> None:
        eps = [(f"10.244.{i // 250}.{i % 250 + 1}", node, ready)
               for i, (_pod, node) in enumerate(sorted(pods.items()))]
        sl = k8s.endpoint_slice(service, eps, namespace=namespace)
        sl["endpoints"] = [dict(e, targetRef={"kind": "Pod", "name": pod})
                           for e, pod in zip(sl["endpoints"], sorted(pods), strict=True)]
        self.api.apply(sl)

    def ready_pods(self, service: str, node: str) -> list[str]:
        svc = self.api.get("Service", service)
        if svc is None:
            return []
        local = (svc.get("spec") or {}).get("externalTrafficPolicy") == "Local"
        out = []
        for sl in self.api.list("EndpointSlice"):
            if sl["metadata"].get("labels", {}).get("kubernetes.io/service-name") != service:
                continue
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                if local and ep.get("nodeName") != node:
                    continue
                out.append((ep.get("targetRef") or {}).get("name", ep["addresses"][0]))
        return sorted(out)

    # -- reconcile ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stop_flag.wait(self.interval):
            self.reconcile()

    def reconcile(self) -> None:
        """Serve every nodePort (and healthCheckNodePort) of every Service on every
        node that exists, and nothing else."""
        want: dict[tuple[str, int, str], tuple[str, str, bool]] = {}
        nodes = [(n["metadata"]["name"], a["address"]) for n in self.api.list("Node")
                 for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
        for svc in self.api.list("Service"):
            spec = svc.get("spec") or {}
            name = svc["metadata"]["name"]
            for p in spec.get("ports") or []:
                if p.get("nodePort"):
                    proto = str(p.get("protocol", "TCP")).lower()
                    for node, ip in nodes:
                        want[(ip, int(p["nodePort"]), proto)] = (name, node, False)
            if spec.get("healthCheckNodePort"):
                for node, ip in nodes:
                    want[(ip, int(spec["healthCheckNodePort"]), "tcp")] = (name, node, True)
        for k in [k for k in self.servers if k not in want]:
            self.servers.pop(k).close()
        for k, (svc_name, node, health) in want.items():
            if k not in self.servers:
                try:
                    self.servers[k] = _PortServer(k[0], k[1], k[2], self, svc_name, node,
                                                  health)
                except OSError:
                    continue  # the port is busy: retried on the next pass
            else:
                srv = self.servers[k]
                srv.svc, srv.node, srv.health = svc_name, node, health
