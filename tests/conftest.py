"""Every test's daemons get a control socket of their own (and an audit log beside it),
never the system's /run/edgelb. As root, the whole run gets a network namespace of its
own (see ``pytest_configure``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests import helpers
from tests.helpers import short_dir


def pytest_configure(config: pytest.Config) -> None:
    """As root, move the test run into a network namespace of its own, with its own
    loopback. The listeners edgelb binds share their port with SO_REUSEPORT, as any
    process of the same user may: another run on this machine whose free port happened
    to be ours joined our listeners' group and took some of our connections (a test
    got an answer from another run's backend). Only what must reach the outside (pip,
    for the Ansible role) goes back to the machine's namespace (``helpers.host_net``)."""
    helpers.isolate_network()


@pytest.fixture(autouse=True)
def _control_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    d = short_dir()
    path = f"{d}/control.sock"
    monkeypatch.setenv("EDGELB_SOCKET", path)
    yield path
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _forget_flows() -> Iterator[None]:
    yield
    helpers.forget_flows()
