"""The compiled twins of the HTTP/1.1 machines (``appliance.native``): used only when
built from the sources as they are, and the Python machines pass the same tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import appliance.datapath.http1 as http1
from appliance.datapath.http1 import connection, heads
from appliance.native import DIGEST, FOLDER, PACKAGES, digest, fresh, use

HTTP1 = Path(http1.__file__).resolve().parent
ROOT = HTTP1.parents[2]


def _package(tmp: Path, stamp: str | None) -> Path:
    """A package folder with the http1 sources and a ``_native`` folder stamped
    ``stamp`` (the right digest for None)."""
    sources = PACKAGES["datapath/http1"]
    for name in sources:
        (tmp / name).write_bytes((HTTP1 / name).read_bytes())
    (tmp / FOLDER).mkdir()
    (tmp / FOLDER / DIGEST).write_text(stamp or digest(tmp, sources))
    return tmp / "__init__.py"


def test_twins_built_from_other_sources_are_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGELB_NATIVE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    init = _package(tmp_path, "0" * 64)
    path = [str(tmp_path)]
    assert not use(path, str(init), "datapath/http1")
    assert path == [str(tmp_path)]
    # The same twins, once the stamp matches the sources, come first.
    (tmp_path / FOLDER / DIGEST).write_text(digest(tmp_path, PACKAGES["datapath/http1"]))
    assert use(path, str(init), "datapath/http1")
    assert path == [str(tmp_path / FOLDER), str(tmp_path)]
    # An edit to a source makes them stale.
    path = [str(tmp_path)]
    with open(tmp_path / "heads.py", "a") as f:
        f.write("\n# edited\n")
    assert not use(path, str(init), "datapath/http1")
    assert path == [str(tmp_path)]


def test_edgelb_native_0_keeps_the_python_modules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELB_NATIVE", "0")
    init = _package(tmp_path, None)
    path = [str(tmp_path)]
    assert not use(path, str(init), "datapath/http1")
    assert path == [str(tmp_path)]


def test_the_machines_run_compiled_when_make_built_them() -> None:
    if not fresh(HTTP1, PACKAGES["datapath/http1"]) or os.environ.get("EDGELB_NATIVE") == "0":
        pytest.skip("no fresh build of the twins (make native builds them)")
    assert http1.NATIVE
    for module in (heads, connection):
        assert module.__file__ is not None and module.__file__.endswith(".so"), module


def test_the_python_machines_pass_the_http1_tests() -> None:
    """Whichever runs here, the other must hold too: the Python modules (the fallback
    without a compiler) against the HTTP/1.1 tests and properties."""
    env = {**os.environ, "EDGELB_NATIVE": "0"}
    check = ("import appliance.datapath.http1.heads as h, sys; "
             "sys.exit(0 if h.__file__.endswith('.py') else 1)")
    assert subprocess.run([sys.executable, "-c", check], env=env, cwd=ROOT).returncode == 0
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/unit/test_http1.py", "tests/unit/test_h2_messages.py"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]


def test_twins_that_cannot_load_leave_the_python_modules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twins built for another Python (or broken) fail to load: the package runs its
    Python modules instead of failing to import."""
    monkeypatch.delenv("EDGELB_NATIVE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    init = _package(tmp_path, None)
    (tmp_path / FOLDER / "0123abcd__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(
        b"not a shared object")
    path = [str(tmp_path)]
    assert not use(path, str(init), "datapath/http1")
    assert path == [str(tmp_path)] and str(tmp_path / FOLDER) not in sys.path
