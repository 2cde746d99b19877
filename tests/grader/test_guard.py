"""The integrity guard's reading of an ``open``: the tree reading the grader's files is flagged;
the standard library reading a stack's source lines while the tree formats a traceback (what
``torch.manual_seed`` does on every call) is not."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from grader.tree import REPO_ROOT

LEARNER = """\
import linecache, traceback
def format_the_stack(): return traceback.format_stack()  # what torch.manual_seed does
def read_through_linecache(path): return linecache.getlines(path)
def read(path): return open(path).read()
"""


def call(fn, *args):
    """A frame of tests/ on the stack under the tree's call, as a test's is."""
    return fn(*args)


def test_formatting_a_stack_is_not_reading_the_grader_files(tmp_path):
    """The reference trainer scored 0 as a copy: torch.manual_seed's traceback.format_stack read
    the calling test's source, and the guard blamed ch3/trainer.py for opening it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "learner.py").write_text(LEARNER)
    results = tmp_path / "results.jsonl"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(tree)!r})
        from grader.guard import Guard
        from tests.grader.test_guard import call, __file__ as caller
        import learner
        guard = Guard(Path({str(tree)!r}), {str(results)!r})
        sys.addaudithook(guard.audit)
        call(learner.format_the_stack)   # line 10: reads this caller's source, not flagged
        call(learner.read_through_linecache, {str(REPO_ROOT / "tests" / "helpers.py")!r})  # flagged
        call(learner.read, caller)   # flagged
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=60)
    flags = [json.loads(line) for line in results.read_text().splitlines()]
    reasons = sorted(flag["reason"] for flag in flags)
    assert reasons == [
        "learner.py:3 opens tests/helpers.py (the grader's files)",
        "learner.py:4 opens tests/grader/test_guard.py (the grader's files)",
    ], flags  # and not line 2, where the stack was formatted
