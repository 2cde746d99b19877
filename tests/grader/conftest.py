"""Small fake trees and fake stage tests, so the grader's behaviour is tested in seconds.

A fake chapter ``ch9`` has stages whose test files live in a tmp folder and whose tree is a tmp
folder laid out like ``exercises/`` (``ch9/mod.py``). The grader runs them exactly as it runs the
real stages: one pytest subprocess per stage, with ``LLMFS_TREE`` pointing at the fake tree.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from grader import cli, manifest
from grader.manifest import Chapter, Stage

# The fake tree's one module: functions in every state a learner's code can be in.
MOD = """
import os
import sys


def good():
    return 1


def wrong():
    return 2


def stub():
    # TODO: write this part yourself.
    raise NotImplementedError("ch9 stage 'fake' not started: implement stub in ch9/mod.py")


def typo(x):
    return x + undefined_name


def index():
    return [1][3]


def loop():
    while True:
        pass


def stubborn_loop():
    while True:
        try:
            pass
        except BaseException:  # swallows pytest-timeout's exception too
            pass


def leave():
    sys.exit(3)


def vanish():
    os._exit(0)


def segfault():
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def make_tree(root: Path) -> Path:
    """A fake tree at ``root``: ``ch9/mod.py`` (MOD) and the package ``__init__.py`` files."""
    write(root / "__init__.py", "")
    write(root / "ch9" / "__init__.py", "")
    write(root / "ch9" / "mod.py", MOD)
    return root


def make_stage_at(folder: Path, name: str, source: str, **kwargs) -> Stage:
    """A Stage named ``name`` whose test file ``folder/test_<name>.py`` holds ``source``."""
    path = write(folder / f"test_{name}.py", source)
    options = {"test_timeout": 20.0, "time_limit": 60.0, "points": 10} | kwargs
    return Stage(
        name=name,
        title=f"The {name} stage",
        tests=str(path),
        files=("ch9/mod.py",),
        doc=f"docs/ch9/{name}.md",
        hints=(f"hint for {name}", "a second hint"),
        **options,
    )


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path: Path, monkeypatch) -> Path:
    """Progress, hints and backups go to a tmp folder, never the repository's .grader/."""
    folder = tmp_path / "grader_state"
    monkeypatch.setenv("GRADER_STATE_DIR", str(folder))
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


def stage_test(body: str) -> str:
    """A stage test file that imports the fake module the way real stage tests do."""
    return "from grader.tree import load\n\nmod = load('ch9.mod')\n\n" + textwrap.dedent(body)


@pytest.fixture
def make_stage(tmp_path: Path) -> Callable[..., Stage]:
    """``make_stage(name, test_source, **limits)``: a Stage whose tests are ``test_source``."""

    def make(name: str, source: str, **kwargs) -> Stage:
        return make_stage_at(tmp_path / "stage_tests", name, source, **kwargs)

    return make


PASSING = """
def test_good():
    '''good() returns 1.'''
    assert mod.good() == 1


def test_good_again():
    assert mod.good() + 1 == 2
"""

NOT_STARTED = """
def test_stub():
    mod.stub()
"""

FAILING = "\ndef test_wrong():\n    assert mod.wrong() == 1, 'wrong() should give 1, got 2'\n"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m grader ARGV`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake_chapter(make_stage, monkeypatch) -> Callable[..., Chapter]:
    """``fake_chapter(stage, ...)``: a chapter ch9 installed as the manifest's only chapter."""

    def install(*stages: Stage) -> Chapter:
        chapter = Chapter(name="ch9", title="The fake chapter", stages=tuple(stages))
        monkeypatch.setattr(manifest, "CHAPTERS", {"ch9": chapter})
        return chapter

    return install


@pytest.fixture
def three_stages(make_stage, fake_chapter) -> Chapter:
    """ch9: first passes (10 points), second fails (10), third is not started (20)."""
    return fake_chapter(
        make_stage("first", stage_test(PASSING), points=10),
        make_stage("second", stage_test(FAILING), points=10),
        make_stage("third", stage_test(NOT_STARTED), points=20),
    )
