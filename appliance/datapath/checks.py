"""Active health checks: the I/O around the pure ``health.ActiveState`` verdicts.

One task per (listener, backend) runs in the control process; verdict changes are
reported through a callback, which forwards them to every worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..logs import Throttled
from ..model import Backend, HealthSpec, Snapshot
from ..views import HealthView
from . import wire
from .health import ActiveState, http_verdict

log = logging.getLogger("edgelb.health")
_unchecked = Throttled(log)


async def probe(backend: Backend, spec: HealthSpec) -> tuple[bool | None, str]:
    """One check of ``backend``: (ok, reason when not ok); ok is None when this box could
    not check at all (out of descriptors), which says nothing of the backend."""
    port = spec.port or backend.port
    with trio.move_on_after(spec.timeout):
        try:
            sock = await wire.connect((backend.host, port))
        except OSError as e:
            return (None if wire.exhausted(e) else False), e.strerror or str(e)
        try:
            if spec.type != "http":
                return True, ""
            req = (f"GET {spec.path} HTTP/1.1\r\nHost: {wire.address_text(backend.host, port)}"
                   "\r\nUser-Agent: edgelb-health\r\nConnection: close\r\n\r\n").encode()
            await wire.send_all(sock, req)
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = await wire.recv(sock, 4096)
                if not chunk:
                    break
                head += chunk
            return http_verdict(head, spec.expect_status)
        except OSError as e:
            return False, e.strerror or str(e)
        finally:
            wire.close(sock)
    return False, f"timeout after {spec.timeout:g}s"


class HealthChecker:
    """Runs the checks a Snapshot asks for; keeps each backend's state across reloads."""

    def __init__(self, on_change: Callable[[set[tuple[str, str]]], None]) -> None:
        self.on_change = on_change
        self.states: dict[tuple[str, str], ActiveState] = {}
        self._scope: trio.CancelScope | None = None

    @property
    def down(self) -> set[tuple[str, str]]:
        return {k for k, s in self.states.items() if not s.up}

    def view(self) -> HealthView:
        return HealthView(frozenset(self.down))

    async def run(self, snap: Snapshot, task_status: trio.TaskStatus[None] =
                  trio.TASK_STATUS_IGNORED) -> None:
        """Check every backend of ``snap`` until cancelled (by the next ``run``)."""
        if self._scope is not None:
            self._scope.cancel()
        checked = [(lst.name, key, b, health) for lst in snap.listeners
                   for key, b, health in lst.checked()]
        wanted = {(name, key) for name, key, _, _ in checked}
        for k in list(self.states):
            if k not in wanted:
                del self.states[k]
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                for name, key, b, health in checked:
                    k = (name, key)
                    st = self.states.get(k)
                    if st is None or (st.rise, st.fall) != (health.rise, health.fall):
                        st = ActiveState(health.rise, health.fall, up=st.up if st else True)
                        self.states[k] = st
                    nursery.start_soon(self._loop, name, b, health, st)
                self.on_change(self.down)
                task_status.started()

    async def _loop(self, listener: str, backend: Backend, spec: HealthSpec,
                    st: ActiveState) -> None:
        while True:
            ok, why = await probe(backend, spec)
            if ok is None:
                _unchecked(logging.WARNING, "health checks cannot run: %s", why)
            elif st.observe(ok, why):
                if st.up:
                    log.info("listener %s: backend %s is up", listener, backend.key)
                else:
                    log.warning("listener %s: backend %s is down: %s", listener,
                                backend.key, why)
                self.on_change(self.down)
            await trio.sleep(spec.interval)
