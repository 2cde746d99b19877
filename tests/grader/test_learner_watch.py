"""`python -m grader watch`: the loop with scripted changes and fake runs, polling on real files,
and once for real (a stage subprocess, a file saved, Ctrl-C) in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from grader import artifacts, watch
from grader.manifest import Chapter
from grader.progress import Progress
from grader.results import StageResult
from grader.tree import REPO_ROOT
from grader.ui import make_console

from .conftest import write


class Script:
    """A watcher that reports the scripted changes, then Ctrl-C (or ends the test)."""

    def __init__(self, *changes: list[str]) -> None:
        self.changes = list(changes)
        self.closed = False

    def wait(self) -> list[str]:
        if not self.changes:
            raise KeyboardInterrupt
        return self.changes.pop(0)

    def close(self) -> None:
        self.closed = True


class FakeRuns:
    """Stage runs with scripted statuses, per stage name, in order."""

    def __init__(self, **statuses: list[str]) -> None:
        self.statuses = statuses
        self.calls: list[str] = []

    def __call__(self, chapter, stage, tree, live) -> StageResult:
        self.calls.append(stage.name)
        status = self.statuses[stage.name].pop(0)
        return StageResult(
            chapter=chapter.name,
            name=stage.name,
            title=stage.title,
            status=status,
            points=stage.points,
            message="" if status == "passed" else f"{stage.name} is {status}",
            hint=stage.hints[0],
        )


@pytest.fixture
def chapter(make_stage, fake_chapter) -> Chapter:
    return fake_chapter(*(make_stage(name, "") for name in ("first", "second", "third")))


def run_watch(chapter, tree, watcher, runs, capsys, **kwargs) -> tuple[int, str]:
    code = watch.watch(
        chapter, str(tree), console=make_console(), watcher=watcher, run=runs, **kwargs
    )
    return code, capsys.readouterr().out


def test_starts_at_the_first_stage_not_passed_reruns_on_change_and_moves_on(chapter, tree, capsys):
    state = Progress.load(str(tree))
    state.record_stage(StageResult("ch9", "first", "first", "passed", 10))
    state.save()
    runs = FakeRuns(second=["failed", "passed"], third=["passed"])
    watcher = Script(["ch9/mod.py"])
    code, out = run_watch(chapter, tree, watcher, runs, capsys)
    assert code == 0
    assert runs.calls == ["second", "second", "third"]
    assert (
        "second is failed" in out and "Hint:" in out and "python -m grader hint ch9 second" in out
    )
    assert "save a file to grade 'second' again (Ctrl-C to stop)" in out
    assert "Changed: ch9/mod.py" in out
    assert "On to the next stage: third" in out
    assert "Every stage of ch9 passed" in out
    assert watcher.closed
    saved = Progress.load(str(tree))
    assert [saved.status("ch9", n) for n in ("first", "second", "third")] == ["passed"] * 3


def test_ctrl_c_while_waiting_exits_0_and_keeps_what_was_recorded(chapter, tree, capsys):
    runs = FakeRuns(first=["not started"])
    code, out = run_watch(chapter, tree, Script(), runs, capsys)
    assert code == 0 and "Stopped watching." in out and "Traceback" not in out
    assert Progress.load(str(tree)).status("ch9", "first") == "not started"


def test_ctrl_c_during_a_run_exits_0(chapter, tree, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    watcher = Script()
    code, out = run_watch(chapter, tree, watcher, interrupted, capsys)
    assert code == 0 and "Stopped watching." in out and watcher.closed
    assert artifacts.ARTIFACTS_ENV not in os.environ  # the folder was un-exported


def test_max_runs_ends_the_loop(chapter, tree, capsys):
    runs = FakeRuns(first=["failed", "failed", "failed"])
    code, _ = run_watch(chapter, tree, Script(["a"], ["b"]), runs, capsys, max_runs=2)
    assert code == 0 and runs.calls == ["first", "first"]


def test_nothing_to_watch_when_every_stage_passed(chapter, tree, capsys):
    state = Progress.load(str(tree))
    for name in ("first", "second", "third"):
        state.record_stage(StageResult("ch9", name, name, "passed", 10))
    state.save()
    code, out = run_watch(chapter, tree, Script(), FakeRuns(), capsys)
    assert code == 0 and "nothing to watch" in out


def test_only_what_this_run_wrote_is_shown(chapter, tree, capsys):
    """An artifact from an earlier run is removed before the stage runs again."""

    def runs(chapter, stage, tree, live):
        if not hasattr(runs, "done"):
            runs.done = True
            artifacts.save(stage.name, {"sample": "from the first run"})
        return StageResult(chapter.name, stage.name, stage.title, "failed", 10)

    code, out = run_watch(chapter, tree, Script(["x"]), runs, capsys, max_runs=2)
    assert code == 0 and out.count("from the first run") == 1


# -- polling ---------------------------------------------------------------------------------


def test_polling_reports_a_saved_file_and_ignores_caches_and_editor_files(tree):
    module = tree / "ch9" / "mod.py"
    ticks = []

    def sleep(seconds: float) -> None:  # the "clock": each tick, something happens on disk
        ticks.append(seconds)
        if len(ticks) == 1:
            write(tree / "ch9" / "__pycache__" / "mod.cpython.pyc", "x")
            write(tree / "ch9" / ".mod.py.swp", "x")
            write(tree / "ch9" / "mod.py~", "x")
        elif len(ticks) == 3:  # and only then
            module.write_text(module.read_text() + "\n# saved\n")

    watcher = watch.PollingWatcher(tree, interval=0.5, sleep=sleep, settle=0.1)
    assert watcher.wait() == ["ch9/mod.py"]
    assert ticks[:3] == [0.5, 0.5, 0.5] and ticks[3] == 0.1  # scanned, then let it settle
    new = tree / "ch9" / "extra.py"
    write(new, "y = 1\n")
    assert watcher.wait() == ["ch9/extra.py"]  # a new file counts as a change
    new.unlink()
    assert watcher.wait() == ["ch9/extra.py"]  # and so does a deleted one


def test_make_watcher_falls_back_to_polling_without_watchdog(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "watchdog", None)  # import watchdog -> ImportError
    monkeypatch.setitem(sys.modules, "watchdog.events", None)
    assert isinstance(watch.make_watcher(tree, 0.2), watch.PollingWatcher)


# -- for real ---------------------------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path

from grader import cli, manifest
from grader.manifest import Chapter
from tests.grader.conftest import NOT_STARTED, make_stage_at, stage_test

base = Path(sys.argv[1])
fix = make_stage_at(base, "fix", stage_test("def test_wrong():\\n    assert mod.wrong() == 1\\n"))
later = make_stage_at(base, "later", stage_test(NOT_STARTED))
manifest.CHAPTERS = {"ch9": Chapter("ch9", "Fake", (fix, later))}
sys.exit(cli.main(["watch", "ch9", "--tree", str(base / "tree"), "--interval", "0.1"]))
"""


