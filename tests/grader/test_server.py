"""The stage server (grader/server.py): every stage a fresh fork of a pre-imported process.

A stage graded through the server must read exactly as one run in a fresh subprocess, whatever the
learner's code does: pass, fail, hang past its limit (the grader hangs up and the stage's whole
process group dies), exit, crash; and a stage that kills the server only makes the grader start
another. The servers these tests start are stopped at the end (the suite leaves none running).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from grader import server
from grader.manifest import Chapter
from grader.runner import Sandbox, run_stage
from grader.statuses import CRASHED, FAILED, NOT_STARTED, PASSED, TIMED_OUT

from .conftest import stage_test

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the stage server forks")

STAGE = stage_test(
    """
    import os

    def test_good():
        assert mod.good() == 1

    def test_wrong():
        assert mod.wrong() == 1

    def test_stub():
        mod.stub()

    def test_environment():
        assert os.environ["STAGE_MARK"] == "fresh"  # the request's environment, not the server's
        os.environ["STAGE_MARK"] = "dirty"  # ... and nothing leaks into the next stage
    """
)


@pytest.fixture
def client(tree, tmp_path, monkeypatch):
    """An unsandboxed server for the fake tree (the sandboxed one is the same code in bwrap)."""
    monkeypatch.setenv("GRADER_SERVER_DIR", str(tmp_path / "servers"))  # removed with the test
    made = server.Client(tree, prefix=())
    yield made
    server.stop_all()


def graded(client, make_stage, source, name="fake", **limits):
    stage = make_stage(name, source, **limits)
    chapter = Chapter("ch9", "Fake", (stage,))
    return run_stage(chapter, stage, str(client.tree), sandbox=Sandbox(server=client))


def test_a_stage_on_the_server_reads_like_a_fresh_process(client, make_stage, monkeypatch):
    monkeypatch.setenv("STAGE_MARK", "fresh")
    first = graded(client, make_stage, STAGE)
    assert [t.status for t in first.tests] == [PASSED, FAILED, NOT_STARTED, PASSED]
    assert first.tests[1].message.startswith("assert 2 == 1")
    socket_before = client.socket.stat().st_ino
    again = graded(client, make_stage, STAGE)  # the same server, a fresh fork, the same result
    assert [t.status for t in again.tests] == [t.status for t in first.tests]
    assert client.socket.stat().st_ino == socket_before


def test_a_hang_is_stopped_with_its_whole_process_group(client, make_stage):
    marker = f"llmfs-orphan-{uuid.uuid4().hex[:8]}"  # this run's child, not an earlier run's
    source = stage_test(
        f"""
        import subprocess, sys

        def test_hang():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # {marker}"])
            mod.stubborn_loop()
        """
    )
    start = time.monotonic()
    result = graded(client, make_stage, source, test_timeout=2.0, time_limit=30.0)
    assert result.tests[0].status == TIMED_OUT and time.monotonic() - start < 25
    deadline = time.monotonic() + 5
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(marker)


@pytest.mark.parametrize(
    "call, words", [("leave", "sys.exit(3)"), ("vanish", "os._exit(0)"), ("segfault", "SIGSEGV")]
)
def test_exits_and_crashes_are_reported(client, make_stage, call, words):
    result = graded(client, make_stage, stage_test(f"def test_it():\n    mod.{call}()\n"))
    assert result.status == CRASHED and words in result.message, result.message


def test_a_stage_that_kills_the_server_only_costs_a_new_one(client, make_stage):
    source = stage_test(
        """
        import os, signal

        def test_it():
            with open(f"/proc/{os.getppid()}/stat") as f:  # the handler's parent: the server
                os.kill(int(f.read().rsplit(")", 1)[1].split()[1]), signal.SIGKILL)
            assert mod.good() == 1
        """
    )
    graded(client, make_stage, source)
    assert not client._ready()  # the server is gone ...
    assert (
        graded(
            client, make_stage, stage_test("def test_ok():\n    assert mod.good() == 1\n")
        ).status
        == PASSED
    )


def test_the_learner_sandbox_uses_a_server_unless_switched_off(monkeypatch, tree):
    monkeypatch.setenv("GRADER_SERVER", "1")
    assert isinstance(server.learner_sandbox(str(tree)).server, server.Client)
    monkeypatch.setenv("GRADER_SERVER", "0")
    assert server.learner_sandbox(str(tree)).server is None


def _alive(marker: str) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        return True
            except OSError:
                continue
    return False


def test_a_course_stage_on_the_sandboxed_server(monkeypatch, tmp_path):
    """The real thing: ch2 attention on the reference, through a server inside bwrap."""
    from grader import sandbox
    from grader.manifest import CHAPTERS

    if not sandbox.availability()[0]:
        pytest.skip(f"no OS sandbox here: {sandbox.availability()[1]}")
    monkeypatch.setenv("GRADER_SERVER_DIR", str(tmp_path / "servers"))
    monkeypatch.setenv("GRADER_SERVER", "1")
    chapter = CHAPTERS["ch2"]
    box = server.learner_sandbox("solutions")
    assert box.server is not None and box.prefix
    try:
        for _ in range(2):  # the first run starts the server, the second reuses it
            result = run_stage(chapter, chapter.stage("attention"), "solutions", sandbox=box)
            assert result.status == PASSED, result.message
        assert box.server._ready()  # a server was started, and is still there
    finally:
        server.stop_all()


def test_a_tree_made_again_under_its_name_gets_a_new_server(tmp_path):
    """A sandboxed server has the tree folder bound: after the folder is deleted and copied
    again (a fresh copy, a new clone) it would still see the deleted one, every file missing.
    The key is the folder's inode, which the old server's bind keeps from being reused."""
    tree = tmp_path / "tree"
    tree.mkdir()
    first = server.folder_for(tree, sandboxed=True)
    assert server.folder_for(tree, sandboxed=True) == first  # the same folder: the same server
    held = os.open(tree, os.O_RDONLY)  # as the server's bind holds it: its inode stays taken
    try:
        tree.rmdir()
        tree.mkdir()
        assert server.folder_for(tree, sandboxed=True) != first
    finally:
        os.close(held)
