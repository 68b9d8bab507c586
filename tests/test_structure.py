"""The project's shape, checked: short files and functions (the house style's size budget), and imports that only
run down, from the strategies to the core and never back (trainer/, models/, launch/ know no method)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("models", "trainer", "optim", "param", "agg", "launch", "tools", "benchmarks", "tests")
CORE = ("trainer", "models", "launch")
STRATEGIES = {"param", "optim", "agg"}
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 50


def python_files(packages) -> list[Path]:
    return [f for package in packages for f in sorted((ROOT / package).rglob("*.py"))]


def parsed(path: Path) -> tuple[str, ast.Module]:
    source = path.read_text()
    return source, ast.parse(source, filename=str(path))


def test_no_file_or_function_is_too_long():
    too_long = []
    for path in [*python_files(PACKAGES), ROOT / "train.py"]:
        source, tree = parsed(path)
        name = path.relative_to(ROOT)
        lines = source.count("\n")
        if lines > MAX_FILE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, f"over {MAX_FILE_LINES} lines a file or {MAX_FUNCTION_LINES} a function: {too_long}"


def imported_packages(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the module, also those inside functions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_core_imports_no_strategy():
    upward = []
    for path in python_files(CORE):
        for line, package in imported_packages(parsed(path)[1]):
            if package in STRATEGIES:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {package}")
    assert not upward, f"trainer/, models/ and launch/ may not import param, optim or agg: {upward}"
