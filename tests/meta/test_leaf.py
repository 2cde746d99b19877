"""tests/ is a leaf: nothing outside it imports it, and the project does not install it."""

from __future__ import annotations

import ast
import json
import re

from grader.tree import REPO_ROOT

SKIP = {".git", "tests", ".venv", "build", "dist"}


def _python_sources() -> list[tuple[str, str]]:
    """``(place, source)`` for every Python file and notebook code cell outside tests/."""
    found = []
    for path in sorted(REPO_ROOT.rglob("*")):
        rel = path.relative_to(REPO_ROOT)
        if SKIP & set(rel.parts) or any(part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.suffix == ".py":
            found.append((str(rel), path.read_text(encoding="utf-8")))
        elif path.suffix == ".ipynb":
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            for n, cell in enumerate(cells):
                if cell["cell_type"] == "code":
                    source = "".join(cell["source"])
                    found.append((f"{rel} cell {n}", re.sub(r"(?m)^\s*[%!].*$", "", source)))
    return found


def _imports_tests(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "tests" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] == "tests":
                return True
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == "tests":
                return True
    return False


def test_nothing_outside_tests_imports_tests():
    offenders = [place for place, source in _python_sources() if _imports_tests(source)]
    assert not offenders, f"these import the tests package (tests must stay a leaf): {offenders}"


def test_the_scan_finds_an_import_of_tests():
    assert _imports_tests("from tests.helpers import check\n")
    assert _imports_tests("import importlib\nimportlib.import_module('tests.tree')\n")
    assert not _imports_tests("from grader.tree import load\n")


def test_pyproject_does_not_install_tests():
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")  # tomllib is 3.11+
    line = re.search(r"(?m)^include = \[(.*)\]$", text)
    assert line, "pyproject.toml has no [tool.setuptools.packages.find] include line"
    include = re.findall(r'"([^"]+)"', line.group(1))
    assert not any(pattern.split("*")[0].rstrip(".") == "tests" for pattern in include), include
