"""``edgelb demo``: local backends and the daemon with a bundled config, all on loopback."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from importlib import resources

import trio

from .config import ConfigError
from .daemon import Daemon
from .sim import objects as k8s
from .sim.backends import serve_http, serve_udp_echo
from .sim.certs import self_signed
from .sim.cluster import SimCluster

log = logging.getLogger("edgelb.demo")


def demo_config(web_port: int, cert: str, key: str, kubeconfig: str, tls_dir: str,
                control_dir: str) -> str:
    """The bundled demo config with its ports and paths filled in."""
    text = resources.files("appliance").joinpath("examples/demo.yaml").read_text()
    return (text.replace("{web_port}", str(web_port))
            .replace("{udp_port}", str(web_port + 1))
            .replace("{metrics_port}", str(web_port + 2))
            .replace("{http_port}", str(web_port + 3))
            .replace("{https_port}", str(web_port + 4))
            .replace("{ingress_http}", str(web_port + 8))
            .replace("{ingress_https}", str(web_port + 9))
            .replace("{kubeconfig}", kubeconfig).replace("{tls_dir}", tls_dir)
            .replace("{control_socket}", os.path.join(control_dir, "control.sock"))
            .replace("{audit_log}", os.path.join(control_dir, "audit.jsonl"))
            .replace("{cert}", cert).replace("{key}", key))


def demo_cluster(directory: str, web_port: int) -> SimCluster:
    """Three nodes (node-1 dual-stack, on ::1 too); a TCP service, a UDP one, an
    externalTrafficPolicy: Local one and a dual-stack one, each with fixed VIPs; an
    Ingress with two hosts, one of them over TLS."""
    sim = SimCluster(directory).start()
    # Loopback has one IPv6 address: one node gets it, the others are IPv4 only.
    sim.add_node("node-1", ["127.0.0.11", "::1"])
    for i in (2, 3):
        sim.add_node(f"node-{i}", f"127.0.0.1{i}")
    sim.add_service("shop", [(web_port + 5, 30080)], {"shop-1": "node-1", "shop-2": "node-2",
                                                      "shop-3": "node-3"},
                    address="127.0.0.100")
    sim.add_service("dns", [(web_port + 6, 30053, "UDP")], {"dns-1": "node-1"},
                    address="127.0.0.101")
    sim.add_service("local", [(web_port + 7, 30090)], {"local-1": "node-2"}, local=True,
                    health_port=31090, address="127.0.0.102")
    sim.add_service("dual", [(web_port + 10, 30110)], {"dual-1": "node-1", "dual-2": "node-2"},
                    families=["IPv4", "IPv6"], policy="RequireDualStack",
                    annotations={"edgelb.io/address": "127.0.0.103,::1"})
    sim.add_service("api", [(80, 30100)], {"api-1": "node-1", "api-2": "node-3"},
                    kind="NodePort")
    sim.add_service("blog", [(80, 30101)], {"blog-1": "node-2"}, kind="NodePort")
    cert, key = self_signed(directory, "shop-cluster", dns=("shop.cluster.test",))
    with open(cert, "rb") as c, open(key, "rb") as k:
        sim.api.apply(k8s.tls_secret("shop-tls", c.read(), k.read()))
    sim.api.apply(k8s.ingress_class())
    sim.api.apply(k8s.ingress("shop", [("shop.cluster.test", "/api", "Prefix", "api", 80),
                                       ("shop.cluster.test", "/", "Prefix", "shop", web_port + 5),
                                       ("blog.cluster.test", "/", "Prefix", "blog", 80)],
                              tls=[(["shop.cluster.test"], "shop-tls")]))
    return sim


async def run_demo(web_port: int = 8080, log_format: str = "text") -> int:
    """Run until Ctrl-C; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="edgelb-demo-") as tmp:
        path = os.path.join(tmp, "edgelb.yaml")
        cert, key = self_signed(tmp, "demo", dns=("shop.demo.test",))
        sim = await trio.to_thread.run_sync(demo_cluster, tmp, web_port)
        await trio.Path(path).write_text(demo_config(
            web_port, cert, key, sim.kubeconfig_path, os.path.join(tmp, "tls"), tmp))
        async with trio.open_nursery() as nursery:
            for i in (1, 2, 3):
                await nursery.start(serve_http, "127.0.0.1", 19000 + i, f"web-{i}")
            for i in (1, 2):
                await nursery.start(serve_udp_echo, "127.0.0.1", 19100 + i, f"udp-{i}")
            daemon = Daemon(path, log_format)

            async def run_daemon(task_status: trio.TaskStatus[None]) -> None:
                await daemon.serve(task_status=task_status)
                # The daemon drained on Ctrl-C: the backends go with it.
                nursery.cancel_scope.cancel()

            try:
                await nursery.start(run_daemon)
            except (ConfigError, OSError) as e:
                log.error("demo cannot start: %s", e)
                nursery.cancel_scope.cancel()
                sim.stop()
                return 1
            print(banner(web_port, path, sim.kubeconfig_path, tmp), flush=True)
        sim.stop()
    return 0


