"""A learner whose attention never returns hears "timed out" within seconds, not minutes."""

from __future__ import annotations

import shutil

from grader import manifest
from grader.events import StageEvents, Stop
from grader.runner import GRACE, run_stage, stage_fields
from grader.tree import REPO_ROOT

HANG = """

def _forever(*args, **kwargs):
    while True:
        pass


scaled_dot_product_attention = _forever  # noqa: F811 -- the learner's endless loop
"""


def test_a_hung_attention_stage_times_out_within_seconds(tmp_path):
    tree = tmp_path / "hung"
    shutil.copytree(REPO_ROOT / "solutions", tree, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tree / "ch2" / "attention.py", "a", encoding="utf-8") as f:
        f.write(HANG)
    chapter = manifest.CHAPTERS["ch2"]
    stage = chapter.stage("attention")
    result = run_stage(chapter, stage, str(tree))

    assert result.status == "timed out"
    assert "the time limit for this test" in result.message
    hung = result.tests.index(result.failed_test)
    assert all(t.status == "not run" for t in result.tests[hung + 1 :])
    # After start-up (Python, pytest, torch: 2-3 s on idle cores, more on a loaded machine) the
    # stage lasts at most one test's limit: under 15 s in all on an idle machine, never the
    # minutes it took when every test of the stage waited for its own limit.
    assert stage.test_timeout + 3 <= 15
    assert result.seconds - result.startup < stage.test_timeout + GRACE


def test_a_test_that_finishes_after_the_first_timeout_is_not_counted():
    """The score never depends on how fast the supervisor killed the stage: a test whose record
    arrived between the first timeout and the kill is 'not run', like those after it."""
    events = StageEvents()
    for record in (
        {"event": "collected", "nodeids": ["t.py::test_loop", "t.py::test_fast", "t.py::test_c"]},
        {"event": "start", "nodeid": "t.py::test_loop"},
        {"event": "test", "nodeid": "t.py::test_loop", "status": "timed out", "message": "slow"},
        {"event": "start", "nodeid": "t.py::test_fast"},
        {"event": "test", "nodeid": "t.py::test_fast", "status": "passed"},
    ):
        events.add(record)
    stop = Stop("timed out", "slow", decides=False, unreached="not run: stopped")
    chapter = manifest.CHAPTERS["ch2"]
    fields = stage_fields(chapter, chapter.stage("attention"))
    result = events.result(
        fields,
        test_file="t.py",
        stop=stop,
        returncode=-9,
        log_tail="",
        tree=REPO_ROOT,
        seconds=1.0,
    )
    assert [t.status for t in result.tests] == ["timed out", "not run", "not run"]
    assert result.status == "timed out" and result.score == 0.0
