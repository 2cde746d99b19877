"""Every status the grader can give, on a fake tree whose code is broken in each possible way."""

from __future__ import annotations

import json
import os
import sys

import pytest

from grader import runner
from grader.manifest import Chapter
from grader.runner import run_stage
from grader.tree import REPO_ROOT

from .conftest import (
    NOT_STARTED,
    PASSING,
    make_stage_at,
    make_tree,
    stage_test,
    write,
)

# One stage whose tests hit every per-test classification, run once for the whole module.
MIXED = """
from tests.helpers import check_equal


def test_good():
    assert mod.good() == 1


def test_learner_failure():
    '''wrong() returns 1.'''
    check_equal(mod.wrong(), 1, "wrong()", "ch9/mod.py, wrong")


def test_plain_assert():
    assert mod.wrong() == 1


def test_stub():
    mod.stub()


def test_name_error():
    mod.typo(1)


def test_runtime_error():
    mod.index()


def test_missing_name():
    mod.renamed()


def test_sys_exit():
    mod.leave()


def test_skipped():
    import pytest

    pytest.skip("not for this tree")


def test_timeout():  # last: the first test that times out ends the stage
    mod.loop()
"""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixed")
    tree = make_tree(base / "tree")
    stage = make_stage_at(base, "mixed", stage_test(MIXED), test_timeout=1.5)
    chapter = Chapter("ch9", "Fake", (stage,))
    result = run_stage(chapter, stage, str(tree))
    return result, {t.name: t for t in result.tests}


def test_each_test_is_classified(mixed):
    _, tests = mixed
    expected = {
        "test_good": "passed",
        "test_learner_failure": "failed",
        "test_plain_assert": "failed",
        "test_stub": "not started",
        "test_name_error": "error",
        "test_runtime_error": "failed",
        "test_missing_name": "error",
        "test_sys_exit": "crashed",
        "test_skipped": "skipped",
        "test_timeout": "timed out",
    }
    assert {name: t.status for name, t in tests.items()} == expected


def test_learner_failure_message_is_shown_as_is(mixed):
    t = mixed[1]["test_learner_failure"]
    assert t.message == "wrong() should be 1, got 2. Look at ch9/mod.py, wrong."
    assert t.doc == "wrong() returns 1."


def test_not_started_shows_the_stub_message(mixed):
    t = mixed[1]["test_stub"]
    assert t.message == "ch9 stage 'fake' not started: implement stub in ch9/mod.py"
    assert (t.where.file, t.where.function) == ("ch9/mod.py", "stub")


def test_errors_in_learner_code_say_where(mixed):
    tests = mixed[1]
    assert tests["test_name_error"].message == (
        "ch9/mod.py:19: NameError: name 'undefined_name' is not defined"
    )
    runtime = tests["test_runtime_error"]
    assert runtime.message == (
        "IndexError: list index out of range (raised at ch9/mod.py:23, in index)"
    )
    assert str(runtime.where) == "ch9/mod.py:23, in index"
    assert "module 'ch9.mod' has no attribute 'renamed'" in tests["test_missing_name"].message


def test_timeout_and_sys_exit_say_where(mixed):
    tests = mixed[1]
    assert tests["test_timeout"].where.function == "loop"
    assert "1.5 s" in tests["test_timeout"].message
    assert "sys.exit(3)" in tests["test_sys_exit"].message
    assert str(tests["test_sys_exit"].where) == "ch9/mod.py:40, in leave"


def test_stage_reports_the_first_problem_to_fix(mixed):
    result, _ = mixed
    # error outranks crashed, timed out, failed and not started: the learner fixes it first
    assert result.status == "error"
    assert result.failed_test.name == "test_name_error"
    assert result.message.startswith("ch9/mod.py:19: NameError")
    assert (result.passed, result.total) == (1, 9)  # skipped tests do not count
    assert result.score == pytest.approx(10 / 9, abs=0.01)
    assert result.hint == "hint for mixed"
    assert len(result.log_tail) < 5000  # pytest's own output is kept short, never shown raw


def test_passing_stage(tree, make_stage):
    stage = make_stage("ok", stage_test(PASSING), points=7)
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "passed"
    assert (result.passed, result.total, result.score) == (2, 2, 7.0)
    assert result.message == "" and result.failed_test is None
    assert result.tests[0].doc == "good() returns 1."


def test_failed_stage_partial_credit(tree, make_stage):
    source = PASSING + "\n\ndef test_wrong():\n    assert mod.wrong() == 1, 'wrong() gave 2'\n"
    stage = make_stage("partly", stage_test(source), points=9)
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "failed"
    assert result.message.startswith("wrong() gave 2")
    assert (result.passed, result.total, result.score) == (2, 3, 6.0)


def test_untouched_stub_is_not_started(tree, make_stage):
    stage = make_stage("stub", stage_test(NOT_STARTED))
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "not started"
    assert "not started: implement stub" in result.message


