"""SIGINT and SIGTERM to the grader: every stage process stops, and what was finished is kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader.tree import REPO_ROOT

from .conftest import MOD, make_tree, write

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals, /proc")

# The stage never returns for a tree whose module says HANG = True.
STAGE = """
import time

from grader.tree import load

mod = load("ch9.mod")


def test_value():
    while getattr(mod, "HANG", False):
        time.sleep(0.1)
"""

# Builds a one-stage chapter ch9 from a test file and runs the command line on it.
DRIVER = """
import json, sys
from grader import cli, manifest
from grader.manifest import Chapter, Stage

config = json.loads(sys.argv[1])
stage = Stage("hang", "Hang", config["tests"], ("ch9/mod.py",), "docs/x.md", ("hint",),
              test_timeout=120, time_limit=120)
manifest.CHAPTERS = {"ch9": Chapter("ch9", "interrupted", (stage,))}
sys.exit(cli.main(config["argv"]))
"""


def _start(tmp_path: Path, tests: Path, argv: list[str]) -> subprocess.Popen[str]:
    env = os.environ | {"GRADER_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps({"tests": str(tests), "argv": argv})],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stage_pids(tests: Path) -> set[int]:
    """The processes running the stage's tests (seen from here, sandboxed or not)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"pytest" in command and str(tests).encode() in command:
                pids.add(int(entry.name))
    return pids


def _wait(condition, what: str, seconds: float = 120.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"waited {seconds:g} s for {what}"
        time.sleep(0.1)


def _all_gone(pids: set[int], seconds: float = 15.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_grade_stops_its_stage_processes(tmp_path, signum):
    tests = write(tmp_path / "tests" / "test_hang.py", STAGE)
    tree = make_tree(tmp_path / "tree")
    write(tree / "ch9" / "mod.py", MOD + "\nHANG = True\n")
    proc = _start(tmp_path, tests, ["ch9", "--tree", str(tree)])
    pids: set[int] = set()

    def running() -> bool:
        pids.update(_stage_pids(tests))
        return bool(pids)

    _wait(running, "the stage's pytest process")
    time.sleep(1.0)  # let it reach the test
    pids.update(_stage_pids(tests))
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert _all_gone(pids), f"stage processes outlived the grader: {pids}"


def test_an_interrupted_batch_keeps_the_finished_learners(tmp_path):
    """alice (graded first) is in gradebook-partial.csv with her reports; bob, whose stage was
    still running, is not; there is no gradebook.csv; no stage process is left."""
    tests = write(tmp_path / "tests" / "test_hang.py", STAGE)
    submissions = tmp_path / "class"
    make_tree(submissions / "alice")
    write(make_tree(submissions / "bob") / "ch9" / "mod.py", MOD + "\nHANG = True\n")
    out_dir = tmp_path / "grades"
    argv = ["batch", "ch9", str(submissions), "--jobs", "1", "--out", str(out_dir), "--unsafe"]
    proc = _start(tmp_path, tests, argv)
    seen = []
    for line in proc.stdout:  # bounded by the test's own timeout
        seen.append(line)
        if "[1/2] alice" in line:
            break
    assert any("[1/2] alice" in line for line in seen), "".join(seen)
    pids: set[int] = set()

    def running() -> bool:
        pids.update(_stage_pids(tests))
        return bool(pids)

    _wait(running, "bob's stage process")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "Interrupted: 1 of 2 learner(s) graded" in out
    rows = (out_dir / "gradebook-partial.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["learner", "alice"], rows
    assert (out_dir / "alice" / "report.json").exists()
    assert not (out_dir / "bob").exists() and not (out_dir / "gradebook.csv").exists()
    assert _all_gone(pids), f"stage processes outlived the batch: {pids}"
