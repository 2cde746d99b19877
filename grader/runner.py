"""Run a chapter's stages against a tree of code and say, in data, how each went. No printing.

Each stage runs in its own subprocess (:func:`pytest_command`), from the repository root, with
``LLMFS_TREE`` naming the tree (``grader/tree.py``). The plugin (``grader/plugin.py``) appends one
JSON line per event to a file; this module reads the lines while the stage runs and folds them
into a :class:`~grader.events.StageEvents` (the one reducer: live progress and the final result
come from the same fold), so a process that hangs, exits or dies still leaves a result for every
test it reached.

The supervisor here enforces the limits itself, whatever the learner's code does with signals:

- the first test that times out ends the stage at once (``timed out``; the tests after it are
  ``not run`` and count as not passed): pytest-timeout reports it with the place it was stuck,
  and where that does not work (code that ignores or blocks ``SIGALRM``, a C call that never
  returns) the supervisor sees from the ``start`` line which test is running and since when, and
  kills the process group :data:`GRACE` seconds after the test's limit (``stage.test_timeout``);
- past ``stage.time_limit`` for the whole stage, the process group is killed (``timed out``).

Front ends (the command line, watch mode, batch grading) call :func:`grade` or :func:`run_stage`
and hear about progress through a :class:`Listener`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .checks import CHECKS_ENV
from .events import StageEvents, Stop
from .forbidden import env as forbidden_env
from .manifest import Chapter, Stage
from .results import ChapterResult, StageResult, TestResult
from .statuses import ERROR, HIDDEN_ENV, LOCKED, RESULTS_ENV, TIMED_OUT
from .tree import REPO_ROOT, UsageError, resolve_tree
from .verdicts import Key, judge, parse_checks

GRACE = 3.0  # seconds the supervisor gives pytest-timeout to report a test before killing it
_LOG_TAIL = 4000  # characters of the subprocess's output kept for diagnosis


class Listener(Protocol):
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
    """How a stage subprocess is started, for front ends that isolate it (batch grading).

    ``cwd`` replaces the repository root as working directory (the tests are then given by
    absolute path); ``env`` is laid over the stage's environment; ``prefix`` goes before the
    command (a wrapper that sets resource limits and execs the rest); ``pytest_args`` after it.
    """

    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    prefix: tuple[str, ...] = ()
    pytest_args: tuple[str, ...] = ()
    # A stage server for the tree (grader/server.py: a learner's runs), used where it can run the
    # stage; the stage runs as a fresh subprocess where it cannot.
    server: Any = None


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
        # pytest 9 collects garbage five times as the session ends, to report exceptions raised
        # in __del__: with torch's heap that is 0.4-1.2 s per stage, for warnings no one reads.
        "-p",
        "no:unraisableexception",
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


class _Lines:
    """Reads the plugin's complete JSON lines as they are written, from the results file opened
    before the stage started."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.offset = 0

    def poll(self) -> list[dict[str, Any]]:
        self.file.seek(self.offset)
        data = self.file.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        new = []
        for line in data[:end].splitlines():
            try:
                new.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return new


# Every stage process alive, so that an interrupted grader (SIGINT, SIGTERM) can stop them all:
# batch grades from several threads, each supervising its own stage.
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()
stopping = threading.Event()  # set by stop_all: no stage starts after it


