"""The grader's shape: no import circle, and the learner's path never loads the instructor's tools."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from grader.tree import REPO_ROOT

GRADER = REPO_ROOT / "grader"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The grader modules ``path`` imports, at the top or inside a function (a lazy import is
    still an edge: it only moves a circle to run time)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = {_module_name(p) for p in GRADER.rglob("*.py")}
    return {m for m in found if m in modules and m != name and m != "grader"}


def test_every_grader_module_imports():
    for path in sorted(GRADER.rglob("*.py")):
        if path.name != "__main__.py":
            importlib.import_module(_module_name(path))


def test_the_grader_has_no_import_circle():
    graph = {_module_name(p): _imports(p) for p in GRADER.rglob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circle = path[path.index(module) :] + [module]
            raise AssertionError("import circle: " + " -> ".join(circle))
        if module in done:
            return
        for other in sorted(graph.get(module, ())):
            visit(other, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_learners_path_does_not_load_the_instructors_tools():
    code = (
        "import sys\n"
        "from grader import cli, learner, watch\n"
        "cli.build_parser()\n"
        "assert cli.main(['list']) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('grader.instructor'))\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    ).stdout
    assert "LOADED []" in out
