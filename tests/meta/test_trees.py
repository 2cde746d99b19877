"""The real trees through the real grader: untouched stubs fail every stage as "not started",
and the reference passes (one fast stage here; the project suite runs every stage's tests
directly against ``solutions/``, so the slow end-to-end stages are not run twice)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from grader import manifest, runner, server
from grader.tree import REPO_ROOT

STAGES = [(c, s) for c in manifest.CHAPTERS.values() for s in c.stages]
# What an untouched stub may give: it raises NotImplementedError. A test that passes on a stub
# checks nothing the learner wrote and would hand out free points.
STUB_STATUSES = {"not started", "skipped"}


@pytest.fixture(scope="module")
def on_exercises(tmp_path_factory) -> dict[tuple[str, str], runner.StageResult]:
    """Every stage of every chapter graded on exercises/ (as `--all` does), two at a time, on a
    stage server (grader/server.py: a fresh fork per stage, torch imported once)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(server.ROOT_ENV, str(tmp_path_factory.mktemp("servers")))
        client = server.Client(REPO_ROOT / "exercises", prefix=())
        box = runner.Sandbox(server=client)
        try:
            with ThreadPoolExecutor(max_workers=2) as pool:
                results = pool.map(
                    lambda cs: runner.run_stage(cs[0], cs[1], "exercises", sandbox=box), STAGES
                )
                return {(c.name, s.name): r for (c, s), r in zip(STAGES, results, strict=True)}
        finally:
            client.stop()


@pytest.mark.parametrize(("chapter", "stage"), STAGES, ids=lambda x: x.name)
def test_untouched_stub_stage_is_not_started(on_exercises, chapter, stage):
    result = on_exercises[chapter.name, stage.name]
    assert result.status == "not started", f"{result.status}: {result.message}"
    wrong = [
        f"{t.nodeid}: {t.status}: {t.message}"
        for t in result.tests
        if t.status not in STUB_STATUSES
    ]
    assert not wrong, "tests that do not say 'not started' on the stubs:\n" + "\n".join(wrong)
    assert result.score == 0, f"an untouched stub earns {result.score} points in {stage.name}"


def test_a_real_stage_passes_on_solutions():
    chapter = manifest.CHAPTERS["ch2"]
    result = runner.grade(chapter, "solutions", only="attention")
    (stage,) = result.stages
    assert stage.status == "passed", f"{stage.status}: {stage.message}"
    assert stage.total > 0 and stage.passed == stage.total
    assert result.ok and result.score == stage.points