def banner(web_port: int, config: str, kubeconfig: str, tmp: str) -> str:
    """What the demo prints once it runs: what to try, with its ports and paths."""
    elb = os.path.join(os.path.dirname(sys.executable), "edgelb")
    return f"""
edgelb demo is running (config: {config})

  curl -s http://127.0.0.1:{web_port}/           # round robin over 3 backends, weights 2:1:1
  for i in 1 2 3 4; do curl -s http://127.0.0.1:{web_port}/; done
  echo hello | nc -u -w1 127.0.0.1 {web_port + 1}  # UDP, Maglev on the client address
  curl -s http://127.0.0.1:{web_port + 2}/metrics | grep edgelb_backend

  # L7: Ingress-style routes by host and path, and HTTPS with SNI
  curl -s -H 'Host: shop.demo.test' http://127.0.0.1:{web_port + 3}/api/items  # pool api
  curl -s -H 'Host: shop.demo.test' http://127.0.0.1:{web_port + 3}/cart       # storefront
  curl -s -H 'Host: blog.demo.test' http://127.0.0.1:{web_port + 3}/           # *.demo.test
  curl -s -H 'Host: other.test' http://127.0.0.1:{web_port + 3}/               # 404
  curl -sk --resolve shop.demo.test:{web_port + 4}:127.0.0.1 https://shop.demo.test:{web_port + 4}/

  # The simulated cluster (3 nodes on 127.0.0.11-13), learned through its API:
  export KUBECONFIG={kubeconfig}
  kubectl get svc -o wide                                   # VIPs in status
  curl -s http://127.0.0.100:{web_port + 5}/                 # LoadBalancer service -> nodePorts
  echo hi | nc -u -w1 127.0.0.101 {web_port + 6}             # a UDP LoadBalancer service
  curl -s http://127.0.0.102:{web_port + 7}/                 # externalTrafficPolicy: Local
  curl -s http://127.0.0.103:{web_port + 10}/                # dual-stack: its IPv4 VIP ...
  curl -s 'http://[::1]:{web_port + 10}/'                    # ... and its IPv6 one (node-1)
  {elb} ctl backends default/dual:{web_port + 10}/tcp6    # node-2, node-3: no IPv6 InternalIP
  curl -s -H 'Host: shop.cluster.test' http://127.0.0.120:{web_port + 8}/api/x   # Ingress
  curl -s -H 'Host: blog.cluster.test' http://127.0.0.120:{web_port + 8}/
  curl -sk --resolve shop.cluster.test:{web_port + 9}:127.0.0.120 \\
       https://shop.cluster.test:{web_port + 9}/
  kubectl delete svc shop                                   # its VIP stops answering

  # The control API and the operator console:
  export EDGELB_SOCKET={tmp}/control.sock
  {elb} ctl status
  {elb} ctl listeners web
  {elb} ctl drain web 127.0.0.1:19001          # no new flows to web-1
  {elb} ctl events
  {elb} tui                                    # ? for help, q to quit

Ctrl-C drains and stops.
"""
