"""Saved state and reports under stress: concurrent saves, trees elsewhere, hostile values.

Two processes saving progress at once keep every record (a lock file, then a merge with what is
on disk); progress for a tree outside the checkout is never written into the checkout; a state
file with values of the wrong type or control characters is read without a traceback; and a
JUnit report stays well-formed XML whatever characters the learner's messages hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from grader import manifest, progress
from grader.instructor import formats
from grader.runner import REPO_ROOT, ChapterResult, StageResult, TestResult

from .conftest import run_cli

SAVER = """
import sys
from grader.progress import Progress

tree, tag = sys.argv[1], sys.argv[2]
state = Progress.load(tree)
for i in range(300):
    state.set_hint_level("ch9", f"{tag}-{i}", 1)
    state.save()
"""


def test_two_processes_saving_at_once_lose_nothing(tree, _state_in_tmp):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    savers = [
        subprocess.Popen([sys.executable, "-c", SAVER, str(tree), tag], env=env)
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in savers] == [0, 0]
    hints = progress.Progress.load(str(tree)).hints["ch9"]
    assert len(hints) == 600


def test_a_save_keeps_what_another_process_saved_meanwhile(tree):
    mine = progress.Progress.load(str(tree))
    theirs = progress.Progress.load(str(tree))
    theirs.set_hint_level("ch9", "first", 2)
    theirs.save()
    mine.set_hint_level("ch9", "second", 1)
    mine.save()
    assert progress.Progress.load(str(tree)).hints == {"ch9": {"first": 2, "second": 1}}


def test_progress_of_a_tree_outside_the_checkout_stays_out_of_it(tree, tmp_path, monkeypatch):
    monkeypatch.delenv(progress.STATE_ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = progress.state_path(str(tree))
    assert path.is_relative_to(tmp_path / "state") and not path.is_relative_to(REPO_ROOT)
    assert progress.state_path("solutions").is_relative_to(REPO_ROOT / ".grader")


def test_hostile_values_in_the_state_file_are_dropped_or_escaped(_state_in_tmp, capsys):
    first = manifest.CHAPTERS["ch2"].stages[0].name
    record = {"status": "failed", "message": ["not", "text"], "at": "\x1b[2J2024", "score": "x"}
    hostile = {
        "schema": progress.SCHEMA,
        "stages": {"ch2": {first: record, "block": {"status": {"no": 1}}}},
        "hints": {"ch2": {first: "3"}},
    }
    _state_in_tmp.mkdir(parents=True, exist_ok=True)
    (_state_in_tmp / "progress.json").write_text(json.dumps(hostile))
    state = progress.Progress.load("exercises")
    assert state.entry("ch2", first) == {"status": "failed", "at": "\\x1b[2J2024"}
    assert state.entry("ch2", "block") == {} and state.hint_level("ch2", first) == 0
    code, out, err = run_cli(capsys, "status")
    assert code == 0 and err == "" and "\x1b[2J" not in out


def test_junit_is_well_formed_whatever_the_messages_hold(tmp_path):
    nasty = "got \x00\x1b[31mred\x08\x0c \ud800 \ufffe"
    test = TestResult("t::a", "a\x01", "failed", nasty)
    stage = StageResult("ch9", "s", "S", "failed", 10, (test,), message=nasty, flags=(nasty,))
    result = ChapterResult("ch9", "Fake", "x", "/x", (stage,))
    path = formats.write_junit(result, tmp_path / "junit.xml", name="mallory\x07")
    root = ET.parse(path).getroot()
    assert root.get("name") == "mallory\\x07"
    failure = root.find("testsuite/testcase/failure")
    assert failure.get("message") == "got \\x00\\x1b[31mred\\x08\\x0c \\ud800 \\ufffe"