def stop_all() -> None:
    """Kill every stage process this grader started, and any it would start from now on."""
    stopping.set()
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.pid is None:  # a stage on the stage server: its handler kills the group
        proc.kill()
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _supervise(
    proc: subprocess.Popen[bytes],
    lines: _Lines,
    events: StageEvents,
    stage: Stage,
    listener: Listener,
    poll_interval: float,
) -> Stop | None:
    """Follow the stage until its process ends (None) or a limit stops it (the :class:`Stop`)."""
    start = time.monotonic()
    running, since = None, start
    events.startup = None
    try:
        while True:
            try:
                proc.wait(timeout=poll_interval)
                done = True
            except subprocess.TimeoutExpired:
                done = False
            for record in lines.poll():
                test = events.add(record)
                if test is None:
                    continue
                listener.test_finished(stage, test, len(events.tests), len(events.collected))
                if test.status == TIMED_OUT:
                    return Stop(
                        TIMED_OUT,
                        test.message,
                        test.where,
                        decides=False,
                        unreached="not run: the stage stopped at the first test that timed out",
                    )
            if done:
                return None
            now = time.monotonic()
            if events.startup is None and events.started:
                events.startup = now - start
            if events.running != running:
                running, since = events.running, now
            if running is not None and now - since > stage.test_timeout + GRACE:
                return Stop(
                    TIMED_OUT,
                    f"still running after {stage.test_timeout:g} s, the time limit for this "
                    "test, and it did not stop when asked (an endless loop that ignores "
                    "signals?), so the grader stopped it",
                    decides=False,
                    unreached="not run: the stage stopped at the first test that timed out",
                )
            if now - start > stage.time_limit:
                return Stop(
                    TIMED_OUT,
                    f"the stage was still running after {stage.time_limit:g} s, its time "
                    "limit, and was stopped (an endless loop?)",
                )
    finally:
        _kill_group(proc)  # a stopped stage, or anything the learner's code left running
        proc.wait()
        for record in lines.poll():
            events.add(record)


def run_stage(
    chapter: Chapter,
    stage: Stage,
    tree: str | os.PathLike[str] = "exercises",
    *,
    listener: Listener | None = None,
    repo_root: Path = REPO_ROOT,
    python: str = sys.executable,
    poll_interval: float = 0.05,
    sandbox: Sandbox | None = None,
    key: Key | None = None,
) -> StageResult:
    """Run one stage's tests against ``tree`` in a subprocess and classify what happened.

    With ``key`` (an instructor's run) the process only reports its checks' values, and the
    grader decides every verdict against the key (``grader/verdicts.py``)."""
    listener = listener or Silent()
    sandbox = sandbox or Sandbox()
    tree_value, tree_dir = resolve_tree(tree)
    fields = stage_fields(chapter, stage)
    if not (repo_root / stage.tests).exists():
        message = (
            f"the stage's tests {stage.tests} are missing (a problem of the grader, not yours)"
        )
        return StageResult(status=ERROR, message=message, **fields | {"hint": "", "doc": ""})

    start = time.monotonic()
    events = StageEvents()
    server = sandbox.server if _servable(stage, repo_root, python, sandbox) else None
    with _stage_folder(server) as tmp, contextlib.ExitStack() as files:
        results = tmp / "results.jsonl"
        log_path = tmp / "pytest.log"
        checks_path = tmp / "checks.jsonl"
        # The grader reads what the stage wrote only through descriptors it opens now, before the
        # stage starts: on a stage server the stage can write this folder, and could otherwise
        # swap a file for a link to one of the grader's (grader/server.py).
        readers = {}
        for path in (results, log_path, checks_path):
            path.touch()
            readers[path] = files.enter_context(open(path, "rb"))
        trusted = (
            {CHECKS_ENV: str(checks_path), HIDDEN_ENV: "1" if key.hidden else "0"} if key else {}
        )
        root = repo_root if sandbox.cwd is not None else None
        command = [*pytest_command(stage, python, root), *sandbox.pytest_args]
        env = (
            stage_env(tree_value, results)
            | forbidden_env(stage.forbidden)
            | dict(sandbox.env)
            | trusted
        )
        with open(log_path, "wb") as log:
            proc = _start_on_server(server, command, env, tmp, sandbox.cwd or repo_root)
            if proc is None:
                proc = subprocess.Popen(
                    [*sandbox.prefix, *command],
                    cwd=sandbox.cwd or repo_root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=hasattr(os, "killpg"),
                )
            with _live_lock:
                _live.add(proc)
            if stopping.is_set():  # stop_all ran while this one was starting
                _kill_group(proc)
            try:
                lines = _Lines(readers[results])
                stop = _supervise(proc, lines, events, stage, listener, poll_interval)
            finally:
                with _live_lock:
                    _live.discard(proc)
        log_tail = _tail(readers[log_path], _LOG_TAIL)
        records = parse_checks(readers[checks_path].read()) if key else {}
        if server is not None:
            server.hand_over(tmp)
    result = events.result(
        fields,
        test_file=stage.tests,
        stop=stop,
        returncode=proc.returncode,
        log_tail=log_tail,
        tree=tree_dir,
        seconds=time.monotonic() - start,
    )
    if key is not None:
        result = judge(result, key, records)
    return _with_fitting_hint(result, stage)


