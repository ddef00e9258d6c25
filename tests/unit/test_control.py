"""The control API's pure parts: operators' backend changes, flow selection, the console's
command line, and the HA priority an operator holds."""

from __future__ import annotations

import pytest

from appliance.cli import _parser
from appliance.config import ConfigError, load_text
from appliance.control.admin import AdminError, AdminState
from appliance.control.api import QueryError, select_flows
from appliance.ha.vrrp import BACKUP, MASTER, BecomeMaster, Vrrp, VrrpConfig, wanted_priority
from appliance.model import Backend, HttpSpec, Listener, Pool
from tui.commands import CommandError, parse_command

L4 = Listener("web", ("127.0.0.1", 80), backends=(Backend("10.0.0.1", 80),
                                                  Backend("10.0.0.2", 80, weight=3)))
NODES = (Backend("10.0.1.1", 0), Backend("10.0.1.2", 0))
NP1 = Listener("svc-a", ("10.9.0.1", 80), backends=NODES, backend_port=30080)
NP2 = Listener("svc-b", ("10.9.0.2", 80), backends=NODES, backend_port=30081)
L7 = Listener("site", ("127.0.0.1", 81), protocol="http", http=HttpSpec(
    pools=(Pool("api", backends=(Backend("10.0.0.5", 8080),)),), default_pool="api"))
ALL = (L4, NP1, NP2, L7)


def test_drain_is_weight_zero_and_keeps_the_backend() -> None:
    a = AdminState()
    a.set(ALL, "web", "10.0.0.2:80", "drain")
    out = a.apply(ALL)
    assert [b.weight for b in out[0].backends] == [1, 0]
    assert out[1] is NP1 and out[1].backends is NODES  # untouched listeners stay shared


def test_disable_removes_the_backend_and_enable_restores_it() -> None:
    a = AdminState()
    a.set(ALL, "svc-a", "10.0.1.2:30080", "maint")
    out = a.apply(ALL)
    assert [b.host for b in out[1].backends] == ["10.0.1.1"]
    assert out[2].backends is NODES  # the other service keeps the shared node tuple
    a.set(ALL, "svc-a", "10.0.1.2:30080", "ready")
    assert a.apply(ALL) is ALL and not a.backends


def test_weight_override_and_reset() -> None:
    a = AdminState()
    a.set(ALL, "site", "api/10.0.0.5:8080", weight=7)
    pool = a.apply(ALL)[3].http.pools[0]  # type: ignore[union-attr]
    assert pool.backends[0].weight == 7
    a.set(ALL, "site", "api/10.0.0.5:8080", "drain")
    assert a.get("site", "api/10.0.0.5:8080").weight == 7  # kept under the drain
    a.set(ALL, "site", "api/10.0.0.5:8080", "ready", reset_weight=True)
    assert not a.backends


@pytest.mark.parametrize(("listener", "backend", "state", "weight", "status"), [
    ("nope", "10.0.0.1:80", "drain", None, 404),
    ("web", "10.0.0.9:80", "drain", None, 404),
    ("web", "10.0.0.1:80", "sleep", None, 400),
    ("web", "10.0.0.1:80", None, 257, 400),
    ("web", "10.0.0.1:80", None, True, 400),
])
def test_bad_backend_changes_are_refused(listener: str, backend: str, state: str | None,
                                         weight: object, status: int) -> None:
    with pytest.raises(AdminError) as e:
        AdminState().set(ALL, listener, backend, state, weight)  # type: ignore[arg-type]
    assert e.value.status == status


def test_admin_state_round_trips() -> None:
    a = AdminState()
    a.set(ALL, "web", "10.0.0.1:80", "drain")
    a.set(ALL, "web", "10.0.0.2:80", weight=9)
    b = AdminState()
    b.loads(a.dumps())
    assert b.backends == a.backends


ROWS = [(f"0.{i}", "web" if i % 2 else "dns", "tcp" if i % 2 else "udp",
         f"127.0.0.{i % 7}:{40000 + i}", "127.0.0.1:80", f"10.0.0.{i % 3}:80", i * 10,
         i, float(i), "established") for i in range(1, 101)]


def test_flows_filter_sort_page() -> None:
    total, page = select_flows(ROWS, {"listener": "web", "sort": "bytes_in", "desc": "1",
                                      "limit": "5", "offset": "2"})
    assert total == 50
    assert [r[6] for r in page] == [950, 930, 910, 890, 870]
    total, page = select_flows(ROWS, {"backend": "10.0.0.2", "client": "127.0.0.3"})
    assert total == len([r for r in ROWS if "10.0.0.2" in r[5] and "127.0.0.3" in r[3]])
    total, _ = select_flows(ROWS, {"q": "udp"})
    assert total == 50


@pytest.mark.parametrize("query", [{"sort": "colour"}, {"limit": "-1"}, {"limit": "x"},
                                   {"offset": "1e3"}, {"limit": "999999"}])
def test_bad_flow_queries_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(QueryError):
        select_flows(ROWS, query)