def test_watch_for_real_reruns_on_save_moves_on_and_stops_on_ctrl_c(tree):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}  # GRADER_STATE_DIR: the tmp one of this test
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tree.parent)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()

    def wait_for(text: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in list(lines)) < count:
            assert child.poll() is None, f"watch ended early: {''.join(lines)}"
            assert time.monotonic() < deadline, f"no {text!r} in: {''.join(lines)}"
            time.sleep(0.05)

    try:
        wait_for("Watching")
        module = tree / "ch9" / "mod.py"
        module.write_text(module.read_text().replace("return 2", "return 1  # fixed"))
        wait_for("On to the next stage: later")
        wait_for("Watching", count=2)
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(timeout=5)
    out, err = "".join(lines), child.stderr.read()
    assert code == 0, out + err
    assert "Stopped watching." in out and "Traceback" not in out + err
    assert "fix: passed" in out and "later: not started" in out
    state = Progress.load(str(tree))
    assert (state.status("ch9", "fix"), state.status("ch9", "later")) == ("passed", "not started")


def test_watchdog_events_are_used_when_watchdog_is_importable(tree, monkeypatch):
    """With a stand-in for watchdog: its events (minus caches and editor files) end a wait."""
    import types

    observers: list = []

    class Handler:
        pass

    class Observer:
        def schedule(self, handler, path, recursive):
            self.handler, self.path = handler, path
            observers.append(self)

        def start(self):
            self.started = True

        def stop(self):
            self.stopped = True

        def join(self, timeout=None):
            pass

    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)

    module("watchdog")
    module("watchdog.events", FileSystemEventHandler=Handler)
    module("watchdog.observers", Observer=Observer)
    watcher = watch.make_watcher(tree)
    assert isinstance(watcher, watch.WatchdogWatcher)
    (observer,) = observers
    assert observer.started and observer.path == str(tree)

    def event(path, directory=False):
        return types.SimpleNamespace(is_directory=directory, src_path=str(tree / path))

    for path in ("ch9/__pycache__/mod.pyc", "ch9/.mod.py.swp", "ch9/mod.py~", "../outside.py"):
        observer.handler.on_any_event(event(path))
    observer.handler.on_any_event(event("ch9", directory=True))
    assert not watcher.event.is_set()
    observer.handler.on_any_event(event("ch9/mod.py"))
    observer.handler.on_any_event(event("ch9/mod.py"))
    assert watcher.wait() == ["ch9/mod.py"]
    watcher.close()
    assert observer.stopped
