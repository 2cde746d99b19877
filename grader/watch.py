"""``python -m grader watch ch2``: grade the current stage again every time a file is saved.

The current stage is the chapter's first stage that has not passed (per the saved progress). It
is graded at once, then again after every change to a file of the tree; when it passes, the
watch moves on to the next stage and grades it at once. Ctrl-C stops it (exit code 0).

Changes come from ``watchdog`` where it is importable, and otherwise from polling: a scan of the
tree's files (modification time and size) every ``interval`` seconds, which works everywhere
(network drives, containers, editors that replace files). Hidden folders, ``__pycache__`` and
editor droppings (``*~``, ``*.swp``) are ignored. The loop takes its watcher, its stage runner
and a run limit as arguments, so it is tested without a terminal, real time or real stages.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.text import Text

from . import artifacts
from .learner import StageRunner, grade_stage, run_live
from .manifest import Chapter, Stage
from .progress import Progress
from .results import ChapterResult, StageResult
from .tree import TREES, resolve_tree
from .ui import command, problem_lines, show_artifacts

_IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".swo", ".tmp", ".pyc")
Snapshot = dict[str, tuple[int, int]]


def _watched(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(_IGNORED_SUFFIXES)


def scan(root: Path) -> Snapshot:
    """Every watched file under ``root``: tree-relative path -> (mtime in ns, size)."""
    found: Snapshot = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if not _watched(name):
                continue
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError:  # deleted between the listing and the stat
                continue
            found[os.path.relpath(path, root).replace(os.sep, "/")] = (
                info.st_mtime_ns,
                info.st_size,
            )
    return found


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """Files added, removed or modified between two snapshots, sorted."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


class Watcher(Protocol):
    def wait(self) -> list[str]:
        """Block until some file changed; return the tree-relative paths that did."""
        ...

    def close(self) -> None: ...


class PollingWatcher:
    """Scan the tree every ``interval`` seconds; a change is reported once the files settle
    (an editor that writes a file in several steps triggers one run, not three)."""

    def __init__(
        self,
        root: Path,
        interval: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        settle: float = 0.1,
    ) -> None:
        self.root = root
        self.interval = interval
        self.sleep = sleep
        self.settle = settle
        self.snapshot = scan(root)

    def wait(self) -> list[str]:
        while True:
            self.sleep(self.interval)
            current = scan(self.root)
            if current == self.snapshot:
                continue
            for _ in range(10):  # wait for the writes to stop, a bounded number of times
                self.sleep(self.settle)
                later = scan(self.root)
                if later == current:
                    break
                current = later
            changed = changes(self.snapshot, current)
            self.snapshot = current
            if changed:
                return changed

    def close(self) -> None:
        pass


class WatchdogWatcher:
    """File events from ``watchdog`` (inotify, FSEvents, ...), used when it is importable."""

    def __init__(self, root: Path, settle: float = 0.1) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        self.root = root
        self.settle = settle
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.changed: set[str] = set()
        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.is_directory:
                    return
                for attr in ("src_path", "dest_path"):
                    path = getattr(event, attr, "")
                    if not path:
                        continue
                    path = os.fsdecode(path)
                    rel = os.path.relpath(path, root).replace(os.sep, "/")
                    parts = rel.split("/")
                    if rel.startswith("..") or "__pycache__" in parts:
                        continue
                    if not all(_watched(p) for p in parts):
                        continue
                    with outer.lock:
                        outer.changed.add(rel)
                    outer.event.set()

        self.observer = Observer()
        self.observer.schedule(Handler(), str(root), recursive=True)
        self.observer.start()

    def wait(self) -> list[str]:
        while True:
            while not self.event.wait(0.2):  # short waits keep Ctrl-C responsive
                pass
            time.sleep(self.settle)
            with self.lock:
                self.event.clear()
                changed, self.changed = sorted(self.changed), set()
            if changed:
                return changed

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=2)


def make_watcher(root: Path, interval: float = 0.5) -> Watcher:
    """watchdog's events where it is importable and starts, polling everywhere else."""
    try:
        return WatchdogWatcher(root)
    except Exception:  # ImportError, or an OS that refuses more watches: poll instead
        return PollingWatcher(root, interval)


def watch(
    chapter: Chapter,
    tree: str = "exercises",
    *,
    console: Console,
    interval: float = 0.5,
    watcher: Watcher | None = None,
    run: StageRunner = run_live,
    max_runs: int | None = None,
) -> int:
    """Grade the current stage, then again on every change; 0 on Ctrl-C or when all passed.

    ``watcher``, ``run`` and ``max_runs`` are for tests: a scripted source of changes, a fake
    stage runner, and a number of stage runs after which the loop returns.
    """
    _, folder = resolve_tree(tree)
    stage = Progress.load(tree).current_stage(chapter)
    if stage is None:
        console.print(
            Text(f"Every stage of {chapter.name} passed already: nothing to watch.", "bold green")
        )
        console.print(f"Grade it all again with: {command(chapter.name, tree=tree)}")
        return 0
    runs = 0
    try:
        watcher = watcher or make_watcher(folder, interval)
        with artifacts.exported() as art_dir, contextlib.ExitStack() as stack:
            stack.callback(watcher.close)
            while True:
                result = _grade_once(console, chapter, stage, tree, run, art_dir)
                runs += 1
                if result.ok:
                    later = chapter.stages[chapter.stages.index(stage) + 1 :]
                    following = next((s for s in later if not s.optional), None)
                    if following is None:
                        console.print(
                            Text(f"Every stage of {chapter.name} passed. Well done!", "bold green")
                        )
                        return 0
                    stage = following
                    console.print(Text(f"On to the next stage: {stage.name}", style="bold"))
                    if max_runs is not None and runs >= max_runs:
                        return 0
                    continue
                if max_runs is not None and runs >= max_runs:
                    return 0
                where = tree if tree in TREES else str(folder)
                console.print(
                    Text(
                        f"Watching {where} for changes: save a file to grade '{stage.name}' "
                        "again (Ctrl-C to stop).",
                        style="dim",
                    )
                )
                changed = watcher.wait()
                console.print(Text("Changed: " + ", ".join(changed[:5]), style="dim"))
    except KeyboardInterrupt:
        console.print()
        console.print("Stopped watching.")
        return 0


def _grade_once(
    console: Console,
    chapter: Chapter,
    stage: Stage,
    tree: str,
    run: StageRunner,
    art_dir: Path,
) -> StageResult:
    if console.is_terminal:
        console.clear()
    index = chapter.stages.index(stage)
    heading = Text(f"watch · {chapter.name} · stage {index + 1}/{len(chapter.stages)}: ", "bold")
    heading.append(f"{stage.name} — {stage.title}", style="bold cyan")
    heading.append(f"   tree: {tree}", style="")
    console.print(heading)
    with contextlib.suppress(OSError):
        (art_dir / f"{stage.name}.json").unlink()  # only what this run writes is shown
    result = grade_stage(console, chapter, stage, tree, run)
    _, folder = resolve_tree(tree)
    wrapper = ChapterResult(chapter.name, chapter.title, tree, str(folder), (result,))
    if not result.ok:
        console.print()
        seen = Progress.load(tree).hint_level(chapter.name, stage.name)
        for line in problem_lines(wrapper, result, hints_seen=seen):
            console.print(line)
        more = command("hint", chapter.name, stage.name, tree=tree)
        console.print(Text(f"  Stuck? {more}", style="dim"))
    show_artifacts(console, artifacts.collect(art_dir, [stage.name]), chapter.name, tree)
    console.print()
    return result
