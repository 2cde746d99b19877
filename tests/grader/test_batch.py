"""`python -m grader batch`: a folder of learners' copies in, a gradebook and reports out."""

from __future__ import annotations

import csv
import json
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from grader import cli, manifest, sandbox
from grader.instructor import batch
from grader.statuses import FAILED
from grader.tree import REPO_ROOT

from .conftest import FAILING, NOT_STARTED, PASSING, stage_test
from .conftest import MOD as GOOD_MOD
from .test_robust import fingerprint, make_submission


@pytest.fixture
def chapter(make_stage, fake_chapter):
    """ch9: first passes, second fails, third is not started (for the fake tree's mod.py)."""
    return fake_chapter(
        make_stage("first", stage_test(PASSING), points=10),
        make_stage("second", stage_test(FAILING), points=10),
        make_stage("third", stage_test(NOT_STARTED), points=20),
    )


@pytest.fixture
def submissions(tmp_path):
    subs = tmp_path / "subs"
    make_submission(subs, "alice", GOOD_MOD)
    nested = make_submission(subs / "bob", "exercises", GOOD_MOD)  # handed in the whole folder
    (nested / "ch9" / "notes.txt").write_text("my notes")
    (subs / "carol").mkdir(parents=True)  # nothing in it
    (subs / "README.txt").write_text("not a learner")
    (subs / ".git").mkdir()
    return subs


def run_batch(capsys, *argv) -> tuple[int, str, str]:
    # Where the OS sandbox cannot start (macOS, some containers), grade with the guard alone.
    unsafe = () if sandbox.availability()[0] else ("--unsafe",)
    code = cli.main(["batch", *argv, *unsafe])
    out, err = capsys.readouterr()
    return code, out, err


def test_batch_writes_gradebook_and_reports(chapter, submissions, tmp_path, capsys):
    before = fingerprint(submissions)
    out_dir = tmp_path / "grades"
    code, out, err = run_batch(
        capsys, "ch9", str(submissions), "--jobs", "2", "--out", str(out_dir)
    )
    assert code == 0 and err == ""
    assert "Grading 3 submission(s) of ch9, 2 at a time" in out
    rows = list(csv.reader((out_dir / "gradebook.csv").open()))
    assert rows[0] == [
        "learner",
        "first",
        "second",
        "third",
        "total",
        "max_score",
        "flags",
        "first_problem",
    ]
    book = {row[0]: row for row in rows[1:]}
    assert list(book) == ["alice", "bob", "carol"]
    # --all semantics: every stage is graded, nothing is locked
    assert book["alice"][1:6] == ["10", "0", "0", "10", "40"]
    assert book["bob"][1:6] == book["alice"][1:6]
    assert book["alice"][7].startswith("second: failed: wrong() should give 1, got 2")
    assert book["carol"][1:5] == ["0", "0", "0", "0"]
    assert "no ch9/ folder in this submission" in book["carol"][7]

    for learner in ("alice", "bob", "carol"):
        data = json.loads((out_dir / learner / "report.json").read_text())
        assert data["learner"] == learner and data["integrity"] == []
        assert [s["status"] for s in data["stages"]][:1] != ["locked"]
        ET.parse(out_dir / learner / "junit.xml")
        assert "tests" in json.loads((out_dir / learner / "results.json").read_text())
    statuses = [
        s["status"] for s in json.loads((out_dir / "alice" / "report.json").read_text())["stages"]
    ]
    assert statuses == ["passed", "failed", "not started"]
    assert fingerprint(submissions) == before  # nothing in the submissions changed


def test_grading_is_deterministic(chapter, submissions, tmp_path, capsys):
    books = []
    for attempt in range(2):
        out_dir = tmp_path / f"grades{attempt}"
        assert run_batch(capsys, "ch9", str(submissions), "--out", str(out_dir))[0] == 0
        books.append((out_dir / "gradebook.csv").read_text())
    assert books[0] == books[1]


def test_submission_time_limit_covers_every_stage(make_stage, fake_chapter, tmp_path):
    """A loop at import time is stopped, and the stages after it are not run past the limit."""
    chapter = fake_chapter(
        make_stage("first", stage_test(PASSING), time_limit=60.0),
        make_stage("second", stage_test(PASSING), time_limit=60.0),
    )
    make_submission(tmp_path / "subs", "looper", "while True:\n    pass\n")
    subs = batch.find_submissions(tmp_path / "subs", chapter)
    graded = batch.grade_all(chapter, subs, batch.Options(jobs=1, time_limit=3.0))
    first, second = graded[0].result.stages
    assert first.status == "timed out" and "while loading your code" in first.message
    assert second.status == "timed out" and "used up its time limit of 3 s" in second.message
    assert graded[0].result.seconds < 30


