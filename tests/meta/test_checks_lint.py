"""Stage tests make every verdict through tests/helpers.py's checks, never a bare ``assert``.

In an instructor's run the grader decides each test from the values the checks hand to
``grader.checks.record`` (``grader/verdicts.py``): a verdict made any other way (``assert``,
``pytest.approx``, ``torch.testing.assert_close``) is one the grader never sees, so the stage's
own process would decide it. This keeps the chapters to come honest too: it reads the manifest.
"""

from __future__ import annotations

import ast

import pytest

from grader import manifest
from grader.tree import REPO_ROOT

STAGE_FILES = sorted({s.tests for c in manifest.CHAPTERS.values() for s in c.stages})
# Verdicts pytest or torch make on their own, out of the grader's sight.
OUT_OF_SIGHT = ("approx", "assert_close", "assert_allclose", "assert_equal", "testing")


def verdicts_out_of_sight(source: str) -> list[str]:
    tree = ast.parse(source)
    # A Mistake's value may be a pytest.approx: it names a wrong answer, it decides nothing.
    in_mistakes = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Mistake"
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            found.append(f"line {node.lineno}: a bare assert")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in OUT_OF_SIGHT
            and id(node) not in in_mistakes
        ):
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("path", STAGE_FILES)
def test_stage_tests_decide_through_the_checks(path):
    found = verdicts_out_of_sight((REPO_ROOT / path).read_text(encoding="utf-8"))
    assert not found, f"{path} makes verdicts the grader cannot see (use tests/helpers.py): {found}"


def test_the_lint_finds_what_it_looks_for():
    source = "import pytest\n\ndef test_x():\n    assert 1 == pytest.approx(1.0)\n"
    assert verdicts_out_of_sight(source) == ["line 4: a bare assert", "line 4: .approx"]
    assert verdicts_out_of_sight("def test_x():\n    check(True, 'fine')\n") == []
    assert verdicts_out_of_sight("m = Mistake('a', 'b', pytest.approx(1.0))\n") == []
