"""The real trees through the real grader: untouched stubs fail every stage as "not started",
and the reference passes (one fast stage here; the project suite runs every stage's tests
directly against ``solutions/``, so the slow end-to-end stages are not run twice)."""

from __future__ import annotations

import pytest

from grader import manifest, runner

CHAPTERS = list(manifest.CHAPTERS.values())
# What an untouched stub may give: it raises NotImplementedError, or the test does not need it.
STUB_STATUSES = {"not started", "passed", "skipped"}


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_untouched_exercises_fail_every_stage_as_not_started(chapter):
    result = runner.grade(chapter, "exercises", run_all=True)
    wrong = [
        f"{s.name}: {s.status}: {s.message}" for s in result.stages if s.status != "not started"
    ]
    assert not wrong, "stages that should be 'not started' on the stubs:\n" + "\n".join(wrong)
    tests = [
        f"{t.nodeid}: {t.status}: {t.message}"
        for s in result.stages
        for t in s.tests
        if t.status not in STUB_STATUSES
    ]
    assert not tests, "tests that neither pass nor say 'not started' on the stubs:\n" + "\n".join(
        tests
    )


def test_a_real_stage_passes_on_solutions():
    chapter = manifest.CHAPTERS["ch2"]
    result = runner.grade(chapter, "solutions", only="attention")
    (stage,) = result.stages
    assert stage.status == "passed", f"{stage.status}: {stage.message}"
    assert stage.total > 0 and stage.passed == stage.total
    assert result.ok and result.score == stage.points
