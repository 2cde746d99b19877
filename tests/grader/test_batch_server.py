"""A batch on each submission's own stage server (grader/server.py's SubmissionServer) grades
exactly as fresh processes do, and no stage reaches a later one through the server.

One class is graded on the servers and again with fresh processes (``Options(server=False)``, what
``GRADER_SERVER=0`` gives): a reference copy, a stub copy and a hostile copy, whose ``plant()``
tries what a stage sharing a server with the next one could: leave files in ``/tmp``, ``HOME``,
``/dev/shm`` and ``/dev``, and a process running in a new session; the next stage's ``look()``
says what it still finds, including any socket file it could reach the server through. Two more
learners are graded on servers only: one tries to write the memory of its handler and of its
server (``/proc/PID/mem``), then kills them; one swaps its results file and its log for links
(the grader must read what the stage wrote, never the link's target).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from grader import sandbox, server
from grader.instructor import batch
from grader.manifest import Chapter
from grader.statuses import NOT_STARTED, PASSED

from .conftest import make_stage_at, stage_test, write
from .test_robust import make_submission

pytestmark = pytest.mark.skipif(
    not (sandbox.availability()[0] and hasattr(os, "fork")),
    reason="a batch's stage server needs fork and the OS sandbox",
)
MARKER = f"llmfs-batch-straggler-{uuid.uuid4().hex[:8]}"
# (The working folder is read-only in a batch's sandbox, fresh or on a server.)
PLACES = '("/tmp/planted", os.path.expanduser("~/planted"), "/dev/shm/planted", "/dev/planted")'

REFERENCE = f"""
import os


def good():
    return 1


def plant():
    return 2


def look():
    return [p for p in {PLACES} if os.path.exists(p)]
"""

STUB = """
def good():
    raise NotImplementedError("ch9 stage 'first' not started")


def plant():
    raise NotImplementedError("ch9 stage 'plant' not started")


def look():
    raise NotImplementedError("ch9 stage 'look' not started")
"""

HOSTILE = f"""
import os, stat, subprocess, sys


def good():
    return 1


def plant():
    '''Files everywhere it may write, and a process in a new session.'''
    for path in {PLACES}:
        with open(path, "w") as f:
            f.write("planted")
    subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "{MARKER}"], start_new_session=True
    )
    return 2


