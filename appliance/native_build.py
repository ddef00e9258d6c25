"""Builds the compiled twins of ``appliance.native.PACKAGES`` with mypyc, each into
its package's ``_native`` folder (``make`` runs it; see ``appliance.native``). Apart
from the loader, so that the pure cores that load twins import no subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .native import DIGEST, FOLDER, PACKAGES, digest

ROOT = Path(__file__).resolve().parent  # the appliance package


def build(package: str, sources: tuple[str, ...], root: Path = ROOT) -> Path:
    """Compile ``sources`` of ``package`` (a path under ``root``) into its ``_native``
    folder; raises CalledProcessError when mypyc or the C compiler fails."""
    target = root / package / FOLDER
    with tempfile.TemporaryDirectory(prefix="edgelb-native-") as t:
        work = Path(t)
        # mypyc type-checks what the modules import: the whole package, its config.
        shutil.copytree(root, work / root.name,
                        ignore=shutil.ignore_patterns(FOLDER, "__pycache__", "*.so"))
        # The digest of what is compiled, read before: an edit during the build makes
        # the twins stale, never wrongly fresh.
        stamp = digest(work / root.name / package, sources)
        config = root.parent / "pyproject.toml"
        if config.exists():
            shutil.copy(config, work / "pyproject.toml")
        done = subprocess.run([sys.executable, "-m", "mypyc",
                               *[f"{root.name}/{package}/{name}" for name in sources]],
                              cwd=work, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            done.check_returncode()
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        for so in [*(work / root.name / package).glob("*.so"), *work.glob("*__mypyc*.so")]:
            shutil.copy(so, target / so.name)
    (target / DIGEST).write_text(stamp + "\n")
    return target


def main() -> int:
    failed = False
    for package, sources in PACKAGES.items():
        try:
            target = build(package, sources)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"native build of appliance/{package} failed ({e}): its Python modules "
                  "run instead", file=sys.stderr)
            failed = True
            continue
        print(f"built {target.relative_to(ROOT.parent)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
