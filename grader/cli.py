"""The command line: ``python -m grader ch2`` (the short form of ``python -m grader grade ch2``).

Exit codes: 0 when every stage graded passed, 1 when any did not, 2 for a usage error (unknown
chapter or stage, a tree folder that does not exist), which is reported in one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import batch, learner, manifest
from .formats import write_gradescope, write_junit
from .instructor import sandbox as os_sandbox
from .report import write_json
from .runner import Sandbox, grade, select_stages
from .tree import UsageError, resolve_tree
from .ui import LiveProgress, make_console, render, render_list

COMMANDS = ("grade", "list", "batch", *learner.COMMANDS)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see: python -m grader --help)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (for --help) and one parser per command."""
    parser = _Parser(
        prog="python -m grader",
        description="Grade your code stage by stage. `python -m grader ch2` is short for "
        "`python -m grader grade ch2`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    g = commands.add_parser("grade", help="run a chapter's stages against a tree of code")
    g.add_argument("chapter", help="the chapter to grade: " + ", ".join(manifest.CHAPTERS))
    g.add_argument("stage_name", nargs="?", metavar="STAGE", help="grade only this stage")
    g.add_argument(
        "--tree",
        default="exercises",
        help="the code to grade: exercises (default), solutions, or the path of a copy of the "
        "exercises",
    )
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
    instructor = batch.add_parser(commands)
    parsers = {"grade": g, "list": listing, "batch": instructor}
    return parser, parsers | learner.add_parsers(commands)


def run(argv: list[str]) -> int:
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["grade", *argv]
    parser, commands = build_parser()
    if argv and argv[0] in commands:
        # Intermixed, so that `grade ch2 --tree T attention` finds the stage after an option.
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    console = make_console()
    if args.command is None:  # `python -m grader`: where the learner is, what to do next
        return learner.show_status(console)
    if args.command == "list":
        render_list(console, manifest.CHAPTERS)
        return EXIT_OK
    if args.command in learner.COMMANDS:
        return learner.run(args, console)
    if args.command == "batch":
        return batch.run(args, learner.chapter_named(args.chapter), console)

    chapter = learner.chapter_named(args.chapter)
    if args.stage and args.stage_name and args.stage != args.stage_name:
        raise UsageError(f"two different stages given: {args.stage_name!r} and {args.stage!r}")
    only = args.stage or args.stage_name
    if only is not None and args.all:
        raise UsageError("--all and a single stage cannot be used together")
    resolve_tree(args.tree)  # a missing folder is a usage error before anything runs
    select_stages(chapter, only)  # and so is an unknown stage
    if args.hidden:
        os.environ["GRADER_HIDDEN"] = "1"  # the stage subprocesses inherit it
        isolated, why = os_sandbox.availability()
        if not isolated:
            console.print(f"WARNING: grading WITHOUT the OS sandbox: {why}", style="bold red")
    sandbox = Sandbox(prefix=os_sandbox.for_learner())

    progress = LiveProgress(console, chapter)
    with learner.grading_session() as session:  # stages may leave artifacts (e2e text, losses)
        try:
            result = grade(
                chapter, args.tree, only=only, run_all=args.all, progress=progress, sandbox=sandbox
            )
        finally:
            progress.close()
        render(console, result, verbose=args.verbose)
        learner.after_grade(console, result, session)  # saved progress, artifacts shown
    if args.json:
        write_json(result, args.json)
        console.print(f"JSON report: {args.json}", style="dim")
    if args.junit:
        write_junit(result, args.junit)
        console.print(f"JUnit report: {args.junit}", style="dim")
    if args.gradescope:
        write_gradescope(result, args.gradescope)
        console.print(f"Gradescope results: {args.gradescope}", style="dim")
    return EXIT_OK if result.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except UsageError as error:
        print(f"python -m grader: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("python -m grader: interrupted", file=sys.stderr)
        return 130
