"""Memory after a burst of TLS connections, in-process: a real Worker serving HTTPS on
loopback, real TLS clients. A closed connection leaves nothing for the cyclic collector
(trio's SSLStream, which the TLS wire once was, was a reference cycle until edgelb cut
it), and the memory a burst freed goes back to the OS once the burst has ebbed."""

from __future__ import annotations

import gc
import socket
import ssl
from pathlib import Path

import trio
import trustme

from appliance.config import load_text
from appliance.datapath.worker import Worker
from appliance.process import Ebb, give_back_memory
from tests.helpers import free_port

# Where the objects of a TLS connection come from: the wire, the stdlib's TLS, trio's.
_TLS_MODULES = {"appliance.datapath.wire", "ssl", "_ssl", "trio._ssl"}


def _clients(port: int, ca: trustme.CA, n: int) -> None:
    """``n`` TLS connections that complete the handshake and leave without a request."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="x.test"):
            pass


def test_a_closed_tls_connection_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("x.test")
    crt, key = tmp_path / "x.crt", tmp_path / "x.key"
    cert.private_key_pem.write_to_path(str(key))
    crt.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    port = free_port()
    snap = load_text(f"""
listeners:
  - name: s
    bind: 127.0.0.1:{port}
    protocol: https
    backends: [127.0.0.1:9]
    health: {{type: none}}
    tls: [{{hosts: [x.test], cert: {crt}, key: {key}}}]
""")
    garbage: list[object] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            worker = Worker(nursery)
            worker.apply(snap, strict=True)
            await trio.to_thread.run_sync(_clients, port, ca, 1)  # warm: lazy imports
            with trio.fail_after(10):
                await worker.idle.wait()
            gc.collect()
            gc.disable()  # what is freed from here on is freed by reference counts
            try:
                await trio.to_thread.run_sync(_clients, port, ca, 20)
                with trio.fail_after(10):  # every client's flow ended (each began before
                    await worker.idle.wait()  # its handshake completed)
                await trio.sleep(0.1)  # each connection's task has returned
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                garbage.extend(o for o in gc.garbage if type(o).__module__ in _TLS_MODULES)
                gc.garbage.clear()
            finally:
                gc.set_debug(0)
                gc.enable()
            worker.listeners.close_all()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert garbage == []


def test_a_burst_ebbs_at_half_its_peak() -> None:
    ebb = Ebb(least=1000)
    assert not ebb.ebbed(10)
    assert not ebb.ebbed(999) and not ebb.ebbed(0)  # below the least burst: never
    assert not ebb.ebbed(3000) and not ebb.ebbed(1501)
    assert ebb.ebbed(1500)  # half the peak
    assert not ebb.ebbed(1400)  # the peak starts again from 1500
    assert ebb.ebbed(0)  # the rest of the burst closed: that ebbs too
    assert not ebb.ebbed(2000) and ebb.ebbed(10)
    assert give_back_memory()  # glibc here