def test_the_next_submission_is_made_ready_while_one_is_graded(chapter, tmp_path, monkeypatch):
    """With --jobs 1, the next submission's server starts while the one before it is graded, and
    no two submissions' stages ever run at once; a submission's time counts from its turn."""
    events: dict[tuple[str, str], float] = {}

    def learner(tree: Path) -> str:
        return (tree / "ch9" / "who.txt").read_text()

    class Server:  # a stand-in for SubmissionServer, whose start takes 0.05 s
        def __init__(self, tree: Path) -> None:
            self.tree = tree

        def ensure(self) -> bool:
            time.sleep(0.05)
            events["ready", learner(self.tree)] = time.monotonic()
            return True

        def close(self) -> None:
            pass

    def grade_stages(chapter, stages, copy, *args):
        events["start", learner(copy)] = time.monotonic()
        time.sleep(0.6)  # long next to a start, so that a loaded machine keeps the order
        events["end", learner(copy)] = time.monotonic()
        return [batch.unrun(chapter, stage, FAILED, "a stand-in") for stage in stages]

    names = ("ann", "ben", "cid")
    for name in names:
        (make_submission(tmp_path / "subs", name, GOOD_MOD) / "ch9" / "who.txt").write_text(name)
    monkeypatch.setattr(batch, "server_for", lambda scratch, tree, *args: Server(tree))
    monkeypatch.setattr(batch, "_grade_stages", grade_stages)
    subs = batch.find_submissions(tmp_path / "subs", chapter)
    graded = batch.grade_all(chapter, subs, batch.Options(jobs=1, verdicts=False))
    order = sorted(names, key=lambda name: events["start", name])  # whoever was ready first
    for before, after in zip(order, order[1:], strict=False):
        assert events["end", before] <= events["start", after]  # one at a time
        assert events["ready", after] < events["end", before]  # made ready meanwhile
    assert all(g.result.seconds < 1.0 for g in graded)  # its 0.6 s of stages, not the waiting


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["ch9", "/no/such/folder"], "is not a folder"),
        (["ch9", "SUBS", "--jobs", "0"], "--jobs must be at least 1"),
        (["ch9", "SUBS", "--out", "SUBS/grades"], "--out must not be inside"),
        (["ch9", "SUBS", "--stage", "nope"], "chapter ch9 has no stage 'nope'"),
        (["ch7", "SUBS"], "unknown chapter 'ch7'"),
    ],
)
def test_batch_usage_errors(chapter, submissions, capsys, argv, words):
    argv = [a.replace("SUBS", str(submissions)) for a in argv]
    code, out, err = run_batch(capsys, *argv)
    assert code == 2 and words in err and err.count("\n") == 1


def test_batch_grades_real_copies_of_the_exercises(tmp_path, capsys, monkeypatch):
    """Two learners of the real chapter 3: untouched stubs, and a copy of the reference handed in
    inside an exercises/ folder (the guard and the limits leave correct code alone)."""
    monkeypatch.setattr(manifest, "CHAPTERS", dict(manifest.CHAPTERS))
    subs = tmp_path / "subs"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "exercises", subs / "stub", ignore=ignore)
    shutil.copytree(REPO_ROOT / "solutions", subs / "ref" / "exercises", ignore=ignore)
    before = fingerprint(subs)
    out_dir = tmp_path / "grades"
    argv = ["ch3", str(subs), "--jobs", "2", "--out", str(out_dir), "--stage", "sampling"]
    code, out, _ = run_batch(capsys, *argv)
    assert code == 0
    rows = {row[0]: row for row in csv.reader((out_dir / "gradebook.csv").open())}
    assert rows["learner"] == [
        "learner",
        "sampling",
        "total",
        "max_score",
        "flags",
        "first_problem",
    ]
    assert rows["stub"][1:5] == ["0", "0", "10", ""]
    assert "sampling: not started: ch3 stage 'sampling' not started" in rows["stub"][5]
    assert rows["ref"][1:6] == ["10", "10", "10", "", ""]
    assert fingerprint(subs) == before
