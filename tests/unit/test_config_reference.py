"""The README's configuration reference and the schema agree: every key the schema
states is documented, and every key the README documents exists. Inside a named pool a
backticked section (``listeners[].pools.NAME.health``) documents the keys under it: its
row says they are as for the listener's own."""

from __future__ import annotations

import re
from pathlib import Path

from appliance.config.schema import TOP, entry_paths, key_paths

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# A backticked config path: a top-level key, then .key, [] or .NAME steps.
_TOP = "|".join(e.name for e in TOP.entries)
_PATH = re.compile(rf"`((?:{_TOP})(?:\[\]|\.[A-Za-z_][A-Za-z0-9_]*)*)`")
DOCUMENTED = {p for p in _PATH.findall(README) if not p.endswith((".py", ".yaml"))}
KNOWN = {path for path, _ in entry_paths()}


def test_every_key_is_in_the_readme() -> None:
    sections = [d for d in DOCUMENTED if ".NAME." in d]
    missing = [p for p in key_paths()
               if p not in DOCUMENTED and not any(p.startswith((d + ".", d + "[]"))
                                                  for d in sections)]
    assert not missing, f"keys missing from the README's configuration reference: {missing}"


def test_the_readme_documents_only_keys_that_exist() -> None:
    unknown = sorted(DOCUMENTED - KNOWN)
    assert not unknown, f"the README documents keys the schema does not have: {unknown}"
