"""Verdicts decided by the grader (grader/verdicts.py, grader/answer_key.py, grader/checks.py).

In an instructor's run the stage's process reports its checks' values and the grader compares
them with an answer key made from the reference. A submission that forges "passed" lines, patches
the comparison functions, skips its tests or drops the hidden ones scores 0 on what it did not
do, while an honest copy of the reference keeps every point. The unit tests pin the rules of
:func:`grader.verdicts.judge`; the batch at the end runs real hostile submissions.
"""

from __future__ import annotations

import ast
import math

import pytest
import torch

from grader import answer_key, checks
from grader.instructor import batch
from grader.manifest import Chapter
from grader.results import StageResult, TestResult
from grader.statuses import FAILED, NOT_STARTED, PASSED, SKIPPED
from grader.verdicts import CheckKey, Key, TestKey, judge, read_checks

from .conftest import make_stage_at, write
from .test_robust import make_submission

# -- the rules ------------------------------------------------------------------------------

X = torch.tensor([1.0, 2.0, 3.0])


def sent(nodeid, n, kind, got, expected, atol=1e-5, rtol=1e-4):
    return {
        "nodeid": nodeid,
        "n": n,
        "kind": kind,
        "got": checks.encode(got),
        "expected": checks.encode(expected),
        "atol": atol,
        "rtol": rtol,
    }


def key_of(*tests: TestKey) -> Key:
    return Key("fake", tests)


def close_key(value, stable=True) -> CheckKey:
    return CheckKey(checks.CLOSE, checks.encode(value), 1e-5, 1e-4, stable)


def result_of(*tests: TestResult) -> StageResult:
    ok = all(t.status == PASSED for t in tests)
    return StageResult("ch9", "fake", "Fake", PASSED if ok else FAILED, 10, tests=tests)


def passed(name: str) -> TestResult:
    return TestResult(f"t.py::{name}", name, PASSED)


def test_a_pass_stands_when_every_value_matches_the_key():
    key = key_of(TestKey("t.py::a", (close_key(X), CheckKey(checks.EQUAL, "ok", stable=True))))
    records = {
        "a": [
            sent("t.py::a", 0, "close", X + 1e-7, X),
            sent("t.py::a", 1, "equal", "ok", "ok"),
        ]
    }
    judged = judge(result_of(passed("a")), key, records)
    assert judged.status == PASSED and judged.score == 10.0
    assert judged.verdicts is not None and judged.verdicts.verified == 1
    assert judged.verdicts.overridden == 0 and judged.warnings == ()


def test_a_reported_pass_without_its_values_fails():
    key = key_of(TestKey("t.py::a", (close_key(X),)))
    judged = judge(result_of(passed("a")), key, {})
    assert judged.status == FAILED and judged.score == 0.0
    assert "made 0 of the 1 checks" in judged.tests[0].message
    assert judged.verdicts.overridden == 1 and "overrode 1 test" in judged.warnings[0]


def test_a_wrong_value_fails_even_when_the_process_said_it_matched():
    """What a patched torch.allclose gives: the process compared wrongly, the grader does not."""
    key = key_of(TestKey("t.py::a", (close_key(X),)))
    records = {"a": [sent("t.py::a", 0, "close", X * 2, X)]}
    judged = judge(result_of(passed("a")), key, records)
    assert judged.tests[0].status == FAILED
    assert "does not match the reference's value" in judged.tests[0].message


def test_the_tolerance_and_the_expected_value_come_from_the_key():
    key = key_of(TestKey("t.py::a", (close_key(X),)))
    loose = {"a": [sent("t.py::a", 0, "close", X + 0.5, X + 0.5, atol=1.0, rtol=1.0)]}
    assert judge(result_of(passed("a")), key, loose).status == FAILED


def test_a_value_that_depends_on_the_code_is_compared_with_what_the_test_computed():
    key = key_of(TestKey("t.py::a", (close_key(X, stable=False),)))
    honest = {"a": [sent("t.py::a", 0, "close", X * 3, X * 3)]}
    assert judge(result_of(passed("a")), key, honest).status == PASSED
    patched = {"a": [sent("t.py::a", 0, "close", X * 3, X)]}
    assert judge(result_of(passed("a")), key, patched).status == FAILED


def test_a_condition_must_be_true_and_kinds_must_match():
    key = key_of(TestKey("t.py::a", (CheckKey(checks.TRUE, True, stable=True),)))
    false = {"a": [sent("t.py::a", 0, "true", False, True)]}
    assert judge(result_of(passed("a")), key, false).status == FAILED
    other_kind = {"a": [sent("t.py::a", 0, "equal", True, True)]}
    assert "not 'true'" in judge(result_of(passed("a")), key, other_kind).tests[0].message


