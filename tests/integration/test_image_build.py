"""images/build refuses bad input before it builds anything: a VARS or AUTHORIZED_KEYS
file that does not exist is named, and nothing is written. (The build itself, with a
VARS named relative to the checkout, runs in `make test-system`: tests/system.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.parametrize("name", ["VARS", "AUTHORIZED_KEYS"])
def test_a_missing_input_file_is_named_and_nothing_is_built(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = set(os.listdir("/var/tmp"))
    r = subprocess.run([str(ROOT / "images" / "build"), str(out)], capture_output=True,
                       text=True, timeout=30, cwd=tmp_path,
                       env={**os.environ, name: "edge-1.yml"})
    assert r.returncode == 2
    assert r.stderr == f"images/build: {name}: no file edge-1.yml\n"
    assert not out.exists() and set(os.listdir("/var/tmp")) <= before