# -- the stage server (grader/server.py) ----------------------------------------------------


def _servable(stage: Stage, repo_root: Path, python: str, sandbox: Sandbox) -> bool:
    """The server can run this stage: tests it can see, this Python, no wrapper of the runner's
    own (a learner's :class:`~grader.server.Client`, a batch's ``SubmissionServer``)."""
    if sandbox.server is None or sandbox.pytest_args or python != sys.executable:
        return False
    return sandbox.server.serves((repo_root / stage.tests).resolve(), sandbox.cwd)


@contextlib.contextmanager
def _stage_folder(server: Any) -> Iterator[Path]:
    """Where a stage's files go: a temporary folder, or one inside the server's work folder
    (the only one the sandboxed server can write)."""
    if server is None:
        with tempfile.TemporaryDirectory(prefix="grader-") as tmp:
            yield Path(tmp)
        return
    folder = server.run_dir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start_on_server(server: Any, command: list[str], env: dict[str, str], tmp: Path, cwd: Path):
    """The stage started on the server, or None (no server: start a subprocess instead)."""
    if server is None:
        return None
    env = env | server.private_env(tmp)
    try:
        if not server.ensure():
            return None
        return server.start(command[3:], env, cwd, tmp / "pytest.log")  # after "python -m pytest"
    except (OSError, ValueError):
        return None


def stage_fields(chapter: Chapter, stage: Stage) -> dict[str, Any]:
    """What a StageResult takes from the manifest, whatever happened to the stage."""
    level, hint = stage.hint_for(None)
    return {
        "chapter": chapter.name,
        "name": stage.name,
        "title": stage.title,
        "points": stage.points,
        "hint": hint,
        "hint_level": level,
        "hint_count": len(stage.hints),
        "doc": stage.doc,
        "files": stage.files,
        "optional": stage.optional,
    }


def _with_fitting_hint(result: StageResult, stage: Stage) -> StageResult:
    """The hint for the test that failed, where the manifest names one for it."""
    if result.failed_test is None or not stage.hints:
        return result
    level, hint = stage.hint_for(result.failed_test.name)
    return replace(result, hint=hint, hint_level=level)


def unrun(chapter: Chapter, stage: Stage, status: str, message: str) -> StageResult:
    """A stage that did not run, so has no tests: locked, or (batch) never reached."""
    return StageResult(status=status, message=message, **stage_fields(chapter, stage))


def _tail(f: BinaryIO, chars: int) -> str:
    """The end of a file, read without loading the rest (learner code may print megabytes)."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 4 * chars))
    return f.read().decode("utf-8", errors="replace")[-chars:]


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
    listener: Listener | None = None,
    repo_root: Path = REPO_ROOT,
    sandbox: Sandbox | None = None,
    keys: Mapping[str, Key] | None = None,
) -> ChapterResult:
    """Grade ``chapter`` on ``tree`` stage by stage; later stages are locked after the first
    required one that does not pass, unless ``run_all`` (or ``only`` names the stages to run).
    An optional stage (``Stage.optional``) that does not pass locks nothing. ``keys`` (answer keys
    by stage name, an instructor's run) make the grader decide the verdicts (grader/verdicts.py)."""
    listener = listener or Silent()
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
        listener.stage_started(stage, index, len(stages))
        result = run_stage(
            chapter,
            stage,
            tree_value,
            listener=listener,
            repo_root=repo_root,
            sandbox=sandbox,
            key=(keys or {}).get(stage.name),
        )
        listener.stage_finished(stage, result)
        results.append(result)
        if not result.ok and not stage.optional and blocker is None:
            blocker = stage.name
    return ChapterResult(
        chapter=chapter.name,
        title=chapter.title,
        tree=os.fspath(tree),
        tree_path=str(tree_dir),
        stages=tuple(results),
        seconds=round(time.monotonic() - start, 3),
    )
