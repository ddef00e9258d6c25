"""The kernel's flows, through the ``conntrack`` command: listed (edgelb's, by their
ct mark) and deleted (a drained backend's, at its deadline). Blocking calls: the kernel
datapath runs them in a thread. The parsing is pure (``parse``)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

TIMEOUT = 30.0


@dataclass(frozen=True)
class KernelFlow:
    """One conntrack entry of an edgelb listener."""

    id: int
    mark: int
    proto: str
    state: str
    client: tuple[str, int]
    vip: tuple[str, int]
    backend: tuple[str, int]
    bytes_in: int
    bytes_out: int
    age: float  # seconds since it began (0 without nf_conntrack_timestamp)

    @property
    def open(self) -> bool:
        """Still a flow (a TCP entry in TIME_WAIT or CLOSE is only remembered)."""
        return self.state not in ("time_wait", "close")


def parse(text: str) -> list[KernelFlow]:
    """Flows from ``conntrack -L -o extended,timestamp,id`` lines. The first tuple is the
    client's (to the VIP), the second the backend's reply; bytes are there only with
    nf_conntrack_acct."""
    out = []
    for line in text.splitlines():
        toks = line.split()
        if len(toks) < 6:
            continue
        proto = toks[2]
        state = toks[5] if proto == "tcp" and "=" not in toks[5] else \
            ("unreplied" if "[UNREPLIED]" in toks else "active")
        fields: dict[str, list[str]] = {}
        for t in toks:
            k, eq, v = t.partition("=")
            if eq:
                fields.setdefault(k, []).append(v)
        try:
            src, dst = fields["src"], fields["dst"]
            sport, dport = fields["sport"], fields["dport"]
            mark = int(fields["mark"][0])
            fid = int(fields["id"][0])
        except (KeyError, IndexError, ValueError):
            continue
        nbytes = [int(b) for b in fields.get("bytes", [])] + [0, 0]
        delta = fields.get("delta-time", ["0"])[0]
        out.append(KernelFlow(fid, mark, proto, state.lower(), (src[0], int(sport[0])),
                              (dst[0], int(dport[0])), (src[1], int(sport[1])),
                              nbytes[0], nbytes[1], float(delta) if delta.isdigit() else 0.0))
    return out


def list_flows(mark: int, mask: int) -> list[KernelFlow]:
    """The flows whose ct mark matches ``mark`` under ``mask``."""
    r = subprocess.run(["conntrack", "-L", "-m", f"{mark:#x}/{mask:#x}", "-o",
                        "extended,timestamp,id"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    return parse(r.stdout)


def delete_flows(mark: int, mask: int, proto: str, backend: tuple[str, int]) -> int:
    """Delete the flows of ``mark``/``mask`` whose backend (the reply's source) is
    ``backend``; how many went."""
    host, port = backend
    r = subprocess.run(["conntrack", "-D", "-m", f"{mark:#x}/{mask:#x}", "-p", proto,
                        "--reply-src", host, "--reply-port-src", str(port)],
                       capture_output=True, text=True, timeout=TIMEOUT)
    for line in r.stderr.splitlines():
        if "flow entries have been deleted" in line:
            return int(line.split(":")[-1].split()[0])
    return 0
