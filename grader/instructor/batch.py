"""Grade a whole class: ``python -m grader batch ch3 SUBMISSIONS_DIR --jobs N``.

Each immediate subfolder of ``SUBMISSIONS_DIR`` is one learner's copy of the exercises; the
learner's name is the folder's name (hidden folders and plain files are ignored). The tree is the
folder itself, or the first folder inside it that holds the chapter's folder (``alice/ch3/`` or
``alice/exercises/ch3/``). Every submission is graded like ``--all``: every stage runs, nothing is
locked, so each score is complete.

Isolation, per submission: the submission is copied (regular files only) into a scratch folder
and the copy is graded, so nothing the code does can change the original; every stage runs in
its own subprocess with ``LLMFS_TREE`` naming the copy, a scratch working directory, its own
``HOME`` and ``TMPDIR``, ``PYTHONDONTWRITEBYTECODE``, ``PYTHONHASHSEED=0`` and a fixed number of
torch threads (so the same submission always gets the same score), the integrity guard
(``grader/guard.py``), a memory and an output limit (``grader/instructor/limits.py``) and a time limit for
the whole submission (stages after it is used up are ``timed out``), and the OS sandbox
(``grader/sandbox.py``: no solutions, no other submission, no network, nothing
outliving the stage), without which ``run`` refuses to grade unless ``--unsafe`` is given. The
tests always come from the grader's ``tests/``. ``--jobs`` submissions are graded at once.

A submission's stages run on a stage server of its own (:func:`server_for`,
``grader/server.py``'s ``SubmissionServer``): started in that submission's sandbox with its limits
and environment, it imports torch and pytest once and forks a fresh process per stage, and it is
stopped, with everything under it, when the submission is done. Where it cannot run (no OS
sandbox, ``GRADER_SERVER=0``, no fork) every stage is a fresh subprocess, with the same results.
While ``--jobs`` submissions are graded, the next one is made ready (copied, scanned, its server
started), so that a server's start, importing torch and pytest, is not waited for; a
submission's time and time limit count from its turn, when its first stage starts.

Verdicts: the grader decides them itself (``grader/verdicts.py``). Before the first submission,
each stage's answer key is made from the reference (``grader/answer_key.py``; cached in
``.grader/keys/``, so only the first batch of a version of the tests pays for it), and every
stage's process reports its checks' values, which the grader compares with the key: a forged
"passed", a skipped or missing test, a patched comparison function earn nothing.

Output (``--out``, default ``grades-<chapter>``): ``gradebook.csv`` (learner, one column per
stage score, total, max_score, flags, first_problem), and per learner
``<learner>/report.json`` (schema ``llmfs-grader/1`` plus ``learner`` and ``integrity``),
``<learner>/junit.xml`` and ``<learner>/results.json`` (Gradescope).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .. import answer_key, server
from .. import sandbox as os_sandbox
from ..manifest import Chapter, Stage
from ..results import ChapterResult, StageResult
from ..runner import Sandbox, run_stage, select_stages, stop_all, stopping, unrun
from ..statuses import ERROR, EXIT_OK, HIDDEN_ENV, TIMED_OUT
from ..tree import REPO_ROOT, UsageError
from ..verdicts import Key
from . import formats, integrity, limits
from .report import write_json

DEFAULT_JOBS = 2
_COPY_MAX_BYTES = 50_000_000  # larger files (checkpoints, data) are not copied for grading


@dataclass(frozen=True)
class Options:
    jobs: int = DEFAULT_JOBS
    time_limit: float | None = None  # seconds per submission; None: the chapter's stage limits
    memory_mb: float | None = limits.DEFAULT_MEMORY_MB
    output_mb: float | None = limits.DEFAULT_OUTPUT_MB
    hidden: bool = False  # include the tests marked hidden
    only: tuple[str, ...] | None = None  # grade only these stages
    sandbox: bool = True  # each stage in the OS sandbox where available (grader/instructor/)
    verdicts: bool = True  # the grader decides verdicts against the reference (grader/verdicts.py)
    reference: Path = answer_key.REFERENCE  # the tree the answer keys come from
    # Each submission's stages on a stage server of its own, in its sandbox (grader/server.py's
    # SubmissionServer), where one can run: not without the OS sandbox, nor GRADER_SERVER=0.
    server: bool = True


@dataclass(frozen=True)
class Submission:
    learner: str
    folder: Path  # the learner's folder, as handed in
    tree: Path | None  # the tree inside it (None: no chapter folder found)


@dataclass(frozen=True)
class Graded:
    submission: Submission
    result: ChapterResult
    findings: tuple[integrity.Finding, ...] = ()
    prefix: str = ""  # where the tree starts inside the learner's folder ("exercises/")

    @property
    def learner(self) -> str:
        return self.submission.learner


# -- finding the submissions ----------------------------------------------------------------


def locate_tree(folder: Path, chapter: Chapter, depth: int = 3) -> Path | None:
    """``folder`` or the shallowest folder inside it that holds ``<chapter>/`` (not a link)."""
    level = [folder]
    for _ in range(depth):
        nxt = []
        for candidate in level:
            if (candidate / chapter.name).is_dir() and not (candidate / chapter.name).is_symlink():
                return candidate
            try:
                children = sorted(p for p in candidate.iterdir() if p.is_dir())
            except OSError:
                continue
            nxt.extend(p for p in children if not p.is_symlink() and not p.name.startswith("."))
        level = nxt
    return None


def find_submissions(folder: str | os.PathLike[str], chapter: Chapter) -> list[Submission]:
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"submissions folder {os.fspath(folder)!r} is not a folder")
    subs = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        subs.append(Submission(path.name, path, locate_tree(path, chapter)))
    return subs


# -- one submission -------------------------------------------------------------------------


def copy_tree(source: Path, target: Path) -> None:
    """Copy the regular files and folders of ``source`` (no links, nothing huge) to ``target``."""
    for folder, dirs, files in os.walk(source, followlinks=False):
        here = Path(folder)
        rel = here.relative_to(source)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink() and d != "__pycache__"]
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            path = here / name
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_size > _COPY_MAX_BYTES:
                continue
            shutil.copy2(path, target / rel / name)


def sandbox_for(scratch: Path, options: Options, hide: tuple[Path, ...] = ()) -> Sandbox:
    """The subprocess settings for one submission, all under ``scratch``; ``hide``: folders the
    stage must not see even inside a visible one (the other submissions)."""
    dirs = {name: scratch / name for name in ("home", "tmp", "work")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, options.jobs)))
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "HOME": str(dirs["home"]),
        "TMPDIR": str(dirs["tmp"]),
        "TMP": str(dirs["tmp"]),
        "TEMP": str(dirs["tmp"]),
        "XDG_CACHE_HOME": str(dirs["home"] / ".cache"),
        "MPLCONFIGDIR": str(dirs["home"] / ".matplotlib"),
        "PYTHONPATH": pythonpath,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        HIDDEN_ENV: "1" if options.hidden else "0",
        "GRADER_GUARD": "1",
        "GRADER_STRICT": "1",  # an instructor's run: a forbidden API scores 0 (grader/forbidden.py)
    }
    isolated = options.sandbox and os_sandbox.availability()[0]
    return Sandbox(
        cwd=dirs["work"],
        env=env,
        prefix=(
            *(os_sandbox.prefix(hide) if isolated else ()),
            *limits.prefix(options.memory_mb, options.output_mb),
        ),
    )


def grade_submission(
    chapter: Chapter,
    submission: Submission,
    options: Options,
    scratch_root: Path,
    keys: Mapping[str, Key] | None = None,
    turn: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> Graded:
    """Grade one learner's copy in isolation; never raises for anything the copy contains.

    The copy, its integrity scan and its stage server are made first; its stages run once
    ``turn()`` is entered (a free job of the batch), and its time counts from there."""
    stages = select_stages(chapter, options.only)
    if submission.tree is None:
        message = f"no {chapter.name}/ folder in this submission"
        results = tuple(unrun(chapter, s, ERROR, message) for s in stages)
        return Graded(submission, _chapter_result(chapter, submission, results, time.monotonic()))

    scratch = Path(tempfile.mkdtemp(prefix="sub-", dir=scratch_root))
    try:
        copy = scratch / "tree"
        copy_tree(submission.tree, copy)
        findings = tuple(integrity.scan(submission.folder))
        prefix = submission.tree.relative_to(submission.folder).as_posix()
        prefix = f"{prefix}/" if prefix != "." else ""
        hide = (submission.folder.parent,)
        sandbox = sandbox_for(scratch, options, hide=hide)
        own = server_for(scratch, copy, sandbox, stages, options, hide)
        sandbox = dataclasses.replace(sandbox, server=own)
        limit = options.time_limit or sum(s.time_limit for s in stages)
        with contextlib.closing(own) if own is not None else contextlib.nullcontext():
            if own is not None:
                own.ensure()  # started now, while the batch may still be grading others
            with turn():
                start = time.monotonic()
                deadline = start + limit
                results = _grade_stages(chapter, stages, copy, sandbox, keys, deadline, limit)
        graded = _chapter_result(chapter, submission, tuple(results), start)
        graded = integrity.apply(graded, list(findings), chapter, prefix)
        return Graded(submission, graded, findings, prefix)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def server_for(
    scratch: Path,
    tree: Path,
    sandbox: Sandbox,
    stages: tuple[Stage, ...],
    options: Options,
    hide: tuple[Path, ...],
) -> server.SubmissionServer | None:
    """The submission's own stage server, not started yet (its ``ensure`` starts it), or None
    where the stages run as fresh subprocesses: ``Options.server`` off, ``GRADER_SERVER=0``, no
    fork, or no OS sandbox (the server's isolation between stages is the sandbox's)."""
    isolated = options.sandbox and os_sandbox.availability()[0]
    if not (options.server and isolated and server.enabled()):
        return None
    tests = tuple((REPO_ROOT / s.tests).resolve() for s in stages)
    course = any(t.is_relative_to(REPO_ROOT / "tests") for t in tests)
    return server.SubmissionServer(
        scratch / "server",
        tree=tree,
        hide=hide,
        limits=limits.prefix(options.memory_mb, options.output_mb),
        env=dict(sandbox.env),
        cwd=sandbox.cwd or scratch,
        tests=tests,
        preload=server.PRELOAD if course else server.LIGHT,
    )


def _grade_stages(
    chapter: Chapter,
    stages: tuple[Stage, ...],
    copy: Path,
    sandbox: Sandbox,
    keys: Mapping[str, Key] | None,
    deadline: float,
    limit: float,
) -> list[StageResult]:
    """Every stage of one submission, within the submission's time limit."""
    results: list[StageResult] = []
    for stage in stages:
        left = deadline - time.monotonic()
        if left < 1.0:
            message = (
                f"not run: the submission used up its time limit of {limit:g} s "
                "(an endless loop in an earlier stage?)"
            )
            results.append(unrun(chapter, stage, TIMED_OUT, message))
            continue
        bounded = dataclasses.replace(
            stage,
            time_limit=min(stage.time_limit, left),
            test_timeout=min(stage.test_timeout, left),
        )
        key = (keys or {}).get(stage.name)
        result = run_stage(chapter, bounded, str(copy), sandbox=sandbox, key=key)
        results.append(dataclasses.replace(result, log_tail=""))
    return results