def test_a_number_is_held_to_the_reference_limit():
    """check_below (a loss) and check_at_least (an accuracy): the grader compares the number."""
    key = key_of(
        TestKey("t.py::a", (CheckKey(checks.BELOW, 1.0, stable=True),)),
        TestKey("t.py::b", (CheckKey(checks.AT_LEAST, 0.9, stable=True),)),
    )
    good = {
        "a": [sent("t.py::a", 0, "below", 0.5, 1.0)],
        "b": [sent("t.py::b", 0, "at least", 0.9, 0.9)],
    }
    assert judge(result_of(passed("a"), passed("b")), key, good).status == PASSED
    raised_bar = {
        "a": [sent("t.py::a", 0, "below", 1.5, 2.0)],
        "b": [sent("t.py::b", 0, "at least", 0.5, 0.1)],
    }
    judged = judge(result_of(passed("a"), passed("b")), key, raised_bar)
    assert [t.status for t in judged.tests] == [FAILED, FAILED]


def test_same_tensors_follow_torch_equal():
    ids = torch.tensor([1, 2, 3])
    key = key_of(TestKey("t.py::a", (CheckKey(checks.SAME, checks.encode(ids), stable=True),)))
    as_int32 = {"a": [sent("t.py::a", 0, "same", ids.int(), ids)]}
    assert judge(result_of(passed("a")), key, as_int32).status == PASSED
    other = {"a": [sent("t.py::a", 0, "same", ids + 1, ids + 1)]}
    assert judge(result_of(passed("a")), key, other).status == FAILED


def test_skipped_and_missing_tests_count_as_failed_and_the_total_comes_from_the_key():
    key = key_of(TestKey("t.py::a", ()), TestKey("t.py::b", ()), TestKey("t.py::c", ()))
    reported = result_of(passed("a"), TestResult("t.py::b", "b", SKIPPED), passed("extra"))
    judged = judge(reported, key, {})
    assert [t.name for t in judged.tests] == ["a", "b", "c"]  # the extra test is not counted
    assert [t.status for t in judged.tests] == [PASSED, FAILED, FAILED]
    assert "skipped" in judged.tests[1].message and "did not run" in judged.tests[2].message
    assert judged.total == 3 and judged.score == round(10 / 3, 2)


def test_a_failure_the_process_reported_keeps_its_own_message():
    key = key_of(TestKey("t.py::a", (close_key(X),)))
    stub = TestResult("t.py::a", "a", NOT_STARTED, "ch9 stage 'fake' not started")
    reported = StageResult("ch9", "fake", "Fake", NOT_STARTED, 10, tests=(stub,), message="x")
    judged = judge(reported, key, {})
    assert judged.status == NOT_STARTED and judged.tests[0].message.startswith("ch9 stage")
    assert judged.verdicts.overridden == 0


def test_extra_checks_are_refused_where_the_reference_always_makes_the_same_number():
    counted = key_of(TestKey("t.py::a", (CheckKey(checks.EQUAL, 1, stable=True),)))
    records = {"a": [sent("t.py::a", 0, "equal", 1, 1), sent("t.py::a", 1, "equal", 2, 2)]}
    assert judge(result_of(passed("a")), counted, records).status == FAILED
    loose = key_of(TestKey("t.py::a", (CheckKey(checks.EQUAL, 1, stable=True),), counted=False))
    assert judge(result_of(passed("a")), loose, records).status == PASSED


def test_values_encode_so_that_only_equal_values_compare_equal():
    enc = checks.encode
    assert enc((1, 2)) != enc([1, 2])  # check_equal tells a tuple from a list
    assert enc(torch.Size([2, 3])) == enc((2, 3))
    assert enc({"b": 1, "a": 2}) == enc({"a": 2, "b": 1})
    assert enc(3) == enc(3.0) and enc(math.nan) == enc(float("nan"))
    for value in (torch.randn(2, 3), torch.arange(4), torch.ones(2, dtype=torch.bool)):
        back = checks.decode_tensor(enc(value))
        assert back.shape == value.shape and torch.equal(back.to(value.dtype), value)
    assert enc(torch.randn(2, dtype=torch.bfloat16))["tensor"] == "bfloat16"


def test_malformed_check_lines_are_ignored(tmp_path):
    path = tmp_path / "checks.jsonl"
    good = sent("t.py::a", 0, "equal", 1, 1)
    lines = ["not json", '{"nodeid": 3}', str(good).replace("'", '"'), '{"n": 0}']
    path.write_text("\n".join(lines) + "\n")
    assert [r["got"] for r in read_checks(path)["a"]] == [1]  # by id within the stage file
    assert read_checks(tmp_path / "missing.jsonl") == {}


def test_the_perturbed_reference_draws_first_and_keeps_docstrings(tmp_path):
    write(
        tmp_path / "ref" / "ch9" / "mod.py",
        'def f(x):\n    """Doc."""\n    return x + 1\n\nclass A:\n    def g(self):\n        return 2\n',
    )
    copy = answer_key.perturbed_copy(tmp_path / "ref", tmp_path / "copy")
    tree = ast.parse((copy / "ch9" / "mod.py").read_text())
    f = tree.body[0]
    assert ast.get_docstring(f) == "Doc." and "rand" in ast.unparse(f.body[1])
    assert "rand" in ast.unparse(tree.body[1].body[0].body[0])


# -- a real batch of hostile submissions ----------------------------------------------------

REFERENCE = """
import torch


def scale(x):
    return 2 * x


def label():
    return "ok"


def check_input(x):
    if x < 0:
        raise ValueError("negative")
"""

