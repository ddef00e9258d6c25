"""``edgelb demo``: local backends and the daemon with a bundled config, all on loopback."""

from __future__ import annotations

import logging
import os
import tempfile
from importlib import resources

import trio

from .config import ConfigError
from .daemon import Daemon
from .sim.backends import serve_http, serve_udp_echo
from .sim.certs import self_signed

log = logging.getLogger("edgelb.demo")


def demo_config(web_port: int, cert: str, key: str) -> str:
    """The bundled demo config with its ports and certificate paths filled in."""
    text = resources.files("appliance").joinpath("examples/demo.yaml").read_text()
    return (text.replace("{web_port}", str(web_port))
            .replace("{udp_port}", str(web_port + 1))
            .replace("{metrics_port}", str(web_port + 2))
            .replace("{http_port}", str(web_port + 3))
            .replace("{https_port}", str(web_port + 4))
            .replace("{cert}", cert).replace("{key}", key))


async def run_demo(web_port: int = 8080, log_format: str = "text") -> int:
    """Run until Ctrl-C; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="edgelb-demo-") as tmp:
        path = os.path.join(tmp, "edgelb.yaml")
        cert, key = self_signed(tmp, "demo", dns=("shop.demo.test",))
        await trio.Path(path).write_text(demo_config(web_port, cert, key))
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
                return 1
            print(f"""
edgelb demo is running (config: {path})

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

Ctrl-C drains and stops.
""", flush=True)
    return 0