def _chapter_result(
    chapter: Chapter, submission: Submission, stages: tuple[StageResult, ...], start: float
) -> ChapterResult:
    return ChapterResult(
        chapter=chapter.name,
        title=chapter.title,
        tree=submission.learner,
        tree_path=str(submission.tree or submission.folder),
        stages=stages,
        seconds=round(time.monotonic() - start, 3),
    )


# -- the class ------------------------------------------------------------------------------


class Interrupted(Exception):
    """Grading stopped by Ctrl-C or SIGTERM: ``finished`` holds the learners graded before it."""

    def __init__(self, finished: list[Graded]) -> None:
        super().__init__(f"interrupted after {len(finished)} learner(s)")
        self.finished = finished


def answer_keys(chapter: Chapter, options: Options) -> dict[str, Key]:
    """The answer key of every stage to grade (grader/answer_key.py; cached, so made once per
    version of the tests and the reference); none when ``options.verdicts`` is off or the
    reference lacks the chapter (a made-up chapter in the grader's own tests)."""
    if not options.verdicts:
        return {}
    isolated = options.sandbox and os_sandbox.availability()[0]
    return answer_key.keys_for(
        chapter,
        select_stages(chapter, options.only),
        reference=options.reference,
        prefix=os_sandbox.prefix() if isolated else (),
        hidden=options.hidden,
    )


