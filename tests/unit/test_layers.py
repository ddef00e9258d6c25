"""The layer contract of ``make lint`` holds for the tree, and fails on each kind of
violation the architecture forbids: shown on a copy of the tree with one bad import
added (the contract under test is the project's own, from pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # The copy comes first on the path, ahead of the editable install of this checkout.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([*LINT, "--no-cache"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    # a service reaching into a sibling service (the control API on the datapath's parser)
    ("appliance/control/server.py", "from ..datapath import http1",
     "Layers: cli -> demo/tui -> daemon"),
    # a lower layer reaching up (the config into the cluster sync's IPAM)
    ("appliance/config/build.py", "from ..sync import ipam",
     "Layers: cli -> demo/tui -> daemon"),
    # a pure core doing I/O
    ("appliance/datapath/http1/heads.py", "import trio", "Pure cores"),
    ("appliance/ha/vrrp.py", "import socket", "Pure cores"),
    # the console importing more than the control client and the formatting
    ("tui/screens.py", "from appliance.control import ctl", "The console talks only"),
    # a cycle inside a package: the HTTP layer calling back into the worker that uses it
    ("appliance/datapath/l7.py", "from . import worker", "No import cycles"),
    # one pure core depending on another
    ("appliance/datapath/http1/heads.py", "from .. import routing", "pure cores are independent"),
])
def test_a_violation_breaks_the_contract(tmp_path: Path, module: str, line: str,
                                         contract: str) -> None:
    for part in ("appliance", "tui"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "__snapshots__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / module
    text = path.read_text()
    # After the module's docstring and future import, like any other import.
    marker = "from __future__ import annotations\n"
    path.write_text(text.replace(marker, marker + line + "\n", 1))
    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert verdict(result.stdout, contract) == "BROKEN", result.stdout


def verdict(report: str, contract: str) -> str:
    """KEPT or BROKEN, as the report's summary gives it for ``contract`` (the report
    wraps long names over lines)."""
    flat = " ".join(report.split())
    after = flat[flat.index(contract):]
    found = {word: after.find(word) for word in ("KEPT", "BROKEN") if word in after}
    return min(found, key=found.__getitem__)
