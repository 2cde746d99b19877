"""Run a chapter's stages against a tree of code and say, in data, how each went. No printing.

Each stage runs in its own subprocess::

    python -m pytest <stage.tests> -p grader.plugin -p pytest_timeout --timeout=<stage.test_timeout>

with ``LLMFS_TREE`` naming the tree (see ``grader/tree.py``), the repository root as working
directory, and ``stage.time_limit`` enforced here: past it, the whole process group is killed.
The plugin (``grader/plugin.py``) streams one JSON line per test to a file; this module reads it
while the stage runs (for progress) and after it ends (for the result), so a process that hangs,
exits or dies still leaves a result for every test it reached.

Stage status, from its tests (a learner fixes the first problem in this order):
``passed`` when every test that ran passed (skipped tests do not count); otherwise the first of
``error``, ``crashed``, ``timed out``, ``failed``, ``not started`` that any test has. A stage the
grader stopped past its time limit is ``timed out``; a process that died (``os._exit``, a signal)
is ``crashed``; stages after the first one that did not pass are ``locked`` unless ``run_all``.

Score: partial credit, ``stage.points * passed / total`` (rounded to 2 decimals), where ``total``
counts the stage's collected tests minus skipped ones. Locked stages score 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .forbidden import env as forbidden_env
from .manifest import Chapter, Stage
from .statuses import (
    CRASHED,
    ERROR,
    FAILED,
    LOCKED,
    NOT_RUN,
    PASSED,
    PRIORITY,
    PUBLIC_PASSED,
    RESULTS_ENV,
    SKIPPED,
    TIMED_OUT,
)
from .tree import REPO_ROOT, UsageError, resolve_tree

_LOG_TAIL = 4000  # characters of the subprocess's output kept for diagnosis


@dataclass(frozen=True)
class Where:
    """A place in the learner's tree: ``ch2/attention.py:42``, in ``MultiHeadAttention.forward``."""

    file: str
    line: int | None = None
    function: str | None = None

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{place}, in {self.function}" if self.function else place

    @classmethod
    def from_record(cls, data: dict[str, Any] | None) -> Where | None:
        if not data or not data.get("file"):
            return None
        return cls(data["file"], data.get("line"), data.get("function"))


@dataclass(frozen=True)
class TestResult:
    """One test: ``status`` is a test status (the stage words but ``locked``, plus ``skipped``
    and ``not run``); ``outcome`` is pytest's own word (passed, failed, error, skipped)."""

    __test__ = False  # not a pytest test class

    nodeid: str
    name: str
    status: str
    message: str = ""
    seconds: float = 0.0
    doc: str = ""
    outcome: str = ""
    where: Where | None = None
    exception: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED


@dataclass(frozen=True)
class StageResult:
    """One stage: its status, its tests, and the first problem for the learner to fix."""

    chapter: str
    name: str
    title: str
    status: str
    points: int
    tests: tuple[TestResult, ...] = ()
    seconds: float = 0.0
    message: str = ""  # the first problem, in one or two sentences ("" when passed or locked)
    where: Where | None = None
    failed_test: TestResult | None = None  # the test whose message this is, if any
    hint: str = ""
    doc: str = ""
    files: tuple[str, ...] = ()
    returncode: int | None = None
    log_tail: str = ""  # the end of pytest's own output, for diagnosing a crash
    flags: tuple[str, ...] = ()  # integrity problems (grader/integrity.py): the stage scores 0
    hidden_excluded: int = 0  # tests marked hidden that this (learner's) run left out
    warnings: tuple[str, ...] = ()  # shown, no effect on the score (grader/forbidden.py)

    @property
    def passed(self) -> int:
        return sum(t.status == PASSED for t in self.tests)

    @property
    def total(self) -> int:
        return sum(t.status != SKIPPED for t in self.tests)

    @property
    def score(self) -> float:
        if self.status == LOCKED or self.total == 0 or self.flags:
            return 0.0
        return round(self.points * self.passed / self.total, 2)

    @property
    def ok(self) -> bool:
        return self.status == PASSED and not self.flags

    @property
    def label(self) -> str:
        """The status as shown: ``public tests passed`` when hidden tests were left out."""
        if self.status == PASSED and self.hidden_excluded:
            return PUBLIC_PASSED
        return self.status


@dataclass(frozen=True)
class ChapterResult:
    chapter: str
    title: str
    tree: str  # as the learner named it: exercises, solutions or a path
    tree_path: str
    stages: tuple[StageResult, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.stages) and all(s.ok for s in self.stages)

    @property
    def score(self) -> float:
        return round(sum(s.score for s in self.stages), 2)

    @property
    def max_score(self) -> int:
        return sum(s.points for s in self.stages)

    @property
    def first_problem(self) -> StageResult | None:
        """The first stage that ran and did not pass: what the learner should fix next."""
        return next((s for s in self.stages if s.status not in (PASSED, LOCKED)), None)