@pytest.mark.parametrize(("text", "expected"), [
    (":drain web 10.0.0.1:80", ("drain", ["web", "10.0.0.1:80"])),
    ("weight site api/10.0.0.5:8080 config", ("weight", ["site", "api/10.0.0.5:8080",
                                                          "config"])),
    (":sort bytes desc", ("sort", ["bytes", "desc"])),
    (":FAILOVER", ("failover", [])),
])
def test_console_commands(text: str, expected: tuple[str, list[str]]) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize("text", [":", ":rm -rf", ":drain web", ":weight a b 300",
                                  ":sort colour", ":drain 'web"])
def test_bad_console_commands(text: str) -> None:
    with pytest.raises(CommandError):
        parse_command(text)


def test_operator_priority_holds() -> None:
    assert wanted_priority(100, 0, 50, "") == 100
    assert wanted_priority(100, 1, 50, "") == 50
    assert wanted_priority(100, 3, 50, "") == 1
    assert wanted_priority(100, 0, 50, "demote") == 1
    assert wanted_priority(100, 2, 50, "promote") == 254
    assert wanted_priority(255, 1, 50, "demote") == 255


def test_take_over_makes_a_backup_master_at_once() -> None:
    m = Vrrp(VrrpConfig(51, 100, ("10.0.0.100",), 100, True, 0.0), "10.0.0.2")
    m.start(0.0)
    assert m.state == BACKUP
    actions = m.take_over(0.1, "operator")
    assert m.state == MASTER and any(isinstance(a, BecomeMaster) for a in actions)
    assert m.take_over(0.2, "again") == []


def test_control_config_errors_name_key_and_line() -> None:
    with pytest.raises(ConfigError) as e:
        load_text("listeners: []\ncontrol:\n  socket: relative.sock\n  roles:\n"
                  "    admins: wheel\n")
    text = "\n".join(str(i) for i in e.value.issues)
    assert "control.socket" in text and "line 3" in text
    assert "control.roles.admins" in text and "line 5" in text
    snap = load_text("listeners: []\ncontrol:\n  socket: /run/x.sock\n  roles:\n"
                     "    viewer: staff\n")
    assert snap.control.socket == "/run/x.sock" and snap.control.viewer_group == "staff"


@pytest.mark.parametrize("argv", [
    ["ctl", "--json", "status"], ["ctl", "status", "--json"],
    ["ctl", "--socket", "/x.sock", "flows", "--json", "--limit", "5"],
    ["ctl", "flows", "--socket", "/x.sock", "--json"],
])
def test_ctl_options_go_before_or_after_the_command(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert args.json is True
    assert args.socket == ("/x.sock" if "--socket" in argv else None)


def test_ctl_options_default_when_not_given() -> None:
    args = _parser().parse_args(["ctl", "status"])
    assert args.json is False and args.socket is None


def test_operator_alerts_name_each_backend_and_its_change() -> None:
    """The console's alert said "1 backends drained, disabled or re-weighted by an
    operator" and not which: each one is named now, and past five the rest are counted."""
    from appliance.control.admin import BackendAdmin, BackendState, admin_alerts

    changed = {("web", "10.0.0.1:80"): BackendAdmin(BackendState.DRAIN),
               ("web", "10.0.0.2:80"): BackendAdmin(BackendState.MAINT),
               ("api", "pool/10.0.1.1:8080"): BackendAdmin(weight=3),
               ("dns", "10.0.2.1:53"): BackendAdmin(BackendState.DRAIN, weight=0)}
    assert admin_alerts(changed) == [
        "listener api: backend pool/10.0.1.1:8080 weight set to 3 by an operator",
        "listener dns: backend 10.0.2.1:53 drained, weight 0 by an operator",
        "listener web: backend 10.0.0.1:80 drained by an operator",
        "listener web: backend 10.0.0.2:80 disabled (maint) by an operator"]
    many = {("web", f"10.0.0.{i}:80"): BackendAdmin(BackendState.DRAIN) for i in range(8)}
    got = admin_alerts(many)
    assert len(got) == 6 and got[-1].startswith("... and 3 more backends")


def test_listener_state_and_ctl_backends_read_right() -> None:
    """Issue 17: `ctl listeners shop` said (round_robin) for a pool balanced by least_conn,
    and for TCP listeners BACKEND and ADDRESS repeated each other. A listener's state
    says whether a backend can take a flow."""
    from appliance.control.format import format_backends
    from appliance.control.present import listener_detail

    admin = AdminState()
    site = Listener("site", ("127.0.0.1", 81), protocol="http", http=HttpSpec(
        pools=(Pool("api", backends=(Backend("10.0.0.5", 8080),), balance="least_conn"),
               Pool("web", backends=(Backend("10.0.0.6", 8080),))), default_pool="web"))
    text = format_backends(listener_detail(site, None, set(), admin))
    first, header = text.splitlines()[:2]
    assert "pool api: least_conn, pool web: round_robin" in first and "2/2 up, ok" in first
    assert header.split()[:2] == ["BACKEND", "ADDRESS"]
    admin.set(ALL, "web", "10.0.0.1:80", "drain", None)
    d = listener_detail(L4, None, set(), admin)
    assert (d["up"], d["state"]) == (1, "degraded")
    assert listener_detail(L4, None, {("web", "10.0.0.2:80")}, admin)["state"] == "down"
    text = format_backends(d)
    assert "ADDRESS" not in text and text.count("10.0.0.1:80") == 1
    admin.set(ALL, "web", "10.0.0.2:80", "maint", None)
    assert listener_detail(L4, None, set(), admin)["state"] == "down"
