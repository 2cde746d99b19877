"""Integrity, the static half: what a submission's files say before any of them runs.

The tests always come from the grader (the repository's ``tests/``), never from the submission:
the batch grader copies each submission into a scratch folder and imports it as the package
``llm_tree``, so a ``conftest.py`` in it is never loaded. A submission that tries anyway, or that
leans on the grader's files, is flagged, and the stages involved score 0:

- a ``.py`` file that imports ``solutions``, ``exercises``, ``grader``, ``tests``, ``_pytest`` or
  ``pluggy``; that assigns to (or ``setattr``s, or deletes) an attribute of ``pytest``,
  ``_pytest``, ``pluggy`` or ``builtins``, to ``__builtins__`` or to ``sys.modules[...]``; that
  defines ``pytest_plugins`` or a ``pytest_*`` hook; or whose string literals (docstrings aside)
  name the grader's folders (``"../solutions/ch2/attention.py"``, ``"tests"``, ``"conftest.py"``,
  ``"solutions.ch2"``);
- a ``conftest.py``, ``pytest.ini``, ``tox.ini``, ``sitecustomize.py``, ``usercustomize.py`` or
  ``.pth`` file, or a ``pyproject.toml``/``setup.cfg`` with pytest settings;
- a symbolic link that leads out of the submission (it is not copied for grading).

The runtime half is ``grader/guard.py``. A finding in a file that stages list (``Stage.files``)
involves those stages; one in any other file of the chapter's folder, at the top of the
submission, or about pytest itself involves every stage; one in another chapter's file involves
none of this chapter's stages (it is still reported).
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..guard import BLOCKED_IMPORTS
from ..manifest import Chapter
from ..results import ChapterResult

GRADER_PACKAGES = BLOCKED_IMPORTS  # the same packages the run-time guard refuses
PYTEST_PACKAGES = frozenset({"_pytest", "pluggy"})
PATCHED_MODULES = frozenset({"pytest", "_pytest", "pluggy", "builtins"})
CONFIG_FILES = frozenset(
    {"conftest.py", "pytest.ini", "tox.ini", "sitecustomize.py", "usercustomize.py"}
)
_PATH_WORD = re.compile(r"(^|[/\\])(solutions|tests|grader)([/\\]|$)")
_MODULE_WORD = re.compile(r"^(solutions|tests|grader)(\.\w+)+$")
_MAX_SCAN_BYTES = 2_000_000  # larger "source" files are not parsed (they are not code)


@dataclass(frozen=True)
class Finding:
    file: str  # submission-relative, with / separators
    line: int | None
    reason: str
    global_: bool = False  # about pytest itself: every stage is involved

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return f"{place}: {self.reason}"


class _Scanner(ast.NodeVisitor):
    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.found: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> module it is bound to
        self.docstrings: set[int] = set()

    def add(self, node: ast.AST, reason: str, global_: bool = False) -> None:
        self.found.append(Finding(self.rel, getattr(node, "lineno", None), reason, global_))

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._imported(node, alias.name)
            self.aliases[alias.asname or alias.name.partition(".")[0]] = (
                alias.name if alias.asname else alias.name.partition(".")[0]
            )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._imported(node, node.module)
            for alias in node.names:
                self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def _imported(self, node: ast.AST, name: str) -> None:
        top = name.partition(".")[0]
        if top in GRADER_PACKAGES:
            self.add(node, f"imports {name} (the grader's {top}/)")
        elif top in PYTEST_PACKAGES:
            self.add(node, f"imports {name} (pytest's internals)", global_=True)

    # patching
    def _module_of(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            if node.id == "__builtins__":
                return "builtins"
            bound = self.aliases.get(node.id)
            if bound and bound.partition(".")[0] in PATCHED_MODULES:
                return bound
        if isinstance(node, ast.Attribute):
            base = self._module_of(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _target(self, target: ast.AST) -> None:
        if isinstance(target, ast.Attribute):
            module = self._module_of(target.value)
            if module:
                self.add(target, f"patches {module}.{target.attr}", global_=True)
        elif isinstance(target, ast.Subscript):
            value = target.value
            if isinstance(value, ast.Name) and value.id == "__builtins__":
                self.add(target, "patches __builtins__", global_=True)
            elif (
                isinstance(value, ast.Attribute)
                and value.attr == "modules"
                and isinstance(value.value, ast.Name)
                and self.aliases.get(value.value.id) == "sys"
            ):
                self.add(target, "replaces an entry of sys.modules", global_=True)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._target(target)
            if isinstance(target, ast.Name) and target.id == "pytest_plugins":
                self.add(node, "declares pytest_plugins", global_=True)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._target(target)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and node.args:
            module = self._module_of(node.args[0])
            if module:
                self.add(node, f"patches {module} with {func.id}()", global_=True)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name.startswith("pytest_") and node.col_offset == 0:
            self.add(node, f"defines the pytest hook {node.name}", global_=True)
        self._docstring(node)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._docstring(node)
        self.generic_visit(node)

    def visit_Module(self, node: ast.Module) -> None:
        self._docstring(node)
        self.generic_visit(node)

    def _docstring(self, node: ast.AST) -> None:
        body = getattr(node, "body", [])
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            self.docstrings.add(id(body[0].value))

    # strings
    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str) or id(node) in self.docstrings:
            return
        text = node.value
        if _PATH_WORD.search(text) or _MODULE_WORD.match(text) or "conftest" in text:
            shown = text if len(text) <= 60 else text[:57] + "..."
            self.add(node, f"names the grader's files in a string ({shown!r})")


def scan_source(source: str, rel: str) -> list[Finding]:
    """Findings in one Python file's text (nothing when it does not parse: that is a grade)."""
    try:
        tree = ast.parse(source, filename=rel)
    except (SyntaxError, ValueError):
        return []
    scanner = _Scanner(rel)
    scanner.visit(tree)
    return scanner.found