class _Stopped(Exception):
    """The batch was interrupted while a submission waited for its turn."""


def grade_all(
    chapter: Chapter,
    submissions: list[Submission],
    options: Options,
    on_done: Callable[[Graded, int, int], None] | None = None,
) -> list[Graded]:
    """Grade every submission, ``options.jobs`` at a time; results in the submissions' order.

    Interrupted (KeyboardInterrupt), it kills every stage process, waits for the workers and
    raises :class:`Interrupted` with the learners that were finished before the interruption
    (those graded while it stopped are left out: their last stages were killed, not graded)."""
    lock = threading.Lock()
    finished: list[Graded] = []
    stopping.clear()  # a new batch in this process (an earlier one may have been interrupted)
    if not submissions:
        return []
    try:
        keys = answer_keys(chapter, options)
    except KeyboardInterrupt:
        stop_all()
        raise Interrupted([]) from None
    jobs = max(1, options.jobs)
    free = threading.BoundedSemaphore(jobs)

    @contextlib.contextmanager
    def turn():
        """One of the ``jobs`` places where a submission's stages run, once one is free."""
        while not free.acquire(timeout=0.2):
            if stopping.is_set():
                raise _Stopped
        try:
            yield
        finally:
            free.release()

    with tempfile.TemporaryDirectory(prefix="grader-batch-") as scratch_root:

        def one(sub: Submission) -> Graded:
            try:
                graded = grade_submission(chapter, sub, options, Path(scratch_root), keys, turn)
            except Exception as error:  # a grader problem must not stop the class
                message = f"the grader could not grade this submission: {error!r}"
                stages = select_stages(chapter, options.only)
                results = tuple(unrun(chapter, s, ERROR, message) for s in stages)
                graded = Graded(sub, _chapter_result(chapter, sub, results, time.monotonic()))
            with lock:
                if not stopping.is_set():
                    finished.append(graded)
                    if on_done is not None:
                        on_done(graded, len(finished), len(submissions))
            return graded

        # One worker more than the jobs: it makes the next submission ready while they run.
        pool = ThreadPoolExecutor(max_workers=jobs + 1)
        futures = [pool.submit(one, sub) for sub in submissions]
        try:
            pending = set(futures)
            while pending:
                # With a timeout, so that this thread wakes up to take Ctrl-C or SIGTERM: the OS
                # may deliver the signal to a worker thread, and a wait without a timeout would
                # then never see it (a batch once ignored SIGINT that way).
                _, pending = wait(pending, timeout=0.2)
            results = [future.result() for future in futures]
        except KeyboardInterrupt:
            stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            with lock:
                order = {id(sub): n for n, sub in enumerate(submissions)}
                done = sorted(finished, key=lambda g: order[id(g.submission)])
            raise Interrupted(done) from None
        pool.shutdown()
        return results


