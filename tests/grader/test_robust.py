"""A class of broken submissions, graded in one batch: each gets its status and one line, the rest
of the class is still graded, and nothing in any submission folder changes."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from grader.instructor import batch
from grader.manifest import Chapter

from .conftest import make_stage_at, write

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX limits and signals")

STAGE_TESTS = """
from grader.tree import load

mod = load("ch9.mod")


def test_value():
    '''value() doubles to 2.'''
    assert mod.value() * 2 == 2, "value() should be 1"


def test_other():
    assert mod.other() == "ok"
"""

OTHER = '\n\ndef other():\n    return "ok"\n'

# learner -> (ch9/mod.py text, or None for no file, or bytes; expected status; words in message)
CLASS = {
    "good": ("def value():\n    return 1\n" + OTHER, "passed", ""),
    "loop": ("def value():\n    while True:\n        pass\n" + OTHER, "timed out", "time limit"),
    "sys_exit": ("import sys\n\ndef value():\n    sys.exit(4)\n" + OTHER, "crashed", "sys.exit(4)"),
    "os_exit": ("import os\n\ndef value():\n    os._exit(0)\n" + OTHER, "crashed", "os._exit(0)"),
    "segfault": (
        "import os, signal\n\ndef value():\n    os.kill(os.getpid(), signal.SIGSEGV)\n" + OTHER,
        "crashed",
        "SIGSEGV",
    ),
    "syntax": ("def value(:\n    return 1\n" + OTHER, "error", "ch9/mod.py:1: SyntaxError"),
    "import_error": ("import no_such_module_xyz\n" + OTHER, "error", "no_such_module_xyz"),
    "returns_none": (
        "def value():\n    pass  # forgot the return\n" + OTHER,
        "failed",
        "got None where a value was expected",
    ),
    "prints_100mb": (
        "import sys\n\ndef value():\n    for _ in range(100):\n"
        "        sys.stdout.write('x' * 1_000_000)\n    return 1\n" + OTHER,
        "crashed",
        "wrote more output than the grader allows",
    ),
    "memory_hog": (
        "def value():\n    block = bytearray(40 * 2**30)\n    return 1\n" + OTHER,
        "crashed",
        "ran out of memory",
    ),
    "missing_file": (None, "error", "ch9/mod.py is missing from your tree"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff", "error", "ch9/mod.py is not"),
}


def make_submission(root: Path, learner: str, source) -> Path:
    tree = root / learner
    write(tree / "__init__.py", "")
    write(tree / "ch9" / "__init__.py", "")
    if isinstance(source, bytes):
        (tree / "ch9" / "mod.py").write_bytes(source)
    elif source is not None:
        write(tree / "ch9" / "mod.py", source)
    return tree


def fingerprint(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``folder`` with its size, mtime and content hash."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns, digest)
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("robust")
    subs = base / "submissions"
    for learner, (source, _, _) in CLASS.items():
        make_submission(subs, learner, source)
    before = fingerprint(subs)
    stage = make_stage_at(base / "stage", "fake", STAGE_TESTS, test_timeout=2.0, time_limit=30.0)
    chapter = Chapter("ch9", "Fake", (stage,))
    options = batch.Options(jobs=2, time_limit=60.0)
    results = batch.grade_all(chapter, batch.find_submissions(subs, chapter), options)
    return {g.learner: g.result.stages[0] for g in results}, before, fingerprint(subs)


@pytest.mark.parametrize("learner", list(CLASS))
def test_each_broken_submission_gets_its_status_and_one_line(graded, learner):
    stage = graded[0][learner]
    _, status, words = CLASS[learner]
    assert stage.status == status, (learner, stage.status, stage.message)
    assert words in stage.message
    assert "\n" not in stage.message and "Traceback" not in stage.message
    assert stage.flags == ()


def test_the_rest_of_the_class_is_still_graded(graded):
    stages = graded[0]
    assert set(stages) == set(CLASS)
    assert stages["good"].score == 10.0
    # a broken value() still leaves other() graded where the process survived; a test that
    # times out ends its stage at once, so the tests after it are not run (and not passed)
    assert stages["returns_none"].score == 5.0 and stages["loop"].score == 0.0
    assert [t.status for t in stages["loop"].tests] == ["timed out", "not run"]


def test_nothing_in_the_submissions_changes(graded):
    _, before, after = graded
    assert after == before
    assert not any("__pycache__" in path for path in after)


def test_memory_limit_is_applied_in_the_stage_process(tmp_path):
    """A limit below what the stage needs shows up as 'ran out of memory', not a dead grader."""
    make_submission(
        tmp_path / "subs",
        "hog",
        "def value():\n    block = bytearray(600 * 2**20)\n    return 1\n" + OTHER,
    )
    stage = make_stage_at(tmp_path / "stage", "fake", STAGE_TESTS, test_timeout=5.0)
    chapter = Chapter("ch9", "Fake", (stage,))
    subs = batch.find_submissions(tmp_path / "subs", chapter)
    capped = batch.grade_all(chapter, subs, batch.Options(jobs=1, memory_mb=400))
    assert capped[0].result.stages[0].tests[0].message.startswith("ran out of memory")
    free = batch.grade_all(chapter, subs, batch.Options(jobs=1, memory_mb=None))
    assert free[0].result.stages[0].status == "passed"
    assert os.environ.get("GRADER_HIDDEN") in (None, "", "0")
