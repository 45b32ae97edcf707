"""Check the layer contract of ``pyproject.toml`` with import-linter, from a source checkout::

    python scripts/lint_imports.py

``lint-imports`` run in the repository root cannot see ``pyro_dwp.models`` and
``pyro_dwp.guides``: they live in the top-level folders ``models/`` and ``guides/`` (setuptools
``package-dir``), so the contract marks them optional layers and skips them there. This script
copies the sources into a temporary folder laid out as installed (those folders inside
``pyro_dwp/``) and runs ``lint-imports`` there, where every layer is checked; its exit status is
``lint-imports``'s. ``tests/test_layers.py`` runs it in the test suite.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pt", "*.json")


def installed_layout(dest: Path) -> Path:
    """Copy the package's sources into ``dest`` laid out as installed: the top-level folders
    installed as subpackages (``models/`` as ``pyro_dwp.models``, ``guides/`` as
    ``pyro_dwp.guides``) go inside ``pyro_dwp/``, where import-linter sees them; return ``dest``."""
    shutil.copytree(ROOT / "pyro_dwp", dest / "pyro_dwp", ignore=_IGNORE)
    for folder in sorted(p for p in ROOT.iterdir() if (p / "__init__.py").is_file()):
        spec = importlib.util.find_spec(f"pyro_dwp.{folder.name}")
        if spec is not None and Path(spec.origin).parent == folder:
            shutil.copytree(folder, dest / "pyro_dwp" / folder.name, ignore=_IGNORE)
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def lint_imports(dest: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` (beside this Python) on :func:`installed_layout` in ``dest``."""
    tree = installed_layout(dest)
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        done = lint_imports(Path(tmp))
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    sys.exit(done.returncode)
