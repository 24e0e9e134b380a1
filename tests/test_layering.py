"""The import layers of STYLE.md: tasks <- baselines <- search <- l2o, checked with ast."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "baselines", "search", "l2o")
FORBIDDEN = {
    "tasks": {"baselines", "search", "l2o"},
    "baselines": {"search", "l2o"},
    "search": {"l2o"},
    "l2o": set(),
}


def imported_top_level_names(path: Path) -> set[str]:
    """First components of every module imported by a Python file (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_respect_the_layers(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    offenders = {
        str(f.relative_to(REPO)): sorted(imported_top_level_names(f) & FORBIDDEN[package])
        for f in files
    }
    offenders = {f: bad for f, bad in offenders.items() if bad}
    assert not offenders, f"imports against the layers: {offenders}"


def test_the_checker_sees_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import l2o.cli\nfrom search.x import y\nfrom . import sibling\n")
    assert imported_top_level_names(bad) == {"l2o", "search"}


def test_no_relative_imports_hide_the_layering():
    relative = [
        str(f.relative_to(REPO))
        for package in PACKAGES
        for f in (REPO / package).rglob("*.py")
        if any(
            isinstance(n, ast.ImportFrom) and n.level > 0
            for n in ast.walk(ast.parse(f.read_text()))
        )
    ]
    assert not relative, f"use absolute imports: {relative}"
