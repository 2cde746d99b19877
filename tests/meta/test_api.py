"""The two trees keep the same public API: module names, public names, signatures, docstrings.

``exercises/`` is generated from ``solutions/`` (``python -m grader.stubs``), so drift is already
hard; this compares what the learner is given with what the reference provides, by reading both
trees with ``ast`` (nothing is imported or run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from grader import manifest

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"


def modules(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts
    }


def _first_line(node: ast.AST) -> str | None:
    doc = ast.get_docstring(node)  # type: ignore[arg-type]
    return doc.strip().splitlines()[0] if doc and doc.strip() else None


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    decorators = "".join(f"@{ast.unparse(d)} " for d in node.decorator_list)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{decorators}def {node.name}({ast.unparse(node.args)}){returns}"


def _public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def api(path: Path) -> dict[str, object]:
    """Every public name of a module with its signature and docstring's first line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: dict[str, object] = {"<module doc>": _first_line(tree)}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _public(node.name):
                out[prefix + node.name] = (_signature(node), _first_line(node))
            elif isinstance(node, ast.ClassDef) and _public(node.name):
                bases = ", ".join(ast.unparse(b) for b in node.bases)
                out[prefix + node.name] = (f"class {node.name}({bases})", _first_line(node))
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if _public(node.target.id):
                    out[prefix + node.target.id] = (
                        f"{node.target.id}: {ast.unparse(node.annotation)}"
                    )
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and _public(target.id):
                        out[prefix + target.id] = "assigned"

    visit(tree.body, "")
    return out


def test_both_trees_have_the_same_modules():
    assert modules(SOLUTIONS), "solutions/ is empty"
    assert modules(EXERCISES) == modules(SOLUTIONS)


@pytest.mark.parametrize("rel", sorted(modules(SOLUTIONS)))
def test_same_public_api(rel):
    exercise = EXERCISES / rel
    assert exercise.exists(), f"exercises/{rel} is missing (run: python -m grader.stubs)"
    reference, stub = api(SOLUTIONS / rel), api(exercise)
    missing = sorted(set(reference) - set(stub))
    extra = sorted(set(stub) - set(reference))
    assert not missing, f"exercises/{rel} lacks public names of the solution: {missing}"
    assert not extra, f"exercises/{rel} has public names the solution lacks: {extra}"
    different = [name for name in reference if reference[name] != stub[name]]
    assert not different, f"exercises/{rel} differs from solutions/{rel} in: " + "; ".join(
        f"{n}: {reference[n]!r} != {stub[n]!r}" for n in different
    )


@pytest.mark.parametrize(
    "stage",
    [s for c in manifest.CHAPTERS.values() for s in c.stages],
    ids=lambda s: f"{manifest.chapter_of_stage(s).name}-{s.name}",
)
def test_every_stage_has_its_files_tests_and_doc(stage):
    """A stage the manifest names but the repository lacks is a defect, never a skip."""
    assert (REPO / stage.tests).is_file(), f"{stage.tests} does not exist"
    for rel in stage.files:
        assert (SOLUTIONS / rel).is_file(), f"solutions/{rel} does not exist"
        assert (EXERCISES / rel).is_file(), f"exercises/{rel} does not exist"
    assert (REPO / stage.doc).is_file(), f"{stage.doc} does not exist"
    assert stage.hints and stage.test_timeout < stage.time_limit
    assert stage.points > 0 or stage.optional, "only an optional stage is worth no points"


def test_stage_names_are_unique_within_a_chapter():
    for chapter in manifest.CHAPTERS.values():
        names = [s.name for s in chapter.stages]
        assert len(names) == len(set(names)), f"{chapter.name}: duplicate stage names {names}"