def test_syntax_error_in_tree_is_an_error_with_file_and_line(tree, make_stage):
    write(tree / "ch9" / "mod.py", "def good():\n    return 1\n\ndef broken(:\n    pass\n")
    stage = make_stage("syntax", stage_test(PASSING))
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "error"
    assert result.message.startswith("ch9/mod.py:4: SyntaxError: ")
    assert (result.where.file, result.where.line) == ("ch9/mod.py", 4)
    assert "Traceback" not in result.message


def test_import_error_in_tree_is_an_error_with_file_and_line(tree, make_stage):
    write(
        tree / "ch9" / "mod.py",
        "import os\nimport no_such_module_xyz\n\ndef good():\n    return 1\n",
    )
    stage = make_stage("imports", stage_test(PASSING))
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "error"
    assert result.message == (
        "ch9/mod.py:2: ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )


def test_stage_time_limit_kills_the_process(tree, make_stage):
    source = PASSING + "\n\ndef test_hang():\n    mod.stubborn_loop()\n"
    stage = make_stage("hang", stage_test(source), test_timeout=60.0, time_limit=3.0)
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "timed out"
    assert "3 s" in result.message
    assert result.seconds < 20


def test_the_first_test_that_times_out_ends_the_stage(tree, make_stage):
    source = PASSING + "\n\ndef test_hang():\n    mod.loop()\n\n\ndef test_after():\n    pass\n"
    stage = make_stage("hang", stage_test(source), test_timeout=1.0, time_limit=60.0)
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "timed out"
    assert [t.status for t in result.tests] == ["passed", "passed", "timed out", "not run"]
    assert result.message.startswith("still running after 1.0 s, the time limit for this test")
    assert result.where.function == "loop"
    assert (result.passed, result.total) == (2, 4)  # a test never reached counts as not passed
    assert result.seconds < 15


def test_code_that_ignores_the_alarm_is_stopped_by_the_supervisor(tree, make_stage):
    """pytest-timeout's SIGALRM is ignored: the runner's own per-test deadline ends the test."""
    source = (
        "import signal\n\n\ndef test_deaf():\n"
        "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    mod.loop()\n\n\n"
        "def test_after():\n    pass\n"
    )
    stage = make_stage("deaf", stage_test(source), test_timeout=1.0, time_limit=60.0)
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "timed out"
    assert [t.status for t in result.tests] == ["timed out", "not run"]
    assert "did not stop when asked" in result.message
    assert result.seconds < 1.0 + runner.GRACE + 10  # start-up included, far below time_limit


def test_os_exit_is_a_crash_and_earlier_results_survive(tree, make_stage):
    source = PASSING + "\n\ndef test_vanish():\n    mod.vanish()\n\n\ndef test_after():\n    pass\n"
    stage = make_stage("vanish", stage_test(source))
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "crashed"
    assert "os._exit(0)" in result.message
    assert str(result.where) == "ch9/mod.py:44, in vanish"
    statuses = [t.status for t in result.tests]
    assert statuses == ["passed", "passed", "crashed", "not run"]
    assert result.failed_test.name == "test_vanish"


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="POSIX signals")
def test_death_by_signal_is_a_crash(tree, make_stage):
    stage = make_stage("segv", stage_test("def test_segfault():\n    mod.segfault()\n"))
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "crashed"
    assert "SIGSEGV" in result.message
    assert result.where is not None and result.where.function == "segfault"


def test_missing_stage_tests_are_an_error(tree, make_stage):
    stage = make_stage("gone", "")
    os.remove(stage.tests)
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "error"
    assert "missing" in result.message


def test_missing_tree_is_a_usage_error(tmp_path, make_stage):
    stage = make_stage("ok", stage_test(PASSING))
    with pytest.raises(runner.UsageError, match="does not exist"):
        run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tmp_path / "nowhere"))


def test_plugin_writes_one_json_line_per_event(tree, make_stage, tmp_path, monkeypatch):
    """The records a dying process leaves behind are complete lines, written as tests finish."""
    import subprocess

    stage = make_stage("ok", stage_test(PASSING))
    results = tmp_path / "results.jsonl"
    env = runner.stage_env(str(tree), results)
    subprocess.run(
        runner.pytest_command(stage), cwd=REPO_ROOT, env=env, check=True, capture_output=True
    )
    events = [json.loads(line)["event"] for line in results.read_text().splitlines()]
    assert events == ["collected", "start", "test", "start", "test", "finish"]


def test_grading_leaves_the_tree_untouched(tree, make_stage):
    before = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*"))
    stage = make_stage("ok", stage_test(PASSING))
    run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")) == before


def test_pytest_that_cannot_start_is_an_error_not_a_crash(tree, make_stage, monkeypatch):
    stage = make_stage("ok", stage_test(PASSING))
    real = runner.pytest_command
    monkeypatch.setattr(runner, "pytest_command", lambda *a: [*real(*a), "--no-such-option"])
    result = run_stage(Chapter("ch9", "Fake", (stage,)), stage, str(tree))
    assert result.status == "error"
    assert "pytest could not run" in result.message and "--no-such-option" in result.message