class Progress(Protocol):
    """What a front end hears while a chapter is graded (all optional to act on)."""

    def stage_started(self, stage: Stage, index: int, count: int) -> None: ...

    def test_finished(self, stage: Stage, test: TestResult, done: int, total: int) -> None: ...

    def stage_finished(self, stage: Stage, result: StageResult) -> None: ...


class Silent:
    def stage_started(self, stage: Stage, index: int, count: int) -> None:
        pass

    def test_finished(self, stage: Stage, test: TestResult, done: int, total: int) -> None:
        pass

    def stage_finished(self, stage: Stage, result: StageResult) -> None:
        pass


@dataclass(frozen=True)
class Sandbox:
    """How a stage subprocess is started, for front ends that isolate it (``grader/batch.py``).

    ``cwd`` replaces the repository root as working directory (the tests are then given by
    absolute path); ``env`` is laid over the stage's environment; ``prefix`` goes before the
    command (a wrapper that sets resource limits and execs the rest); ``pytest_args`` after it.
    """

    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    prefix: tuple[str, ...] = ()
    pytest_args: tuple[str, ...] = ()


# -- one stage ------------------------------------------------------------------------------


def pytest_command(
    stage: Stage, python: str = sys.executable, root: Path | None = None
) -> list[str]:
    """The stage's pytest command; ``root`` makes the test path absolute (another cwd)."""
    return [
        python,
        "-m",
        "pytest",
        str(root / stage.tests) if root is not None else stage.tests,
        "-p",
        "pytest_timeout",
        "-p",
        "grader.plugin",
        "-p",
        "no:cacheprovider",
        f"--timeout={stage.test_timeout:g}",
        "-q",
        "--tb=no",
        "--show-capture=no",
        "--color=no",
        # The integrity guard (grader/guard.py); it switches itself off for solutions/.
        "-p",
        "grader.guard",
        # The APIs the stage asks the learner to write (Stage.forbidden, grader/forbidden.py).
        "-p",
        "grader.forbidden",
    ]


