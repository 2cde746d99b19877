"""The command line: ``python -m grader ch2`` (the short form of ``python -m grader grade ch2``).

Every command and option is defined here; the commands themselves live in :mod:`grader.learner`
(status, hint, reset, solution), :mod:`grader.watch` and, for instructors, in
:mod:`grader.instructor` (``batch``, and the report formats behind ``--json``, ``--junit`` and
``--gradescope``), which is imported only when one of those is asked for.

Exit codes (:mod:`grader.statuses`): 0 when every stage graded passed, 1 when any did not, 2 for
a usage error (unknown chapter or stage, a tree folder that does not exist), reported in one line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from . import learner, manifest
from .runner import Sandbox, grade, select_stages, stop_all
from .sandbox import availability, for_learner
from .server import learner_sandbox
from .statuses import EXIT_FAILED, EXIT_OK, EXIT_USAGE, HIDDEN_ENV
from .tree import UsageError, resolve_tree
from .ui import LiveProgress, make_console, render, render_list

COMMANDS = ("grade", "list", "status", "watch", "hint", "reset", "solution", "batch")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see: python -m grader --help)")


def _tree_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tree",
        default="exercises",
        help="the code: exercises (default), solutions, or the path of a copy of the exercises",
    )


def build_parser(
    instructor: bool = False,
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (for --help) and one parser per command. ``batch`` gets its options
    only with ``instructor`` (they come from :mod:`grader.instructor.batch`)."""
    parser = _Parser(
        prog="python -m grader",
        description="Grade your code stage by stage. `python -m grader ch2` is short for "
        "`python -m grader grade ch2`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    chapters = "the chapter: " + ", ".join(manifest.CHAPTERS)

    g = commands.add_parser("grade", help="run a chapter's stages against a tree of code")
    g.add_argument("chapter", help=chapters)
    g.add_argument("stage_name", nargs="?", metavar="STAGE", help="grade only this stage")
    _tree_option(g)
    which = g.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="run every stage, even after a failure")
    which.add_argument("--stage", metavar="NAME", help="run only this stage")
    g.add_argument("--json", metavar="FILE", help="also write a JSON report to FILE")
    g.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    g.add_argument("--gradescope", metavar="FILE", help="also write Gradescope's results.json")
    g.add_argument(
        "--hidden", action="store_true", help="include the tests marked hidden (GRADER_HIDDEN=1)"
    )
    g.add_argument("-v", "--verbose", action="store_true", help="list every test that failed")

    listing = commands.add_parser("list", help="show the chapters and their stages")

    status = commands.add_parser("status", help="where you are and what to do next (the default)")
    _tree_option(status)

    watch = commands.add_parser(
        "watch", help="grade the current stage again every time you save a file"
    )
    watch.add_argument("chapter", help=chapters)
    _tree_option(watch)
    watch.add_argument(
        "--interval", type=float, default=0.5, help="seconds between scans (default 0.5)"
    )

    hint = commands.add_parser("hint", help="the next hint for a stage, one level per call")
    hint.add_argument("chapter", help=chapters)
    hint.add_argument("stage_name", nargs="?", metavar="STAGE", help="default: the current stage")
    _tree_option(hint)
    level = hint.add_mutually_exclusive_group()
    level.add_argument("--level", type=int, metavar="N", help="show the hints up to level N")
    level.add_argument("--reset", action="store_true", help="start the hints over")

    reset = commands.add_parser("reset", help="put a stage's file(s) back to the pristine stub")
    reset.add_argument("chapter", help=chapters)
    reset.add_argument("stage_name", metavar="STAGE")
    _tree_option(reset)
    reset.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    solution = commands.add_parser(
        "solution", help="the reference beside your code (a diff), once the stage has passed"
    )
    solution.add_argument("chapter", help=chapters)
    solution.add_argument("stage_name", metavar="STAGE")
    _tree_option(solution)
    solution.add_argument(
        "--rerun", action="store_true", help="grade the stage now instead of trusting the last run"
    )

    batch = commands.add_parser(
        "batch", help="grade every learner's copy in a folder (instructors)"
    )
    if instructor:
        from .instructor import batch as instructor_batch

        instructor_batch.add_arguments(batch)
    parsers = {"grade": g, "list": listing, "status": status, "watch": watch, "hint": hint}
    return parser, parsers | {"reset": reset, "solution": solution, "batch": batch}


