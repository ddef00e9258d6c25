"""Compiled twins of pure modules: mypyc (the mypy project's compiler) builds them from
the very same typed Python, and a package takes them in place of its ``.py`` modules
only when they were built from the sources it has now. Nothing is hand-written C, and
nothing changes but speed: without a build (no compiler, another Python, a source edited
since), the Python modules run.

    python -m appliance.native_build    # what ``make`` runs: build every package's twins

A package listed in ``PACKAGES`` opts in with ``use(__path__, __file__, NAME)`` at
the top of its ``__init__``, before it imports the modules compiled. The twins live in the package's
``_native`` folder beside ``sources.sha256``, the digest of the sources they were built
from. ``EDGELB_NATIVE=0`` in the environment keeps the Python modules.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

FOLDER = "_native"
DIGEST = "sources.sha256"

# The packages built, each with the modules of it that are compiled (pure, typed, on
# the per-request path: the HTTP/1.1 machines).
PACKAGES: dict[str, tuple[str, ...]] = {
    "datapath/http1": ("chunked.py", "connection.py", "heads.py"),
}


def digest(folder: Path, sources: tuple[str, ...]) -> str:
    """The digest of ``sources`` in ``folder``, in order."""
    h = hashlib.sha256()
    for name in sources:
        h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return h.hexdigest()


def fresh(here: Path, sources: tuple[str, ...]) -> bool:
    """Whether the twins in ``here``'s ``_native`` folder were built from ``sources`` as
    they are now (False without a build, or after an edit since)."""
    try:
        built = (here / FOLDER / DIGEST).read_text().strip()
    except OSError:
        return False
    return built == digest(here, sources)


def use(path: list[str], init_file: str, package: str) -> bool:
    """Put the compiled twins of ``package`` (a key of PACKAGES) ahead of its modules
    when they were built from its present sources; True when they are in use."""
    if os.environ.get("EDGELB_NATIVE") == "0":
        return False
    here = Path(init_file).resolve().parent
    if not fresh(here, PACKAGES[package]):
        return False
    native = here / FOLDER
    # mypyc's shared runtime of the build is a top-level module beside the twins: it must
    # load here (the same Python the build was for), or the Python modules run.
    added = str(native) not in sys.path
    if added:
        sys.path.append(str(native))
    try:
        for shared in native.glob("*__mypyc*.so"):
            importlib.import_module(shared.name.split(".", 1)[0])
    except (ImportError, OSError):
        if added:
            sys.path.remove(str(native))
        return False
    path.insert(0, str(native))
    return True