def gradebook_rows(chapter: Chapter, graded: list[Graded], only=None) -> list[list[str]]:
    stages = select_stages(chapter, only)
    rows = [["learner", *(s.name for s in stages), "total", "max_score", "flags", "first_problem"]]
    for g in graded:
        by_name = {s.name: s for s in g.result.stages}
        flags = [f"{s.name}: {f}" for s in g.result.stages for f in s.flags]
        flags += [
            f"(no stage) {f}" for f in g.findings if not integrity.involved(f, chapter, g.prefix)
        ]
        problem = g.result.first_problem
        rows.append(
            [
                g.learner,
                *(f"{by_name[s.name].score:g}" for s in stages),
                f"{g.result.score:g}",
                f"{g.result.max_score:g}",
                "; ".join(flags),
                f"{problem.name}: {problem.status}: {problem.message}" if problem else "",
            ]
        )
    return rows


def write_outputs(
    chapter: Chapter, graded: list[Graded], out: Path, only=None, *, partial: bool = False
) -> Path:
    """The gradebook and every learner's reports under ``out``; returns the gradebook's path.
    A ``partial`` one (an interrupted batch) is ``gradebook-partial.csv``, so that it is never
    taken for the whole class."""
    out.mkdir(parents=True, exist_ok=True)
    book = out / ("gradebook-partial.csv" if partial else "gradebook.csv")
    with open(book, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(gradebook_rows(chapter, graded, only))
    for g in graded:
        folder = out / g.learner
        extra = {"learner": g.learner, "integrity": [str(f) for f in g.findings]}
        write_json(g.result, folder / "report.json", extra=extra)
        formats.write_junit(g.result, folder / "junit.xml", name=f"{g.learner} · {chapter.name}")
        formats.write_gradescope(g.result, folder / "results.json")
    return book


# -- the command ----------------------------------------------------------------------------


def add_arguments(b) -> None:
    """The ``batch`` command's arguments, on its parser ``b`` (made by :mod:`grader.cli`)."""
    b.add_argument("chapter", help="the chapter to grade")
    b.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="one subfolder per learner")
    b.add_argument("--jobs", "-j", type=int, default=DEFAULT_JOBS, help="submissions at once")
    b.add_argument("--out", metavar="DIR", help="where to write (default: grades-<chapter>)")
    b.add_argument("--time-limit", type=float, metavar="S", help="seconds per submission")
    b.add_argument(
        "--memory-limit",
        type=float,
        default=limits.DEFAULT_MEMORY_MB,
        metavar="MB",
        help=f"address space per stage process (default {limits.DEFAULT_MEMORY_MB}; 0: none)",
    )
    b.add_argument(
        "--output-limit",
        type=float,
        default=limits.DEFAULT_OUTPUT_MB,
        metavar="MB",
        help=f"largest file or captured output (default {limits.DEFAULT_OUTPUT_MB}; 0: none)",
    )
    b.add_argument("--hidden", action="store_true", help="include the tests marked hidden")
    b.add_argument("--stage", action="append", metavar="NAME", help="only this stage (repeat)")
    b.add_argument(
        "--unsafe",
        action="store_true",
        help="grade even where the OS sandbox is not available (in-process guard only)",
    )