def run(argv: list[str]) -> int:
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["grade", *argv]
    parser, commands = build_parser(instructor=argv[:1] == ["batch"])
    if argv and argv[0] in commands:
        # Intermixed, so that `grade ch2 --tree T attention` finds the stage after an option.
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    console = make_console()
    if args.command in (None, "status"):  # where the learner is, what to do next
        return learner.show_status(console, getattr(args, "tree", "exercises"))
    if args.command == "list":
        render_list(console, manifest.CHAPTERS)
        return EXIT_OK
    chapter = learner.chapter_named(args.chapter)
    if args.command == "batch":
        from .instructor import batch

        return batch.run(args, chapter, console)
    resolve_tree(args.tree)  # a missing folder is a usage error before anything runs
    if args.command == "watch":
        from .watch import watch

        return watch(chapter, args.tree, console=console, interval=args.interval)
    if args.command == "hint":
        return learner.show_hint(
            console, chapter, args.stage_name, args.tree, args.level, args.reset
        )
    if args.command == "reset":
        stage = learner.stage_named(chapter, args.stage_name)
        return learner.reset_stage(console, chapter, stage, args.tree, yes=args.yes)
    if args.command == "solution":
        stage = learner.stage_named(chapter, args.stage_name)
        return learner.show_solution(console, chapter, stage, args.tree, rerun=args.rerun)
    return _grade(args, chapter, console)


def _grade(args: argparse.Namespace, chapter: manifest.Chapter, console) -> int:
    if args.stage and args.stage_name and args.stage != args.stage_name:
        raise UsageError(f"two different stages given: {args.stage_name!r} and {args.stage!r}")
    only = args.stage or args.stage_name
    if only is not None and args.all:
        raise UsageError("--all and a single stage cannot be used together")
    select_stages(chapter, only)  # an unknown stage is a usage error before anything runs
    sandbox = learner_sandbox(args.tree) if not args.hidden else Sandbox(prefix=for_learner())
    keys = {}
    if args.hidden:  # an instructor's run: every test, verdicts decided by the grader
        os.environ[HIDDEN_ENV] = "1"  # the stage subprocesses inherit it
        isolated, why = availability()
        if not isolated:
            console.print(f"WARNING: grading WITHOUT the OS sandbox: {why}", style="bold red")
        from . import answer_key  # an instructor's run only

        console.print("Answer keys from the reference (made once, then cached)...", style="dim")
        keys = answer_key.keys_for(
            chapter, select_stages(chapter, only), prefix=sandbox.prefix, hidden=True
        )

    live = LiveProgress(console, chapter)
    with learner.grading_session() as session:  # stages may leave artifacts (e2e text, losses)
        try:
            result = grade(
                chapter,
                args.tree,
                only=only,
                run_all=args.all,
                listener=live,
                sandbox=sandbox,
                keys=keys,
            )
        finally:
            live.close()
        learner.record(result)
        render(console, result, verbose=args.verbose, hints_seen=learner.hints_seen(result))
        learner.show_session_artifacts(console, result, session)
    if args.json or args.junit or args.gradescope:
        from .instructor import formats, report  # only when a report is asked for

        for path, write, label in (
            (args.json, report.write_json, "JSON report"),
            (args.junit, formats.write_junit, "JUnit report"),
            (args.gradescope, formats.write_gradescope, "Gradescope results"),
        ):
            if path:
                write(result, path)
                console.print(f"{label}: {path}", style="dim")
    return EXIT_OK if result.ok else EXIT_FAILED


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` runs: stage processes are killed and
    temporary folders removed, where the default action would leave them behind."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except UsageError as error:
        print(f"python -m grader: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stop_all()
        print("python -m grader: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