def _pytest_config(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "[tool.pytest" in text or "[pytest]" in text or "[tool:pytest]" in text


def scan(root: str | os.PathLike[str]) -> list[Finding]:
    """Every finding in the submission folder ``root``, in a stable order."""
    root = Path(root)
    found: list[Finding] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        here = Path(folder)
        for name in sorted(dirs) + sorted(files):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.is_relative_to(root.resolve()):
                    found.append(
                        Finding(rel, None, f"is a link to {target}, outside the submission")
                    )
                continue
            if name in dirs:
                continue
            if name in CONFIG_FILES or name.endswith(".pth"):
                found.append(Finding(rel, None, "could change how pytest runs", True))
            elif name in ("pyproject.toml", "setup.cfg") and _pytest_config(path):
                found.append(Finding(rel, None, "holds pytest settings", True))
            if name.endswith(".py"):
                try:
                    if path.stat().st_size > _MAX_SCAN_BYTES:
                        continue
                    source = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                found.extend(scan_source(source, rel))
    return found


def involved(finding: Finding, chapter: Chapter, prefix: str = "") -> tuple[str, ...]:
    """The names of the chapter's stages a finding involves (see the module docstring).

    ``prefix`` is where the tree starts inside the submission (``exercises/`` when the learner
    handed in the whole folder), so ``exercises/ch2/attention.py`` is the stage file
    ``ch2/attention.py``.
    """
    every = tuple(s.name for s in chapter.stages)
    if finding.global_:
        return every
    rel = finding.file[len(prefix) :] if finding.file.startswith(prefix) else finding.file
    named = tuple(s.name for s in chapter.stages if rel in s.files)
    if named:
        return named
    if rel.startswith(f"{chapter.name}/") or "/" not in rel or not finding.file.startswith(prefix):
        return every
    return ()


def apply(
    result: ChapterResult, findings: list[Finding], chapter: Chapter, prefix: str = ""
) -> ChapterResult:
    """``result`` with each finding added to the flags of the stages it involves."""
    stages = []
    for stage in result.stages:
        mine = tuple(f"{f}" for f in findings if stage.name in involved(f, chapter, prefix))
        new = tuple(m for m in mine if m not in stage.flags)
        stages.append(replace(stage, flags=stage.flags + new) if new else stage)
    return replace(result, stages=tuple(stages))