def look():
    left = [p for p in {PLACES} if os.path.exists(p)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                if b"{MARKER}" in f.read():
                    left.append("process " + pid)
        except OSError:
            pass
    for folder, _, files in os.walk("/tmp"):
        left += [f for f in files if stat.S_ISSOCK(os.lstat(os.path.join(folder, f)).st_mode)]
    return left
"""

KILLER = """
import os, signal


def good():
    return 1


def _parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def plant():
    # Write the memory of every process above it (its handler, its server: process 1 of the
    # sandbox), then kill them both.
    above, pid = [], os.getppid()
    while pid > 0:
        above.append(pid)
        pid = _parent(pid)
    for pid in above:
        try:
            open(f"/proc/{pid}/mem", "r+b").close()
            return f"could write the memory of process {pid}"
        except OSError:
            pass
    os.kill(1, signal.SIGKILL)  # the server: process 1 of the sandbox ignores it
    os.kill(above[0], signal.SIGKILL)  # the handler
    return 2


def look():
    return []
"""

SWAPPER = """
import os


def good():
    return 1


def plant():
    '''The results file becomes a link to nothing, the log a link to the grader's secret.'''
    results = os.environ["GRADER_RESULTS"]
    log = os.path.join(os.path.dirname(results), "pytest.log")
    os.unlink(results)
    os.symlink("/dev/null", results)
    os.unlink(log)
    os.symlink({secret!r}, log)
    os._exit(3)


def look():
    return []
"""

TESTS = {
    "first": "def test_good():\n    assert mod.good() == 1\n",
    "plant": "def test_plant():\n    assert mod.plant() == 2\n",
    "look": "def test_look():\n    assert mod.look() == []\n",
}


def _children() -> list[int]:
    """Processes whose parent is this one: what a batch could leave behind."""
    mine = str(os.getpid())
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == mine:
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _with_marker() -> list[str]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if MARKER.encode() in f.read():
                    found.append(entry)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("batch_server")
    secret = write(base / "secret.txt", "SECRET-of-the-grader\n")
    stages = tuple(
        make_stage_at(base / "stage_tests", name, stage_test(body), time_limit=60.0)
        for name, body in TESTS.items()
    )
    chapter = Chapter("ch9", "Fake", stages)
    for learner, source in (("ref", REFERENCE), ("stub", STUB), ("hostile", HOSTILE)):
        make_submission(base / "class", learner, source)
    make_submission(base / "broken", "killer", KILLER)
    make_submission(base / "broken", "swapper", SWAPPER.format(secret=str(secret)))

    pids: list[int] = []
    starts: list[server.SubmissionServer] = []
    original = server.SubmissionServer._start

    def spy(self):
        ok = original(self)
        if self._proc is not None:
            pids.append(self._proc.pid)
        starts.append(self)
        return ok

    patch = pytest.MonkeyPatch()
    patch.setenv("GRADER_SERVER", "1")  # the suite's default is 0 (tests/conftest.py)
    patch.setattr(server.SubmissionServer, "_start", spy)
    try:
        by_mode = {}
        for mode, on in (("server", True), ("fresh", False)):
            options = batch.Options(jobs=2, time_limit=120.0, server=on)
            found = batch.find_submissions(base / "class", chapter)
            by_mode[mode] = {g.learner: g.result for g in batch.grade_all(chapter, found, options)}
        found = batch.find_submissions(base / "broken", chapter)
        options = batch.Options(jobs=2, time_limit=120.0)
        broken = {g.learner: g.result for g in batch.grade_all(chapter, found, options)}
    finally:
        patch.undo()
    return {
        "modes": by_mode,
        "broken": broken,
        "pids": pids,
        "servers": starts,
        "children": _children(),
        "stragglers": _with_marker(),
    }


def _summary(result):
    return [
        (s.name, s.status, s.score, s.message, [(t.name, t.status) for t in s.tests])
        for s in result.stages
    ]


def test_results_on_the_server_equal_those_of_fresh_processes(graded):
    on, off = graded["modes"]["server"], graded["modes"]["fresh"]
    assert {learner: _summary(r) for learner, r in on.items()} == {
        learner: _summary(r) for learner, r in off.items()
    }
    assert [s.status for s in on["ref"].stages] == [PASSED] * 3
    assert [s.status for s in on["stub"].stages] == [NOT_STARTED] * 3


def test_the_servers_were_used(graded):
    # ref, stub, hostile, swapper, and killer twice: it killed its first
    assert len(graded["pids"]) == 6


def test_a_stage_leaves_nothing_to_the_next(graded):
    """look() in the stage after plant() found no file, no process and no socket."""
    stages = {s.name: s for s in graded["modes"]["server"]["hostile"].stages}
    assert stages["plant"].status == PASSED, stages["plant"].message
    assert stages["look"].status == PASSED, stages["look"].message


def test_a_stage_can_neither_write_its_server_nor_kill_more_than_its_handler(graded):
    """Its handler's death fails the stage (the rest of its own processes die with the
    server, which is replaced); the next stage is graded on the new server."""
    first, plant, look = graded["broken"]["killer"].stages
    assert first.status == PASSED and look.status == PASSED
    assert plant.status == "crashed", plant.message
    assert "killed by SIGKILL" in plant.message


def test_links_in_a_stage_folder_are_never_followed(graded):
    plant = graded["broken"]["swapper"].stages[1]
    assert plant.status == "crashed", plant.message
    assert "SECRET" not in plant.message
    assert graded["broken"]["swapper"].stages[2].status == PASSED


def test_nothing_is_left_running_and_every_server_is_gone(graded):
    assert graded["children"] == []
    assert graded["stragglers"] == []
    for pid in graded["pids"]:
        assert not Path(f"/proc/{pid}").exists()
    assert all(s._proc is None for s in graded["servers"])


def test_no_server_without_the_sandbox_or_when_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADER_SERVER", "1")
    stage = make_stage_at(tmp_path / "t", "first", stage_test(TESTS["first"]))
    box = batch.sandbox_for(tmp_path / "scratch", batch.Options())

    def server_for(options):
        return batch.server_for(tmp_path, tmp_path, box, (stage,), options, ())

    assert isinstance(server_for(batch.Options()), server.SubmissionServer)
    assert server_for(batch.Options(server=False)) is None
    assert server_for(batch.Options(sandbox=False)) is None
    monkeypatch.setenv("GRADER_SERVER", "0")
    assert server_for(batch.Options()) is None