STAGE = """
import pytest
import torch

from grader.tree import load
from tests.helpers import check_close, check_equal, check_raises

mod = load("ch9.mod")


def test_scale():
    torch.manual_seed(0)  # unseeded, the expected value would differ between runs: not in the key
    x = torch.randn(4)
    check_close(mod.scale(x), 2 * x, "scale(x)", "ch9/mod.py")


def test_label():
    check_equal(mod.label(), "ok", "label()", "ch9/mod.py")


def test_raises():
    with check_raises(ValueError, "check_input(-1)", "ch9/mod.py"):
        mod.check_input(-1)


@pytest.mark.hidden
def test_hidden():
    check_close(mod.scale(torch.ones(3)), torch.full((3,), 2.0), "scale(ones)", "ch9/mod.py")
"""

STUBS = """
def scale(x):
    raise NotImplementedError("ch9 stage 'fake' not started")


def label():
    raise NotImplementedError("ch9 stage 'fake' not started")


def check_input(x):
    raise NotImplementedError("ch9 stage 'fake' not started")
"""

FORGE_RESULTS = (
    STUBS
    + """
import atexit, json, os

def _forge():
    path = os.environ["GRADER_RESULTS"]
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    nodeids = next(r["nodeids"] for r in lines if r.get("event") == "collected")
    with open(path, "a") as f:
        for nodeid in nodeids:
            name = nodeid.rsplit("::", 1)[-1]
            f.write(json.dumps({"event": "test", "nodeid": nodeid, "name": name,
                                "outcome": "passed", "status": "passed"}) + "\\n")

atexit.register(_forge)
"""
)

PATCHED_COMPARISONS = """
import torch

torch.isclose = lambda a, b, **k: torch.ones_like(a, dtype=torch.bool)
torch.allclose = lambda *a, **k: True


def scale(x):
    return 3 * x


def label():
    return "ok"


def check_input(x):
    if x < 0:
        raise ValueError("negative")
"""

SKIPS = """
import pytest


def scale(x):
    pytest.skip("not today")


def label():
    return "ok"


def check_input(x):
    if x < 0:
        raise ValueError("negative")
"""

SWAPS_THE_TESTS = (
    STUBS
    + """
import sys

def _swap(frame, event, arg):  # on the first call after the test module has its four tests
    for module in list(sys.modules.values()):
        if str(getattr(module, "__file__", "")).endswith("test_fake.py"):
            tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
            if len(tests) == 4:
                for test in tests:
                    test.__code__ = (lambda: None).__code__  # every test now does nothing
                sys.setprofile(None)

sys.setprofile(_swap)
"""
)

DROPS_HIDDEN = "import os\n\nos.environ['GRADER_HIDDEN'] = '0'\n" + REFERENCE

LEARNERS = {
    # learner -> (ch9/mod.py, tests passed out of 4)
    "honest": (REFERENCE, 4),
    "forges_results": (FORGE_RESULTS, 0),
    "patches_comparisons": (PATCHED_COMPARISONS, 2),
    "skips": (SKIPS, 2),
    "swaps_the_tests": (SWAPS_THE_TESTS, 0),
    "drops_hidden": (DROPS_HIDDEN, 3),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("verdicts")
    reference = make_submission(base / "reference", "tree", REFERENCE)
    stage = make_stage_at(base / "stage", "fake", STAGE)
    for learner, (source, _) in LEARNERS.items():
        make_submission(base / "subs", learner, source)
    chapter = Chapter("ch9", "Fake", (stage,))
    options = batch.Options(hidden=True, reference=reference)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADER_STATE_DIR", str(base / "state"))
        results = batch.grade_all(chapter, batch.find_submissions(base / "subs", chapter), options)
        keys = list((base / "state" / "keys").glob("ch9-fake-*.json"))
    return {g.learner: g.result.stages[0] for g in results}, keys


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_hostile_submissions_earn_only_what_they_did(graded, learner):
    stage = graded[0][learner]
    expected = LEARNERS[learner][1]
    assert stage.total == 4, [t.name for t in stage.tests]
    assert stage.passed == expected, [(t.name, t.status, t.message) for t in stage.tests]
    assert stage.verdicts is not None and stage.verdicts.total == 4
    assert stage.verdicts.verified == 4  # every test compares a value with the reference's


def test_forged_passes_are_refused_and_said(graded):
    stages = graded[0]
    assert stages["forges_results"].verdicts.overridden >= 3
    assert stages["swaps_the_tests"].verdicts.overridden == 4  # passed, with no checks made
    assert stages["patches_comparisons"].verdicts.overridden == 2  # test_scale, test_hidden
    assert any("overrode" in w for w in stages["patches_comparisons"].warnings)
    assert stages["honest"].verdicts.overridden == 0 and stages["honest"].score == 10.0
    skipped = next(t for t in stages["skips"].tests if t.name == "test_scale")
    assert skipped.status == FAILED and "skipped" in skipped.message


def test_the_key_is_made_once_and_cached(graded):
    assert len(graded[1]) == 1
