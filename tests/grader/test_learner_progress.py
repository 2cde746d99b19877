"""Saved progress and `python -m grader` with no arguments: where the learner is, what to run next."""

from __future__ import annotations

import json

import pytest

from grader import progress
from grader.progress import Progress
from grader.results import StageResult
from grader.tree import REPO_ROOT

from .conftest import PASSING, run_cli, stage_test


def result(name: str, status: str) -> StageResult:
    return StageResult(chapter="ch9", name=name, title=name, status=status, points=10)


def test_state_files_live_in_the_state_dir_keyed_by_tree(_state_in_tmp, tree, tmp_path):
    """exercises -> progress.json; another tree -> a file keyed by its resolved path."""
    assert progress.state_path("exercises") == _state_in_tmp / "progress.json"
    other = progress.state_path(str(tree))
    assert other.parent == _state_in_tmp / "progress" and other.name.startswith("tree-")
    twin = tmp_path / "elsewhere" / "tree"
    twin.mkdir(parents=True)
    assert progress.state_path(str(twin)) != other  # same folder name, another path
    assert progress.state_path(str(tree / ".." / "tree")) == other  # same path, spelled otherwise


def test_default_state_dir_is_the_repositorys_git_ignored_grader_folder(monkeypatch):
    monkeypatch.delenv(progress.STATE_ENV)
    assert progress.state_dir() == REPO_ROOT / ".grader"
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert ".grader/" in ignored


def test_a_grading_run_records_each_stage_and_status_reads_it_back(three_stages, tree, capsys):
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    code, _, _ = run_cli(capsys, "ch9", "--tree", str(tree))
    assert code == 1
    state = Progress.load(str(tree))
    assert state.status("ch9", "first") == "passed"
    assert state.status("ch9", "second") == "failed"
    assert state.status("ch9", "third") == "not run"  # locked: not run this time
    assert state.entry("ch9", "second")["message"] == "wrong() should give 1, got 2"
    assert state.entry("ch9", "first")["tests_passed"] == 2
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before
    data = json.loads(state.path.read_text())
    assert data["schema"] == progress.SCHEMA and data["tree_path"] == str(tree.resolve())
    # ... and `status` reads it back: passed stages, the next one with its last message.
    code, out, _ = run_cli(capsys, "status", "--tree", str(tree))
    assert code == 0
    assert "1/3 stages passed" in out
    rows = {
        line.split()[2]: line.split()[3]
        for line in out.splitlines()
        if " ch9 " not in line and len(line.split()) > 3 and line.split()[1].isdigit()
    }
    assert rows == {"first": "passed", "second": "failed", "third": "not"}
    assert "Next: ch9 · second" in out
    assert "last run failed: wrong() should give 1, got 2" in out
    assert f"Run:   python -m grader ch9 second --tree {tree}" in out


def test_a_locked_result_keeps_the_previous_record(tree):
    state = Progress.load(str(tree))
    state.record_stage(result("b", "passed"))
    state.record_stage(result("b", "locked"))
    state.record_stage(result("a", "failed"))
    state.save()
    again = Progress.load(str(tree))
    assert (again.status("ch9", "a"), again.status("ch9", "b")) == ("failed", "passed")


BAD_SHAPES = '{"schema": "llmfs-progress/1", "stages": {"ch9": [1], "x": {"a": 3}}, "hints": 7}'


@pytest.mark.parametrize(
    "text", ["{not json", '["a list"]', '{"schema": "other/9"}', "", BAD_SHAPES]
)
def test_a_broken_state_file_is_an_empty_state(tree, text):
    path = progress.state_path(str(tree))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    state = Progress.load(str(tree))
    assert state.stages in ({}, {"x": {}}) and state.hints == {}
    assert state.status("ch9", "a") == "not run" and state.hint_level("ch9", "a") == 0
    state.record_stage(result("a", "passed"))
    state.save()  # and it is replaced by a good one
    assert Progress.load(str(tree)).passed("ch9", "a")


def test_no_arguments_before_any_run_points_at_the_first_stage(three_stages, capsys):
    code, out, err = run_cli(capsys)
    assert code == 0 and err == ""
    assert out.count("not run") == 3
    assert "0/3 stages passed" in out
    assert "Next: ch9 · first — The first stage" in out
    assert "Edit:  exercises/ch9/mod.py" in out
    assert "Hint:  hint for first" in out
    assert "Read:  docs/ch9/first.md" in out
    assert "Run:   python -m grader ch9 first\n" in out
    assert "python -m grader watch ch9" in out
    assert "python -m grader hint ch9 first" in out


def test_status_when_everything_passed(make_stage, fake_chapter, capsys):
    fake_chapter(make_stage("only", stage_test(PASSING)))
    state = Progress.load()
    state.record_stage(result("only", "passed"))
    state.save()
    code, out, _ = run_cli(capsys)
    assert code == 0 and "Every stage of every chapter passed" in out and "Next:" not in out


def test_status_of_a_missing_tree_is_a_usage_error(three_stages, capsys):
    code, out, err = run_cli(capsys, "status", "--tree", "/no/such/tree")
    assert code == 2 and out == "" and "does not exist" in err and err.count("\n") == 1