def run(args, chapter: Chapter, console) -> int:
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    only = tuple(args.stage) if args.stage else None
    select_stages(chapter, only)
    submissions = find_submissions(args.submissions, chapter)
    out = Path(args.out or f"grades-{chapter.name}").resolve()
    if out.is_relative_to(Path(args.submissions).resolve()):
        raise UsageError("--out must not be inside the submissions folder")
    isolated, why = os_sandbox.availability()
    if not isolated and not args.unsafe:
        raise UsageError(
            f"the OS sandbox is not available here: {why}. Batch grading runs every stage in it; "
            "--unsafe grades without it (the in-process guard alone)"
        )
    if not isolated:
        console.print(
            f"WARNING: grading WITHOUT the OS sandbox ({why}): a submission can read the "
            "solutions, damage files and forge its results",
            style="bold red",
            markup=False,
        )
    options = Options(
        jobs=args.jobs,
        time_limit=args.time_limit,
        memory_mb=args.memory_limit or None,
        output_mb=args.output_limit or None,
        hidden=args.hidden,
        only=only,
    )
    console.print(
        f"Grading {len(submissions)} submission(s) of {chapter.name}, {args.jobs} at a time "
        "(the first batch of this version of the tests first makes the stages' answer keys from "
        "the reference: about twice the time of grading the reference once)",
        style="bold",
        markup=False,
    )

    def done(g: Graded, count: int, total: int) -> None:
        flags = sum(len(s.flags) for s in g.result.stages)
        note = f", {flags} integrity flag(s)" if flags else ""
        overridden = sum(s.verdicts.overridden for s in g.result.stages if s.verdicts)
        note += f", {overridden} reported pass(es) refused by the grader" if overridden else ""
        console.print(
            f"[{count}/{total}] {g.learner}: {g.result.score:g} / {g.result.max_score} "
            f"({g.result.seconds:.1f} s{note})",
            markup=False,
        )

    start = time.monotonic()
    try:
        graded = grade_all(chapter, submissions, options, on_done=done)
    except Interrupted as stop:
        book = write_outputs(chapter, stop.finished, out, only, partial=True)
        console.print(
            f"Interrupted: {len(stop.finished)} of {len(submissions)} learner(s) graded; "
            f"partial gradebook: {book}",
            style="bold red",
            markup=False,
        )
        return 130
    book = write_outputs(chapter, graded, out, only)
    console.print(
        f"Gradebook: {book}  (reports per learner in {out}; {time.monotonic() - start:.1f} s)",
        markup=False,
    )
    return EXIT_OK
