"""Operators' runtime changes to backends, in HAProxy's words: ``drain`` (no new flows,
open flows run to their end), ``maint`` (disabled: out of the pool, open flows cut after
``drain_timeout``), ``ready``, and a weight. Pure: the changes are kept here and applied
to the listeners of every Snapshot the daemon composes, so they survive reloads and
cluster changes."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from ..model import Backend, Listener
from ..views import ActionRefused

# An action that names a listener or backend that does not exist, or a bad value.
AdminError = ActionRefused


class BackendState(StrEnum):
    """What an operator set for a backend, in HAProxy's words."""

    READY = "ready"
    DRAIN = "drain"  # no new flows; open flows run to their end (weight 0 in force)
    MAINT = "maint"  # out of the pool; open flows cut after drain_timeout


STATES = tuple(str(s) for s in BackendState)


@dataclass(frozen=True)
class BackendAdmin:
    """What an operator set for one backend of one listener."""

    state: BackendState = BackendState.READY
    weight: int | None = None  # None: the weight from the config or the cluster

    @property
    def is_default(self) -> bool:
        return self.state == BackendState.READY and self.weight is None


def backend_keys(lst: Listener) -> list[tuple[str, Backend]]:
    """Every backend of a listener with its key (``pool/address`` for HTTP pools), the key
    that health, counters and actions use."""
    if lst.http is None:
        return [(lst.backend_key(b), b) for b in lst.backends]
    return [(f"{p.name}/{b.key}", b) for p in lst.http.pools for b in p.backends]


def admin_alerts(changed: dict[tuple[str, str], BackendAdmin], limit: int = 5) -> list[str]:
    """An alert per backend an operator changed, naming it and the change (an on-call
    operator must see which backend is out, not only how many); past ``limit``, one line
    for the rest."""
    out = []
    for (listener, key), a in sorted(changed.items())[:limit]:
        what = {BackendState.DRAIN: "drained", BackendState.MAINT: "disabled (maint)"}.get(
            a.state, "")
        if a.weight is not None:
            what = f"{what}, weight {a.weight}" if what else f"weight set to {a.weight}"
        out.append(f"listener {listener}: backend {key} {what} by an operator")
    if len(changed) > limit:
        out.append(f"... and {len(changed) - limit} more backends changed by an operator "
                   "(ctl backends)")
    return out


class AdminState:
    """The operators' backend changes, by (listener, backend key)."""

    def __init__(self) -> None:
        self.backends: dict[tuple[str, str], BackendAdmin] = {}

    def get(self, listener: str, key: str) -> BackendAdmin:
        return self.backends.get((listener, key), BackendAdmin())

    def set(self, listeners: tuple[Listener, ...], listener: str, key: str,
            state: str | None = None, weight: int | None = None,
            reset_weight: bool = False) -> BackendAdmin:
        """Change one backend; raises AdminError (404) when the listener or backend is not
        in ``listeners`` (the Snapshot in force), (400) for a bad state or weight."""
        lst = next((x for x in listeners if x.name == listener), None)
        if lst is None:
            raise AdminError(404, f"no listener named {listener!r}")
        if key not in {k for k, _ in backend_keys(lst)}:
            raise AdminError(404, f"listener {listener!r} has no backend {key!r}")
        if state is not None and state not in STATES:
            raise AdminError(400, f"state {state!r} is not one of {', '.join(STATES)}")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)
                                   or not 0 <= weight <= 256):
            raise AdminError(400, f"weight {weight!r} is not a whole number in 0-256")
        old = self.get(listener, key)
        new = BackendAdmin(BackendState(state) if state is not None else old.state,
                           None if reset_weight else weight if weight is not None
                           else old.weight)
        if new.is_default:
            self.backends.pop((listener, key), None)
        else:
            self.backends[(listener, key)] = new
        return new

    def apply(self, listeners: tuple[Listener, ...]) -> tuple[Listener, ...]:
        """The listeners with the operators' changes: drained backends get weight 0 (the
        balancers skip them, their flows stay), disabled ones leave the pool. Listeners
        without changes are returned as they are, so shared backend tuples stay shared."""
        if not self.backends:
            return listeners
        touched = {name for name, _ in self.backends}
        return tuple(self._apply_one(lst) if lst.name in touched else lst
                     for lst in listeners)

    def _apply_one(self, lst: Listener) -> Listener:
        def edit(prefix: str, backends: tuple[Backend, ...], key_of: Any) -> tuple[Backend, ...]:
            out = []
            for b in backends:
                a = self.backends.get((lst.name, prefix + key_of(b)))
                if a is None:
                    out.append(b)
                elif a.state == BackendState.MAINT:
                    continue
                elif a.state == BackendState.DRAIN:
                    out.append(replace(b, weight=0))
                else:
                    out.append(replace(b, weight=a.weight if a.weight is not None
                                       else b.weight))
            return tuple(out)

        if lst.http is None:
            return replace(lst, backends=edit("", lst.backends, lst.backend_key))
        pools = tuple(replace(p, backends=edit(p.name + "/", p.backends, lambda b: b.key))
                      for p in lst.http.pools)
        return replace(lst, http=replace(lst.http, pools=pools))

    # -- persistence ---------------------------------------------------------------------

    def dumps(self) -> str:
        return json.dumps([{"listener": lst, "backend": key, "state": a.state,
                            "weight": a.weight}
                           for (lst, key), a in sorted(self.backends.items())], indent=1)

    def loads(self, text: str) -> None:
        """Restore from ``dumps``; entries for backends no longer configured are kept, as
        a cluster may bring them back."""
        self.backends = {}
        for e in json.loads(text):
            if str(e["state"]) not in STATES:
                continue
            a = BackendAdmin(BackendState(str(e["state"])), e["weight"])
            if not a.is_default:
                self.backends[(str(e["listener"]), str(e["backend"]))] = a
