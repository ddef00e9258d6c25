"""The access log's buffer: lines as the log handlers wrote them, a full buffer drops
and counts, a failed write counts its lines, and a write runs off the event loop."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
import trio

from appliance.datapath.access import AccessLog
from appliance.model import AccessLogSpec
from appliance.views import ListenerStats


def test_a_text_line_is_the_one_the_log_handler_wrote(tmp_path: Path) -> None:
    log = AccessLog(AccessLogSpec(target=str(tmp_path / "a.log")), fmt="text")
    st = ListenerStats()
    log.add(st, 'web 10.0.0.1 "GET foo/x" 200', {})
    handler = logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    record = logging.LogRecord("edgelb.access", logging.INFO, "", 0,
                               'web 10.0.0.1 "GET foo/x" 200', None, None)
    shape = re.sub(r"\d", "0", handler.format(record))
    assert re.sub(r"\d", "0", log.lines[0].rstrip("\n")) == shape


def test_a_json_line_carries_the_fields() -> None:
    log = AccessLog(AccessLogSpec(), fmt="json")
    log.add(ListenerStats(), "m", {"status": 200, "path": "/x"})
    rec = json.loads(log.lines[0])
    assert rec["logger"] == "edgelb.access" and rec["status"] == 200 and rec["path"] == "/x"
    assert rec["pid"] == os.getpid() and rec["time"].endswith("Z")


def test_a_full_buffer_drops_and_counts() -> None:
    log = AccessLog(AccessLogSpec(buffer=4096), fmt="text")
    st = ListenerStats()
    for i in range(200):
        log.add(st, f"line {i} " + "x" * 100, {})
    kept = len(log.lines)
    assert 20 < kept < 200 and st.access_log_dropped == 200 - kept


def test_a_write_that_fails_counts_its_lines(tmp_path: Path) -> None:
    log = AccessLog(AccessLogSpec(target=str(tmp_path / "no" / "such" / "dir.log")),
                    fmt="text")
    st = ListenerStats()
    for _ in range(5):
        log.add(st, "x", {})
    trio.run(log.flush)
    assert st.access_log_dropped == 5 and not log.lines


def test_lines_reach_the_file_and_a_reopen_follows_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogSpec(target=str(path)), fmt="text")
    st = ListenerStats()
    log.add(st, "first", {})
    trio.run(log.flush)
    path.rename(tmp_path / "access.log.1")  # logrotate
    log.add(st, "second", {})
    trio.run(log.flush)
    assert "second" in (tmp_path / "access.log.1").read_text()  # not reopened yet
    log.reopen()
    log.add(st, "third", {})
    trio.run(log.flush)
    assert path.read_text().endswith("]: third\n") and st.access_log_dropped == 0
    log.close()


@pytest.mark.parametrize(("text", "want"), [
    ("access_log: {target: /var/log/edgelb/access.log, buffer: 1MiB, flush: 250ms}\n",
     AccessLogSpec("/var/log/edgelb/access.log", 1 << 20, 0.25)),
    ("access_log: {target: syslog, buffer: 65536}\n", AccessLogSpec("syslog", 65536, 1.0)),
])
def test_the_section(text: str, want: AccessLogSpec) -> None:
    from appliance.config import load_text

    assert load_text(text + "listeners: []\nallow_no_listeners: true\n").access_log == want


@pytest.mark.parametrize(("text", "key"), [
    ("access_log: {target: relative.log}\n", "access_log.target"),
    ("access_log: {buffer: 12 parsecs}\n", "access_log.buffer"),
    ("access_log: {buffer: 1KiB}\n", "access_log.buffer"),
    ("access_log: {flush: 0s}\n", "access_log.flush"),
])
def test_a_wrong_section_names_the_key_and_line(text: str, key: str) -> None:
    from appliance.config import ConfigError, load_text

    with pytest.raises(ConfigError) as e:
        load_text(text + "listeners: []\n")
    assert any(i.path == key and i.line == 1 for i in e.value.issues), e.value.issues


def test_syslog_gets_a_datagram_per_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from appliance.datapath import access

    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setattr(access, "SYSLOG_SOCKET", path)
    log = AccessLog(AccessLogSpec(target="syslog"), fmt="text")
    st = ListenerStats()
    log.add(st, "one", {})
    log.add(st, "two", {})
    trio.run(log.flush)
    server.settimeout(2)
    got = [server.recv(4096), server.recv(4096)]
    assert got[0].startswith(b"<134>edgelb[%d]: " % os.getpid()) and got[0].endswith(b"]: one")
    assert got[1].endswith(b"]: two") and st.access_log_dropped == 0
    log.close()
    server.close()
