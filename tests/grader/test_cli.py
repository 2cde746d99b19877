"""The command line on a fake chapter: stage order, locking, --all, --stage, exit codes, JSON."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys

import pytest

from grader import cli, runner
from grader.instructor import report
from grader.manifest import CHAPTERS, Hint
from grader.progress import Progress
from grader.tree import REPO_ROOT

from .conftest import FAILING, PASSING, run_cli, stage_test


def test_stops_at_the_first_failure_and_locks_the_rest(three_stages, tree, capsys, tmp_path):
    target = tmp_path / "out" / "report.json"
    code, out, err = run_cli(capsys, "ch9", "--tree", str(tree), "--json", str(target))
    assert code == 1 and err == ""
    rows = {line.split()[1]: line.split()[2] for line in out.splitlines() if line[:1].isdigit()}
    assert rows == {"first": "passed", "second": "failed", "third": "locked"}
    assert "wrong() should give 1, got 2" in out  # the first failure, in the test's words
    assert "Hint:  hint for second" in out
    assert "Read:  docs/ch9/second.md" in out
    assert "Score: 10 / 40 points" in out
    assert "Traceback" not in out

    data = json.loads(target.read_text())
    assert data["schema"] == report.SCHEMA
    assert (data["ok"], data["score"], data["max_score"]) == (False, 10.0, 40)
    assert data["totals"] == {
        "stages": 3,
        "stages_passed": 1,
        "tests": 3,
        "tests_passed": 2,
        "by_status": {"passed": 1, "failed": 1, "locked": 1},
    }
    first, second, third = data["stages"]
    assert [t["name"] for t in first["tests"]] == ["test_good", "test_good_again"]
    assert first["tests"][0] | {"seconds": 0} == {
        "nodeid": first["tests"][0]["nodeid"],
        "name": "test_good",
        "doc": "good() returns 1.",
        "status": "passed",
        "outcome": "passed",
        "message": "",
        "where": None,
        "exception": None,
        "seconds": 0,
    }
    assert second["status"] == "failed" and second["message"] == "wrong() should give 1, got 2"
    assert second["failed_test"].endswith("::test_wrong")
    assert second["tests"][0]["exception"] == "AssertionError"
    assert third == third | {"status": "locked", "tests": [], "tests_total": 0, "score": 0.0}


def test_all_runs_every_stage(three_stages, tree, capsys):
    code, out, _ = run_cli(capsys, "ch9", "--all", "--tree", str(tree))
    assert code == 1
    assert "not started" in out and "locked" not in out


def test_one_stage_by_option_or_by_name(three_stages, tree, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "ch9", "--stage", "first", "--tree", str(tree))
    assert code == 0 and "Every stage passed." in out
    assert "second" not in out and "Score: 10 / 10 points" in out
    code, out, _ = run_cli(capsys, "grade", "ch9", "--tree", str(tree), "third")
    assert code == 1 and "not started: implement stub in ch9/mod.py" in out


def test_exit_0_when_every_stage_passes(make_stage, fake_chapter, tree, capsys):
    fake_chapter(make_stage("a", stage_test(PASSING)), make_stage("b", stage_test(PASSING)))
    code, out, _ = run_cli(capsys, "ch9", "--tree", str(tree))
    assert code == 0 and "Score: 20 / 20 points" in out


def test_relative_tree_path_is_taken_from_the_current_directory(
    make_stage, fake_chapter, tree, capsys, monkeypatch
):
    fake_chapter(make_stage("a", stage_test(PASSING)))
    monkeypatch.chdir(tree.parent)
    assert run_cli(capsys, "ch9", "--tree", "tree")[0] == 0


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["ch7"], "unknown chapter 'ch7' (chapters: ch9)"),
        (["ch9", "nope"], "chapter ch9 has no stage 'nope'"),
        (["ch9", "--stage", "nope"], "chapter ch9 has no stage 'nope'"),
        (["ch9", "--tree", "/no/such/folder"], "tree '/no/such/folder' does not exist"),
        (["ch9", "--bogus"], "unrecognized arguments: --bogus"),
        (["ch9", "--all", "--stage", "first"], "not allowed with argument"),
    ],
)
def test_usage_errors_exit_2_with_one_line(three_stages, capsys, argv, words):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("python -m grader: error: ")
    assert words in err


def test_list_shows_chapters_and_stages(three_stages, capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "ch9 · The fake chapter" in out
    assert all(name in out for name in ("first", "second", "third"))


def test_runner_api_without_the_cli(three_stages, tree):
    """The runner is usable on its own (batch grading, watch mode build on it)."""
    result = runner.grade(three_stages, str(tree), run_all=True)
    assert [s.status for s in result.stages] == ["passed", "failed", "not started"]
    assert result.first_problem.name == "second"
    assert (result.ok, result.score, result.max_score) == (False, 10.0, 40)


def test_python_m_grader_end_to_end():
    """The real entry point: `list` works and an unknown chapter exits 2 in one line."""
    run = [sys.executable, "-m", "grader"]
    listed = subprocess.run([*run, "list"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert listed.returncode == 0 and "ch2" in listed.stdout and "attention" in listed.stdout
    bad = subprocess.run([*run, "ch99"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"python -m grader: error: unknown chapter 'ch99' (chapters: {', '.join(CHAPTERS)})"
    ]


def test_the_command_line_starts_without_pytest_or_torch():
    """`--help` and `list` import neither pytest (the stage processes do) nor torch."""
    code = "import sys, grader.cli; print(sorted({'pytest', 'torch'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_hint_fits_the_failed_check_and_says_how_far_the_learner_is(
    make_stage, fake_chapter, tree, capsys
):
    source = stage_test(PASSING + FAILING)
    stage = make_stage("hinted", source)
    hints = ("a nudge", Hint("wrong() must give 1", tests=("test_wrong",)), "the exact idea")
    fake_chapter(dataclasses.replace(stage, hints=hints))
    code, out, _ = run_cli(capsys, "ch9", "--tree", str(tree))
    assert code == 1
    assert "Hint:  wrong() must give 1" in out and "a nudge" not in out
    assert "(hint 2 of 3: python -m grader hint ch9 hinted" in out.replace("\n", " ")
    assert run_cli(capsys, "hint", "ch9", "hinted", "--tree", str(tree))[0] == 0
    out = run_cli(capsys, "ch9", "--tree", str(tree))[1]
    assert "you have read up to hint 1" in out


def test_verbose_shows_the_first_failure_once(make_stage, fake_chapter, tree, capsys):
    two = FAILING + "\n\ndef test_wrong_again():\n    assert mod.wrong() == 3, 'not 3 either'\n"
    fake_chapter(make_stage("twice", stage_test(two)))
    out = run_cli(capsys, "ch9", "-v", "--tree", str(tree))[1]
    assert out.count("wrong() should give 1, got 2") == 1
    assert "✗ test_wrong_again: failed: not 3 either" in out


def test_an_optional_stage_locks_nothing(make_stage, fake_chapter, tree, capsys):
    fake_chapter(
        make_stage("first", stage_test(PASSING)),
        make_stage("fast", stage_test(FAILING), optional=True, points=0),
        make_stage("last", stage_test(PASSING)),
    )
    code, out, _ = run_cli(capsys, "ch9", "--tree", str(tree))
    assert code == 0  # the chapter passes without its optional stage
    rows = {line.split()[1]: line.split()[-5] for line in out.splitlines() if line[:1].isdigit()}
    assert rows == {"first": "passed", "fast": "failed", "last": "passed"}
    assert "fast (optional)" in out and "Every required stage passed" in out
    assert "Score: 20 / 20 points" in out  # an optional stage is worth no points


class _ClosedAfterOneLine(io.StringIO):
    """stdout of `python -m grader ... | head -1`: the reader leaves after the first line."""

    def write(self, text: str) -> int:
        if "\n" in self.getvalue():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no file descriptor")


def test_a_closed_pipe_still_records_the_run(three_stages, tree, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedAfterOneLine())
    assert cli.main(["ch9", "--tree", str(tree)]) == 1
    state = Progress.load(str(tree))
    assert [state.status("ch9", s) for s in ("first", "second")] == ["passed", "failed"]