def stage_env(tree_value: str, results: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env.update(
        {
            "LLMFS_TREE": tree_value,
            RESULTS_ENV: str(results),
            # The tests come from the grader alone: no plugin the environment happens to have
            # (pytest-randomly would reorder and reseed them), no bytecode written into the tree.
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class _Records:
    """Reads the plugin's JSON lines as they are written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.items: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # only complete lines
        self.offset += end
        new = []
        for line in data[:end].splitlines():
            try:
                new.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.items.extend(new)
        return new


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _test_from_record(r: dict[str, Any]) -> TestResult:
    return TestResult(
        nodeid=r["nodeid"],
        name=r.get("name") or r["nodeid"].rsplit("::", 1)[-1],
        status=r.get("status", FAILED),
        message=r.get("message", ""),
        seconds=float(r.get("seconds", 0.0)),
        doc=r.get("doc", ""),
        outcome=r.get("outcome", ""),
        where=Where.from_record(r.get("where")),
        exception=r.get("exception"),
    )


_FAULT_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _fault_where(log: str, tree: Path) -> Where | None:
    """The innermost tree frame of a faulthandler dump (it lists the most recent call first)."""
    for filename, line, function in _FAULT_FRAME.findall(log):
        try:
            rel = Path(filename).resolve().relative_to(tree).as_posix()
        except (ValueError, OSError):
            continue
        return Where(rel, int(line), function)
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_stage(
    chapter: Chapter,
    stage: Stage,
    tree: str | os.PathLike[str] = "exercises",
    *,
    progress: Progress | None = None,
    repo_root: Path = REPO_ROOT,
    python: str = sys.executable,
    poll_interval: float = 0.05,
    sandbox: Sandbox | None = None,
) -> StageResult:
    """Run one stage's tests against ``tree`` in a subprocess and classify what happened."""
    progress = progress or Silent()
    sandbox = sandbox or Sandbox()
    tree_value, tree_dir = resolve_tree(tree)
    base = _stage_fields(chapter, stage)
    test_file = repo_root / stage.tests
    if not test_file.exists():
        message = (
            f"the stage's tests {stage.tests} are missing (a problem of the grader, not yours)"
        )
        return StageResult(status=ERROR, message=message, **base | {"hint": "", "doc": ""})

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="grader-") as tmp:
        results = Path(tmp) / "results.jsonl"
        log_path = Path(tmp) / "pytest.log"
        records = _Records(results)
        collected: list[str] = []
        finished: dict[str, TestResult] = {}
        killed = False
        with open(log_path, "wb") as log:
            root = repo_root if sandbox.cwd is not None else None
            proc = subprocess.Popen(
                [*sandbox.prefix, *pytest_command(stage, python, root), *sandbox.pytest_args],
                cwd=sandbox.cwd or repo_root,
                env=stage_env(tree_value, results)
                | forbidden_env(stage.forbidden)
                | dict(sandbox.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=hasattr(os, "killpg"),
            )
            try:
                while True:
                    try:
                        proc.wait(timeout=poll_interval)
                        done = True
                    except subprocess.TimeoutExpired:
                        done = False
                    for r in records.poll():
                        if r.get("event") == "collected":
                            collected = list(r.get("nodeids", []))
                        elif r.get("event") == "test":
                            test = _test_from_record(r)
                            finished[test.nodeid] = test
                            progress.test_finished(stage, test, len(finished), len(collected))
                    if done:
                        break
                    if time.monotonic() - start > stage.time_limit:
                        killed = True
                        _kill_group(proc)
                        proc.wait()
                        break
            finally:
                if proc.poll() is None:
                    _kill_group(proc)
                    proc.wait()
                else:
                    _kill_group(proc)  # anything the learner's code left running
        records.poll()
        log_text = _tail(log_path, _LOG_TAIL)
    seconds = time.monotonic() - start
    return _assemble(
        base,
        records.items,
        proc.returncode,
        killed,
        seconds,
        stage,
        log_text,
        tree_dir,
    )


def _stage_fields(chapter: Chapter, stage: Stage) -> dict[str, Any]:
    """What a StageResult takes from the manifest, whatever happened to the stage."""
    return {
        "chapter": chapter.name,
        "name": stage.name,
        "title": stage.title,
        "points": stage.points,
        "hint": stage.hints[0] if stage.hints else "",
        "doc": stage.doc,
        "files": stage.files,
    }


def unrun(chapter: Chapter, stage: Stage, status: str, message: str) -> StageResult:
    """A stage that did not run, so has no tests: locked, or (batch) never reached."""
    return StageResult(status=status, message=message, **_stage_fields(chapter, stage))


def _tail(path: Path, chars: int) -> str:
    """The end of a file, read without loading the rest (learner code may print megabytes)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4 * chars))
        return f.read().decode("utf-8", errors="replace")[-chars:]


def _assemble(
    base: dict[str, Any],
    items: list[dict[str, Any]],
    returncode: int,
    killed: bool,
    seconds: float,
    stage: Stage,
    log_tail: str,
    tree_dir: Path,
) -> StageResult:
    collected: list[str] = []
    tests: dict[str, TestResult] = {}
    started: list[str] = []
    collect_errors: list[dict[str, Any]] = []
    exit_record: dict[str, Any] | None = None
    finish: dict[str, Any] | None = None
    flags: list[str] = []
    warnings: list[str] = []
    hidden = 0
    for r in items:
        event = r.get("event")
        if event == "flag" and r.get("reason") not in flags:
            flags.append(r.get("reason", "integrity"))
        elif event == "warning" and r.get("message") not in warnings:
            warnings.append(str(r.get("message")))
        elif event == "hidden" and not r.get("included"):
            hidden = int(r.get("count", 0))
        elif event == "collected":
            collected = list(r.get("nodeids", []))
        elif event == "collect_error":
            collect_errors.append(r)
        elif event == "start":
            started.append(r["nodeid"])
        elif event == "test":
            tests[r["nodeid"]] = _test_from_record(r)
        elif event == "exit":
            exit_record = r
        elif event == "finish":
            finish = r
    running = next((n for n in started if n not in tests), None)  # the test it died in
    common = {
        "seconds": round(seconds, 3),
        "returncode": returncode,
        "log_tail": log_tail,
        "flags": tuple(flags),
        "warnings": tuple(warnings),
        "hidden_excluded": hidden,
    }

    if not items and not killed and returncode > 0:
        # pytest stopped before the plugin was even configured (a broken conftest, a bad
        # option): nothing the learner's code did, so say what pytest said.
        lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
        said = next(
            (x for x in reversed(lines) if "error" in x.lower()), lines[-1] if lines else ""
        )
        message = f"pytest could not run {stage.tests} (exit code {returncode}): {said}"
        return StageResult(status=ERROR, message=message, **base, **common)

    # A process that did not end by itself: say which test it was in, mark the rest "not run".
    stopped_status = None
    if killed:
        stopped_status = TIMED_OUT
        stopped_message = (
            f"the stage was still running after {stage.time_limit:g} s, its time limit, and was "
            "stopped (an endless loop?)"
        )
        where = None
    elif finish is None or running is not None or returncode < 0:
        stopped_status = CRASHED
        where = None
        if returncode < 0:
            stopped_message = f"the test process was killed by {_signal_name(-returncode)}"
            where = _fault_where(log_tail, tree_dir)
        elif exit_record is not None:
            stopped_message = (
                f"your code called os._exit({exit_record.get('code')}), which ends the process "
                "at once"
            )
            where = Where.from_record(exit_record.get("where"))
        else:
            stopped_message = f"the test process stopped unexpectedly (exit code {returncode})"
        if where is not None:
            stopped_message += f" (at {where})"
    if stopped_status is not None:
        if not collected and not collect_errors:
            stopped_message += " while loading your code"
        ordered = collected or started
        results = []
        for nodeid in ordered:
            if nodeid in tests:
                results.append(tests[nodeid])
            elif nodeid == running:
                results.append(
                    TestResult(
                        nodeid,
                        nodeid.rsplit("::", 1)[-1],
                        stopped_status,
                        stopped_message,
                        where=where,
                    )
                )
            else:
                results.append(
                    TestResult(
                        nodeid,
                        nodeid.rsplit("::", 1)[-1],
                        NOT_RUN,
                        "not run: the stage stopped before this test",
                    )
                )
        failed = next((t for t in results if t.status == stopped_status), None)
        return StageResult(
            status=stopped_status,
            tests=tuple(results),
            message=stopped_message,
            where=where,
            failed_test=failed,
            **base,
            **common,
        )

    if collect_errors:
        first = collect_errors[0]
        status = first.get("status") or ERROR
        if status == FAILED:  # an exception while importing the test file is an error here
            status = ERROR
        return StageResult(
            status=status,
            message=first.get("message", "could not load the tests"),
            where=Where.from_record(first.get("where")),
            **base,
            **common,
        )

    results = tuple(tests[n] for n in collected if n in tests) + tuple(
        t for n, t in tests.items() if n not in collected
    )
    if not results:
        last = log_tail.strip().splitlines()[-1] if log_tail.strip() else ""
        message = f"no tests ran in {stage.tests}" + (f": {last}" if last else "")
        return StageResult(status=ERROR, message=message, **base, **common)
    counted = [t for t in results if t.status != SKIPPED]
    if counted and all(t.passed for t in counted):
        return StageResult(status=PASSED, tests=results, **base, **common)
    status = next(s for s in (*PRIORITY, NOT_RUN, SKIPPED) if any(t.status == s for t in results))
    if status in (NOT_RUN, SKIPPED):
        status = ERROR
    first = next((t for t in results if t.status == status), None)
    return StageResult(
        status=status,
        tests=results,
        message=first.message if first else "",
        where=first.where if first else None,
        failed_test=first,
        **base,
        **common,
    )


# -- a chapter ------------------------------------------------------------------------------


def select_stages(chapter: Chapter, only: str | Iterable[str] | None = None) -> tuple[Stage, ...]:
    """The chapter's stages, or just the named ones (in course order); UsageError if unknown."""
    if only is None:
        return chapter.stages
    names = [only] if isinstance(only, str) else list(only)
    for name in names:
        try:
            chapter.stage(name)
        except KeyError as error:
            raise UsageError(error.args[0]) from None
    return tuple(s for s in chapter.stages if s.name in names)


def grade(
    chapter: Chapter,
    tree: str | os.PathLike[str] = "exercises",
    *,
    only: str | Iterable[str] | None = None,
    run_all: bool = False,
    progress: Progress | None = None,
    repo_root: Path = REPO_ROOT,
    sandbox: Sandbox | None = None,
) -> ChapterResult:
    """Grade ``chapter`` on ``tree`` stage by stage; later stages are locked after the first one
    that does not pass, unless ``run_all`` (or ``only`` names the stages to run)."""
    progress = progress or Silent()
    tree_value, tree_dir = resolve_tree(tree)
    stages = select_stages(chapter, only)
    start = time.monotonic()
    results: list[StageResult] = []
    blocker: str | None = None
    for index, stage in enumerate(stages):
        if blocker is not None and not run_all and only is None:
            message = f"locked until stage '{blocker}' passes (or grade with --all)"
            results.append(unrun(chapter, stage, LOCKED, message))
            continue
        progress.stage_started(stage, index, len(stages))
        result = run_stage(
            chapter, stage, tree_value, progress=progress, repo_root=repo_root, sandbox=sandbox
        )
        progress.stage_finished(stage, result)
        results.append(result)
        if not result.ok and blocker is None:
            blocker = stage.name
    return ChapterResult(
        chapter=chapter.name,
        title=chapter.title,
        tree=os.fspath(tree),
        tree_path=str(tree_dir),
        stages=tuple(results),
        seconds=round(time.monotonic() - start, 3),
    )


__all__ = [
    "ChapterResult",
    "Progress",
    "Sandbox",
    "StageResult",
    "TestResult",
    "UsageError",
    "Where",
    "grade",
    "run_stage",
    "unrun",
]
