"""Imports go one way (DESIGN §2): flows -> tasks -> anyflow; conf is read by flows and tasks only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "anyflow": {"prefect", "mlflow", "conf", "tasks", "flows"},
    "tasks": {"flows"},
    "flows": {"torch"},
    "conf": {"prefect", "mlflow", "tasks", "flows"},
}


def imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_boundaries(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package}/ has no python files"
    for path in files:
        bad = imported_roots(path.read_text()) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_scanner_catches_violations():
    """The scanner itself must see every import form, or the boundary test could pass vacuously."""
    src = "import prefect\nfrom mlflow.tracking import X\nimport importlib\nimportlib.import_module('torch.nn')\n"
    assert {"prefect", "mlflow", "torch"} <= imported_roots(src)
