"""The floors stay straight: ``lint-imports`` checks the layer contract of ``pyproject.toml``, and
the benchmarks build on the experiments, never on a command-line job."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from lint_imports import installed_layout, lint_imports  # noqa: E402


def test_lint_imports_passes_the_layer_contract(tmp_path):
    result = lint_imports(tmp_path)
    assert (tmp_path / "pyro_dwp" / "models").is_dir() and (
        tmp_path / "pyro_dwp" / "guides"
    ).is_dir()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Layers point down KEPT" in result.stdout
    assert "No job imports another job KEPT" in result.stdout


def test_the_optional_layers_are_enforced_in_the_installed_layout(tmp_path):
    """``models`` and ``guides`` are optional layers (a bare ``lint-imports`` in the repository
    root cannot see them), but where they exist an upward import breaks the contract."""
    tree = installed_layout(tmp_path / "tree")
    mlp = tree / "pyro_dwp" / "models" / "mlp.py"
    mlp.write_text(mlp.read_text() + "\nimport pyro_dwp.infer\n")
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "Layers point down BROKEN" in result.stdout


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_benchmarks_and_scripts_do_not_import_jobs():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if "jobs" in m)
        for folder in ("benchmarks", "scripts")
        for path in sorted((ROOT / folder).glob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def _imports_package(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("pyro_dwp")
    return isinstance(node, ast.Import) and any(a.name.startswith("pyro_dwp") for a in node.names)


def test_no_function_imports_the_package():
    """Imports of ``pyro_dwp`` sit at the top of a module, where the layer contract sees them
    for what they are: none hides inside a function to dodge an import cycle."""
    packages = [p for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"]
    assert {"pyro_dwp", "models", "guides"} <= {p.name for p in packages}
    lazy = [
        f"{path.relative_to(ROOT)}:{inner.lineno}"
        for path in sorted(f for folder in packages for f in folder.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
        if _imports_package(inner)
    ]
    assert not lazy, lazy
