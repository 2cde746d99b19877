"""`hint`, `reset` and `solution` on a fake chapter whose reference lives in a tmp solutions folder."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from grader import progress, stubs
from grader.progress import Progress
from grader.results import StageResult
from grader.tree import REPO_ROOT

from .conftest import PASSING, run_cli, stage_test, write

# The reference of the fake tree's ch9/mod.py, with the markers the stub generator reads.
REFERENCE = '''
def good():
    """Return 1."""
    # BEGIN SOLUTION
    return 1
    # END SOLUTION


def wrong():
    """Return 1 as well."""
    # BEGIN SOLUTION
    return 1
    # STUB
    # return None
    # END SOLUTION
'''


@pytest.fixture
def chapter(make_stage, fake_chapter, tmp_path, monkeypatch):
    """ch9 with one stage `first` (files: ch9/mod.py) and its reference in a tmp solutions/."""
    solutions = tmp_path / "solutions"
    write(solutions / "ch9" / "mod.py", REFERENCE)
    monkeypatch.setattr(stubs, "SOLUTIONS", solutions)
    return fake_chapter(make_stage("first", stage_test(PASSING)), make_stage("second", "x = 1"))


def mark(tree: Path | str, name: str, status: str) -> None:
    state = Progress.load(str(tree))
    state.record_stage(StageResult(chapter="ch9", name=name, title=name, status=status, points=10))
    state.save()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- hint -----------------------------------------------------------------------------------


def test_hints_go_one_level_per_call_and_then_point_to_the_doc(chapter, capsys):
    code, out, _ = run_cli(capsys, "hint", "ch9", "first")
    assert code == 0 and "hint 1 of 2" in out and "hint for first" in out
    assert "a second hint" not in out
    assert "python -m grader hint ch9 first" in out  # how to get the next one
    _, out, _ = run_cli(capsys, "hint", "ch9", "first")
    assert "hint 2 of 2" in out and "hint for first" in out and "a second hint" in out
    assert "last hint" in out
    _, out, _ = run_cli(capsys, "hint", "ch9", "first")
    assert "No more hints for ch9 · first" in out and "docs/ch9/first.md" in out
    assert "python -m grader solution ch9 first" in out
    assert Progress.load().hint_level("ch9", "first") == 2


def test_hint_level_and_reset(chapter, capsys):
    _, out, _ = run_cli(capsys, "hint", "ch9", "first", "--level", "2")
    assert "hint 2 of 2" in out
    assert Progress.load().hint_level("ch9", "first") == 2
    _, out, _ = run_cli(capsys, "hint", "ch9", "first", "--reset")
    assert "start over" in out and Progress.load().hint_level("ch9", "first") == 0
    _, out, _ = run_cli(capsys, "hint", "ch9", "first")
    assert "hint 1 of 2" in out
    code, _, err = run_cli(capsys, "hint", "ch9", "first", "--level", "3")
    assert code == 2 and "hint levels 1 to 2, not 3" in err and err.count("\n") == 1


def test_hint_without_a_stage_is_for_the_current_stage_of_each_tree(chapter, tree, capsys):
    mark(tree, "first", "passed")
    _, out, _ = run_cli(capsys, "hint", "ch9", "--tree", str(tree))
    assert "ch9 · second: hint 1 of 2" in out
    _, out, _ = run_cli(capsys, "hint", "ch9")  # exercises has its own state: still at `first`
    assert "ch9 · first: hint 1 of 2" in out
    assert Progress.load(str(tree)).hint_level("ch9", "second") == 1


# -- reset ----------------------------------------------------------------------------------


def test_reset_with_yes_restores_the_stub_and_keeps_a_backup(chapter, tree, capsys):
    mine = (tree / "ch9" / "mod.py").read_text()
    mark(tree, "first", "passed")
    code, out, _ = run_cli(capsys, "reset", "ch9", "first", "--tree", str(tree), "--yes")
    assert code == 0
    assert (tree / "ch9" / "mod.py").read_text() == stubs.make_stub(
        textwrap.dedent(REFERENCE).lstrip("\n"), "ch9/mod.py"
    )
    backups = list((progress.state_dir() / "backups").rglob("mod.py"))
    assert len(backups) == 1 and backups[0].read_text() == mine
    assert backups[0].parent.name == "ch9" and str(backups[0].parent.parent) in out.replace(
        "\n", ""
    )
    assert Progress.load(str(tree)).status("ch9", "first") == "not run"  # no longer true
    code, out, _ = run_cli(capsys, "reset", "ch9", "first", "--tree", str(tree), "--yes")
    assert code == 0 and "already the pristine stub" in out
    assert len(list((progress.state_dir() / "backups").rglob("mod.py"))) == 1


def test_reset_asks_and_does_nothing_unless_the_answer_is_yes(chapter, tree, capsys, monkeypatch):
    mine = (tree / "ch9" / "mod.py").read_text()
    monkeypatch.setattr("sys.stdin", FakeTerminal("n\n"))
    code, out, _ = run_cli(capsys, "reset", "ch9", "first", "--tree", str(tree))
    assert code == 1 and "[y/N]" in out and "Nothing changed." in out
    assert (tree / "ch9" / "mod.py").read_text() == mine
    monkeypatch.setattr("sys.stdin", FakeTerminal("y\n"))
    code, out, _ = run_cli(capsys, "reset", "ch9", "first", "--tree", str(tree))
    assert code == 0 and "raise NotImplementedError" in (tree / "ch9" / "mod.py").read_text()


def test_reset_without_a_terminal_or_yes_refuses_in_one_line(chapter, tree, capsys, monkeypatch):
    mine = (tree / "ch9" / "mod.py").read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # piped, not a terminal
    code, out, err = run_cli(capsys, "reset", "ch9", "first", "--tree", str(tree))
    assert code == 2 and out == "" and err.count("\n") == 1 and "--yes" in err
    assert (tree / "ch9" / "mod.py").read_text() == mine


def test_reset_refuses_the_solutions_tree(chapter, capsys):
    code, out, err = run_cli(capsys, "reset", "ch9", "first", "--tree", "solutions", "--yes")
    assert code == 2 and out == "" and "reference" in err and err.count("\n") == 1


def test_reset_a_real_stage_gives_the_committed_stub(tmp_path, capsys):
    """On the real course: the restored file is exactly what `python -m grader.stubs` makes."""
    copy = tmp_path / "copy"
    write(copy / "ch2" / "attention.py", "# my attempt\n")
    code, _, _ = run_cli(capsys, "reset", "ch2", "attention", "--tree", str(copy), "--yes")
    assert code == 0
    assert (copy / "ch2" / "attention.py").read_text() == stubs.stub_text("ch2/attention.py")


# -- solution -------------------------------------------------------------------------------


def test_solution_refuses_before_the_stage_passes(chapter, tree, capsys):
    code, out, err = run_cli(capsys, "solution", "ch9", "first", "--tree", str(tree))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "once the stage passes (it has not been run yet)" in err
    mark(tree, "first", "failed")
    code, _, err = run_cli(capsys, "solution", "ch9", "first", "--tree", str(tree))
    assert code == 2 and "its last run: failed" in err
    assert f"python -m grader ch9 first --tree {tree}" in err


def test_solution_after_a_pass_is_a_diff_against_the_reference_without_markers(
    chapter, tree, capsys
):
    mark(tree, "first", "passed")
    code, out, _ = run_cli(capsys, "solution", "ch9", "first", "--tree", str(tree))
    assert code == 0
    assert "--- yours/ch9/mod.py" in out and "+++ reference/ch9/mod.py" in out
    assert '+    """Return 1."""' in out
    assert "-    return 2" in out  # the learner's wrong()
    assert "SOLUTION" not in out and "STUB" not in out and "return None" not in out


def test_solution_rerun_grades_the_stage_first(chapter, tree, capsys):
    code, out, _ = run_cli(capsys, "solution", "ch9", "first", "--tree", str(tree), "--rerun")
    assert code == 0 and "passed" in out and "+++ reference/ch9/mod.py" in out
    assert Progress.load(str(tree)).passed("ch9", "first")


def test_reference_text_of_every_real_file_is_clean_python():
    for path in sorted((REPO_ROOT / "solutions").rglob("*.py")):
        rel = path.relative_to(REPO_ROOT / "solutions").as_posix()
        text = stubs.reference_text(rel)
        assert "# BEGIN SOLUTION" not in text and "# END SOLUTION" not in text, rel
        compile(text, rel, "exec")
