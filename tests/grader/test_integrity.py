"""Integrity: a submission that leans on the grader's files or tampers with pytest is flagged, with
the reason, and gets no credit for the stages involved; honest code is never flagged."""

from __future__ import annotations

import textwrap

import pytest

from grader.instructor import batch, integrity
from grader.manifest import Chapter
from grader.tree import REPO_ROOT

from .conftest import make_stage_at, write
from .test_robust import OTHER, STAGE_TESTS, make_submission

HONEST = "def value():\n    return 1\n" + OTHER

CHEATERS = {
    # learner -> (ch9/mod.py, extra files, words in the stage's flag)
    "honest": (HONEST, {}, None),
    "imports_solutions": (
        "from solutions.ch3 import sampling\n\n" + HONEST,
        {},
        "imports solutions.ch3",
    ),
    "imports_at_runtime": (
        "import importlib\n\ndef value():\n    importlib.import_module('sol' + 'utions.ch3')\n"
        "    return 1\n" + OTHER,
        {},
        "imports solutions (the grader's solutions/)",  # the package first, refused
    ),
    "reads_the_tests": (
        "import sys\n\ndef value():\n    path = sys.modules['gra' + 'der.tree'].__file__\n"
        "    open(path).read()\n    return 1\n" + OTHER,
        {},
        "opens grader/tree.py",
    ),
    "patches_pytest": (
        "import sys\n\ndef value():\n    sys.modules['py' + 'test'].approx = None\n"
        "    return 1\n" + OTHER,
        {},
        "pytest.approx was replaced",
    ),
    "brings_a_conftest": (
        HONEST,
        {"conftest.py": "def pytest_runtest_makereport(item, call):\n    pass\n"},
        "conftest.py: could change how pytest runs",
    ),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("integrity")
    for learner, (source, extra, _) in CHEATERS.items():
        tree = make_submission(base / "subs", learner, source)
        for name, text in extra.items():
            write(tree / name, text)
    stage = make_stage_at(base / "stage", "fake", STAGE_TESTS)
    chapter = Chapter("ch9", "Fake", (stage,))
    results = batch.grade_all(
        chapter, batch.find_submissions(base / "subs", chapter), batch.Options()
    )
    return {g.learner: g for g in results}


@pytest.mark.parametrize("learner", list(CHEATERS))
def test_flagged_with_the_reason_and_no_credit(graded, learner):
    stage = graded[learner].result.stages[0]
    words = CHEATERS[learner][2]
    if words is None:
        assert stage.flags == () and stage.score == 10.0 and graded[learner].findings == ()
        return
    assert any(words in flag for flag in stage.flags), stage.flags
    assert stage.score == 0.0 and not stage.ok
    if learner != "imports_solutions":  # (that one cannot even be imported)
        assert stage.passed >= 1  # other() passed, and still earns nothing


def test_runtime_import_is_refused_with_a_sentence(graded):
    stage = graded["imports_at_runtime"].result.stages[0]
    assert stage.status == "error"
    assert "ch9/mod.py:4: ImportError: your code may not import solutions" in stage.message


def scan(source: str) -> list[str]:
    return [f.reason for f in integrity.scan_source(textwrap.dedent(source), "ch2/attention.py")]


def test_static_scan_reasons():
    assert scan("import tests.helpers\n") == ["imports tests.helpers (the grader's tests/)"]
    assert scan("from grader import plugin\n") == ["imports grader (the grader's grader/)"]
    assert scan("import _pytest.runner\n") == ["imports _pytest.runner (pytest's internals)"]
    assert scan("import pytest\npytest.approx = None\n") == ["patches pytest.approx"]
    assert scan("import builtins as b\nsetattr(b, 'len', None)\n") == [
        "patches builtins with setattr()"
    ]
    assert scan("import sys\nsys.modules['pytest'] = None\n") == [
        "replaces an entry of sys.modules"
    ]
    assert scan("pytest_plugins = ['x']\n") == ["declares pytest_plugins"]
    assert scan("def pytest_configure(config):\n    pass\n") == [
        "defines the pytest hook pytest_configure"
    ]
    assert scan("p = open('../../solutions/ch2/attention.py')\n") == [
        "names the grader's files in a string ('../../solutions/ch2/attention.py')"
    ]


def test_static_scan_leaves_honest_code_alone():
    assert scan('"""Compare with solutions/ch2 or tests/ch2 when stuck."""\nimport torch\n') == []
    assert scan("import pytest\n\ndef test_mine():\n    assert pytest.approx(1) == 1\n") == []
    assert scan("x = 'the tests say'\ndef f(:\n") == []  # not Python: the grade says so
    assert integrity.scan(REPO_ROOT / "exercises") == []
    assert integrity.scan(REPO_ROOT / "solutions") == []


def test_links_out_of_the_submission_are_flagged_and_not_copied(tmp_path):
    tree = make_submission(tmp_path / "subs", "linker", HONEST)
    (tree / "ch9" / "mod.py").unlink()
    (tree / "ch9" / "mod.py").symlink_to(REPO_ROOT / "grader" / "manifest.py")
    found = integrity.scan(tree)
    assert [f.file for f in found] == ["ch9/mod.py"] and "outside the submission" in found[0].reason
    batch.copy_tree(tree, tmp_path / "copy")
    assert not (tmp_path / "copy" / "ch9" / "mod.py").exists()


def test_involved_stages():
    chapter = Chapter(
        "ch9",
        "Fake",
        (
            _stage("a", ("ch9/a.py",)),
            _stage("b", ("ch9/b.py",)),
        ),
    )
    f = integrity.Finding
    assert integrity.involved(f("ch9/a.py", 1, "x"), chapter) == ("a",)
    assert integrity.involved(f("exercises/ch9/b.py", 1, "x"), chapter, "exercises/") == ("b",)
    assert integrity.involved(f("ch9/helper.py", 1, "x"), chapter) == ("a", "b")
    assert integrity.involved(f("ch2/attention.py", 1, "x"), chapter) == ()
    assert integrity.involved(f("ch2/attention.py", 1, "x", True), chapter) == ("a", "b")


def _stage(name, files):
    from grader.manifest import Stage

    return Stage(name, name, f"tests/{name}.py", files, "doc", ())
