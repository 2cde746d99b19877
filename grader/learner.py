"""The learner's loop: where am I, what next, a hint, start a stage over, compare with the reference.

Commands (wired into :mod:`grader.cli`)::

    python -m grader                           # where you are and the exact command to run next
    python -m grader status [--tree T]         # the same, for any tree
    python -m grader watch ch2 [--tree T]      # rerun the current stage on every save (grader.watch)
    python -m grader hint ch2 [STAGE]          # the next hint, from a nudge to the exact idea
    python -m grader reset ch2 STAGE [--yes]   # the stage's files back to the stub, with a backup
    python -m grader solution ch2 STAGE        # the reference beside your code, once it passes

Everything reads and writes the saved progress of :mod:`grader.progress`; nothing here runs a
test except ``solution --rerun`` and ``watch`` (through :mod:`grader.runner`). A request the grader
will not serve (an unknown stage, ``reset`` without confirmation, ``solution`` before the stage
passes) raises :class:`~grader.tree.UsageError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from . import artifacts, manifest, progress, stubs, ui
from .instructor.sandbox import for_learner
from .manifest import Chapter, Stage
from .progress import NOT_RUN_YET, Progress
from .runner import ChapterResult, Sandbox, StageResult, run_stage, select_stages
from .statuses import LOCKED, PASSED
from .stubs import BEGIN, END, STUB
from .tree import UsageError, resolve_tree
from .ui import LiveProgress, status_text, tree_file

COMMANDS = ("status", "watch", "hint", "reset", "solution")
EXIT_OK = 0
MARKS = ui.MARKS | {NOT_RUN_YET: "·"}  # a stage this tree has not run yet


# -- the command line -----------------------------------------------------------------------


def _tree_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tree",
        default="exercises",
        help="the code: exercises (default), solutions, or the path of a copy of the exercises",
    )


def add_parsers(commands) -> dict[str, argparse.ArgumentParser]:
    """Add this module's commands to the subparsers ``commands``; returns them by name."""
    chapters = ", ".join(manifest.CHAPTERS)
    status = commands.add_parser("status", help="where you are and what to do next (the default)")
    _tree_option(status)

    watch = commands.add_parser(
        "watch", help="grade the current stage again every time you save a file"
    )
    watch.add_argument("chapter", help=f"the chapter: {chapters}")
    _tree_option(watch)
    watch.add_argument(
        "--interval", type=float, default=0.5, help="seconds between scans (default 0.5)"
    )

    hint = commands.add_parser("hint", help="the next hint for a stage, one level per call")
    hint.add_argument("chapter", help=f"the chapter: {chapters}")
    hint.add_argument("stage_name", nargs="?", metavar="STAGE", help="default: the current stage")
    _tree_option(hint)
    which = hint.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, metavar="N", help="show the hints up to level N")
    which.add_argument("--reset", action="store_true", help="start the hints over")

    reset = commands.add_parser("reset", help="put a stage's file(s) back to the pristine stub")
    reset.add_argument("chapter", help=f"the chapter: {chapters}")
    reset.add_argument("stage_name", metavar="STAGE")
    _tree_option(reset)
    reset.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    solution = commands.add_parser(
        "solution", help="the reference beside your code (a diff), once the stage has passed"
    )
    solution.add_argument("chapter", help=f"the chapter: {chapters}")
    solution.add_argument("stage_name", metavar="STAGE")
    _tree_option(solution)
    solution.add_argument(
        "--rerun", action="store_true", help="grade the stage now instead of trusting the last run"
    )
    return {"status": status, "watch": watch, "hint": hint, "reset": reset, "solution": solution}


def run(args: argparse.Namespace, console: Console) -> int:
    """Run one of :data:`COMMANDS` (``args.command``)."""
    if args.command == "status":
        return show_status(console, args.tree)
    chapter = chapter_named(args.chapter)
    resolve_tree(args.tree)  # a missing folder is a usage error before anything else
    if args.command == "watch":
        from .watch import watch

        return watch(chapter, args.tree, console=console, interval=args.interval)
    if args.command == "hint":
        return show_hint(console, chapter, args.stage_name, args.tree, args.level, args.reset)
    stage = stage_named(chapter, args.stage_name)
    if args.command == "reset":
        return reset_stage(console, chapter, stage, args.tree, yes=args.yes)
    if args.command == "solution":
        return show_solution(console, chapter, stage, args.tree, rerun=args.rerun)
    raise UsageError(f"unknown command {args.command!r}")


def chapter_named(name: str) -> Chapter:
    chapters = manifest.CHAPTERS
    if name not in chapters:
        raise UsageError(f"unknown chapter {name!r} (chapters: {', '.join(chapters)})")
    return chapters[name]


def stage_named(chapter: Chapter, name: str) -> Stage:
    return select_stages(chapter, name)[0]


def command(*words: str, tree: str = "exercises") -> str:
    """The exact command line to type: ``python -m grader ch2 attention [--tree T]``."""
    parts = ["python", "-m", "grader", *words]
    if tree != "exercises":
        parts += ["--tree", tree]
    return " ".join(shlex.quote(p) for p in parts)


def _numbered(console: Console, items: list[tuple[int, str, str]]) -> None:
    """``  1. text`` lines whose continuation lines stay indented under the text."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", width=4)
    grid.add_column()
    for number, text, style in items:
        grid.add_row(Text(f"{number}.", style=style), Text(text, style=style))
    console.print(grid)


def _wrapped_field(console: Console, label: str, value: str | Text) -> None:
    """A labelled field whose long text wraps under itself, not under the label."""
    grid = Table.grid()
    grid.add_column(width=9, style="bold")
    grid.add_column()
    grid.add_row("  " + label, value)
    console.print(grid)


def _field(label: str, value: str | Text, style: str = "") -> Text:
    line = Text("  " + label.ljust(7), style="bold")
    line.append_text(value if isinstance(value, Text) else Text(value, style=style))
    return line


# -- status: python -m grader ---------------------------------------------------------------


def next_stage(state: Progress) -> tuple[Chapter, Stage] | None:
    """The first stage of the course, in order, that has not passed for this tree."""
    for chapter in manifest.CHAPTERS.values():
        stage = state.current_stage(chapter)
        if stage is not None:
            return chapter, stage
    return None


def show_status(console: Console, tree: str = "exercises") -> int:
    """Chapters, stages passed, the next stage, its files and first hint, the command to run."""
    state = Progress.load(tree)
    heading = Text("LLM from Scratch · your progress", style="bold")
    heading.append(f"   tree: {tree}", style="")
    console.print(heading)
    console.print()
    for chapter in manifest.CHAPTERS.values():
        passed = sum(state.passed(chapter.name, s.name) for s in chapter.stages)
        table = Table(
            title=Text.assemble(
                (f"{chapter.name} · {chapter.title}", "bold"),
                (f"   {passed}/{len(chapter.stages)} stages passed", "dim"),
            ),
            title_justify="left",
            show_edge=False,
            pad_edge=False,
            box=None,
            header_style="bold",
        )
        table.add_column("", width=1)
        table.add_column("#", justify="right", style="dim")
        table.add_column("Stage")
        table.add_column("Status")
        table.add_column("Tests", justify="right")
        table.add_column("Last run", style="dim")
        for number, stage in enumerate(chapter.stages, 1):
            entry = state.entry(chapter.name, stage.name) or {}
            status = state.status(chapter.name, stage.name)
            tests = (
                f"{entry.get('tests_passed', 0)}/{entry.get('tests_total', 0)}" if entry else "–"
            )
            table.add_row(
                MARKS.get(status, "✗"),
                str(number),
                stage.name,
                status_text(status),
                tests,
                str(entry.get("at", "")).replace("T", " "),
            )
        console.print(table)
        console.print()

    found = next_stage(state)
    if found is None:
        console.print(Text("Every stage of every chapter passed. Well done!", style="bold green"))
        console.print(
            "Compare your code with the reference: "
            + command("solution", "CHAPTER", "STAGE", tree=tree),
            soft_wrap=True,
        )
        return EXIT_OK
    chapter, stage = found
    title = Text.assemble(("Next: ", "bold"), (f"{chapter.name} · {stage.name}", "bold cyan"))
    title.append(f" — {stage.title}")
    console.print(title)
    last = state.entry(chapter.name, stage.name)
    if last:
        status = Text("last run ", style="")
        status.append_text(status_text(str(last.get("status"))))
        if last.get("message"):
            status.append(f": {last['message']}")
        _wrapped_field(console, "Status:", status)
    folder = resolve_tree(tree)[1]
    edit = ", ".join(tree_file(folder, f) for f in stage.files)
    console.print(_field("Edit:", edit), soft_wrap=True)
    if stage.hints:
        _wrapped_field(console, "Hint:", stage.hints[0])
    console.print(_field("Read:", stage.doc))
    console.print(
        _field("Run:", command(chapter.name, stage.name, tree=tree), style="bold"), soft_wrap=True
    )
    console.print(
        _field("", f"{command('watch', chapter.name, tree=tree)}   (reruns it on every save)"),
        soft_wrap=True,
    )
    console.print(
        _field("More:", command("hint", chapter.name, stage.name, tree=tree)), soft_wrap=True
    )
    return EXIT_OK


# -- hint -----------------------------------------------------------------------------------


def show_hint(
    console: Console,
    chapter: Chapter,
    stage_name: str | None,
    tree: str = "exercises",
    level: int | None = None,
    reset: bool = False,
) -> int:
    """Show the next hint level of a stage (or level ``level``) and remember the level reached."""
    state = Progress.load(tree)
    if stage_name is None:
        stage = state.current_stage(chapter)
        if stage is None:
            console.print(f"Every stage of {chapter.name} passed: no hint needed.")
            return EXIT_OK
    else:
        stage = stage_named(chapter, stage_name)
    hints = stage.hints
    name = f"{chapter.name} · {stage.name}"
    if reset:
        state.set_hint_level(chapter.name, stage.name, 0)
        state.save()
        console.print(
            f"Hints for {name} start over: {command('hint', chapter.name, stage.name)}",
            soft_wrap=True,
        )
        return EXIT_OK
    if not hints:
        console.print(f"{name} has no hints: read {stage.doc}")
        return EXIT_OK
    seen = state.hint_level(chapter.name, stage.name)
    if level is not None:
        if not 1 <= level <= len(hints):
            raise UsageError(f"{name} has hint levels 1 to {len(hints)}, not {level}")
        new = level
    else:
        new = seen + 1
    if new > len(hints):  # every level already seen: recap, and where to go from here
        console.print(Text(f"{name}: all {len(hints)} hint(s)", style="bold"))
        _numbered(console, [(n, text, "") for n, text in enumerate(hints, 1)])
        console.print(
            Text(f"No more hints for {name}. Read {stage.doc}; once the stage passes, ")
            + Text(command("solution", chapter.name, stage.name, tree=tree), style="bold")
            + Text(" shows the reference."),
            soft_wrap=True,
        )
        return EXIT_OK
    state.set_hint_level(chapter.name, stage.name, new)
    state.save()
    console.print(Text(f"{name}: hint {new} of {len(hints)}", style="bold"))
    _numbered(
        console,
        [(n, text, "bold" if n == new else "dim") for n, text in enumerate(hints[:new], 1)],
    )
    if new < len(hints):
        more = command("hint", chapter.name, stage.name, tree=tree)
        console.print(Text(f"A stronger hint: {more}", style="dim"), soft_wrap=True)
    else:
        console.print(Text(f"That was the last hint. The full story: {stage.doc}", style="dim"))
    return EXIT_OK


# -- reset ----------------------------------------------------------------------------------


def backup_dir(tree: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = progress.state_dir() / "backups" / progress.tree_key(tree)
    folder = base / stamp
    n = 1
    while folder.exists():  # two resets in the same second
        n += 1
        folder = base / f"{stamp}-{n}"
    return folder


def confirm(question: str, stdin=None) -> bool:
    """Ask ``question`` [y/N] on the terminal; refuse (UsageError) where there is no terminal."""
    stdin = stdin if stdin is not None else sys.stdin
    try:
        interactive = stdin is not None and stdin.isatty()
    except (AttributeError, ValueError, OSError):
        interactive = False
    if not interactive:
        raise UsageError("not resetting without confirmation: stdin is not a terminal (add --yes)")
    print(f"{question} [y/N] ", end="", flush=True)
    answer = stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def reset_stage(
    console: Console,
    chapter: Chapter,
    stage: Stage,
    tree: str = "exercises",
    *,
    yes: bool = False,
    stdin=None,
) -> int:
    """Put the stage's files back to the pristine stub, after a backup of what is there."""
    value, folder = resolve_tree(tree)
    if value == "solutions":
        raise UsageError("the solutions tree is the reference: there is nothing to reset")
    pristine = {rel: stubs.stub_text(rel) for rel in stage.files}
    current = {}
    for rel in stage.files:
        path = folder / rel
        current[rel] = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
    changed = [rel for rel in stage.files if current[rel] != pristine[rel]]
    if not changed:
        console.print(f"{chapter.name} · {stage.name}: already the pristine stub, nothing to do.")
        return EXIT_OK
    shown = ", ".join(tree_file(folder, rel) for rel in changed)
    if not yes and not confirm(f"Reset {shown} to the stub? Your code is kept in a backup.", stdin):
        console.print("Nothing changed.")
        return 1
    backup = backup_dir(tree)
    for rel in changed:
        if current[rel] is not None:
            target = backup / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((folder / rel).read_bytes())
    for rel in changed:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pristine[rel], encoding="utf-8")
    # The stages that use these files no longer have the status they had.
    state = Progress.load(tree)
    state.forget(chapter.name, [s.name for s in chapter.stages if set(s.files) & set(changed)])
    with contextlib.suppress(OSError):
        state.save()
    console.print(f"Reset {shown} to the stub.", soft_wrap=True)
    if any(current[rel] is not None for rel in changed):
        console.print(f"Your previous code is in {tree_file(backup, '')}", soft_wrap=True)
    console.print(
        f"Start again with: {command(chapter.name, stage.name, tree=tree)}", soft_wrap=True
    )
    return EXIT_OK


# -- solution -------------------------------------------------------------------------------


def reference_text(rel: str) -> str:
    """The reference file as a learner would write it: no solution markers, no stub comments."""
    out, in_stub = [], False
    for line in (stubs.SOLUTIONS / rel).read_text(encoding="utf-8").splitlines(keepends=True):
        mark = line.strip()
        if mark == BEGIN:
            continue
        if mark == END:
            in_stub = False
            continue
        if mark == STUB:
            in_stub = True
            continue
        if not in_stub:
            out.append(line)
    return "".join(out)


def solution_diff(folder: Path, rel: str) -> str:
    """The unified diff from the learner's ``rel`` to the reference (empty when the same)."""
    path = folder / rel
    mine = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "".join(
        difflib.unified_diff(
            mine.splitlines(keepends=True),
            reference_text(rel).splitlines(keepends=True),
            fromfile=f"yours/{rel}",
            tofile=f"reference/{rel}",
        )
    )


def show_solution(
    console: Console,
    chapter: Chapter,
    stage: Stage,
    tree: str = "exercises",
    *,
    rerun: bool = False,
) -> int:
    """The reference beside the learner's code, as a diff, only once the stage has passed."""
    value, folder = resolve_tree(tree)
    if value == "solutions":
        raise UsageError("--tree solutions is the reference itself: show your own tree instead")
    name = f"{chapter.name} '{stage.name}'"
    if rerun:
        status = grade_stage(console, chapter, stage, tree).status
    else:
        status = Progress.load(tree).status(chapter.name, stage.name)
    if status != PASSED:
        why = "it has not been run yet" if status == NOT_RUN_YET else f"its last run: {status}"
        raise UsageError(
            f"the reference for {name} is shown once the stage passes ({why}): "
            f"{command(chapter.name, stage.name, tree=tree)}"
        )
    console.print(
        Text(f"{chapter.name} · {stage.name}: your code (-) and the reference (+)", style="bold")
    )
    for rel in stage.files:
        diff = solution_diff(folder, rel)
        if not diff:
            console.print(Text(f"{rel}: the same as the reference.", style="green"))
            continue
        if console.is_terminal:
            console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=False))
        else:
            console.print(Text(diff.rstrip("\n")), soft_wrap=True)
    return EXIT_OK


# -- grading runs ---------------------------------------------------------------------------


StageRunner = Callable[[Chapter, Stage, str, LiveProgress], StageResult]


def run_live(chapter: Chapter, stage: Stage, tree: str, live: LiveProgress) -> StageResult:
    """Run the stage, telling ``live`` about every test that finishes."""
    return run_stage(chapter, stage, tree, progress=live, sandbox=Sandbox(prefix=for_learner()))


def grade_stage(
    console: Console, chapter: Chapter, stage: Stage, tree: str, run: StageRunner = run_live
) -> StageResult:
    """Grade one stage (``solution --rerun``, each ``watch`` run) with a live progress line,
    and save its status in the progress state."""
    live = LiveProgress(console, chapter)
    live.stage_started(stage, chapter.stages.index(stage), len(chapter.stages))
    try:
        result = run(chapter, stage, tree, live)
    finally:
        live.close()
    live.stage_finished(stage, result)
    progress.record(tree, [result])
    return result


# -- after a grading run --------------------------------------------------------------------


@dataclass
class Session:
    """One grading run's side channel: the folder the stages write their artifacts into."""

    artifacts: Path


@contextlib.contextmanager
def grading_session() -> Iterator[Session]:
    """For the duration of a grading run, stage subprocesses get ``GRADER_ARTIFACTS``."""
    with artifacts.exported() as folder:
        yield Session(folder)


def after_grade(console: Console, result: ChapterResult, session: Session) -> None:
    """Save the run into the progress state and show what end-to-end stages left behind."""
    progress.record(result.tree, result.stages)
    ran = [s.name for s in result.stages if s.status != LOCKED]
    show_artifacts(console, artifacts.collect(session.artifacts, ran), result.chapter, result.tree)


def show_artifacts(
    console: Console,
    found: list[artifacts.Artifact],
    chapter: str,
    tree: str,
    plot: Callable[[artifacts.Artifact, Path], Path | None] = artifacts.plot_losses,
) -> None:
    """Generated text in a panel; the loss curve as a PNG (matplotlib) or a sparkline."""
    for art in found:
        console.print()
        console.print(Text(art.title or f"{chapter} · {art.stage}: what your model does", "bold"))
        if art.samples:
            for line in art.samples:
                console.print(Text("  " + line))
        if art.sample:
            console.print(Panel(Text(art.sample), title="generated text", title_align="left"))
        if art.losses:
            first, last = art.losses[0], art.losses[-1]
            numbers = f"loss {first:.3f} → {last:.3f} over {len(art.losses)} steps"
            if art.val_loss is not None:
                numbers += f", validation loss {art.val_loss:.3f}"
            console.print(_field("Loss:", numbers))
            console.print(_field("", artifacts.sparkline(art.losses), style="cyan"))
            key = progress.tree_key(tree)
            target = progress.state_dir() / "artifacts" / key / f"{chapter}-{art.stage}-loss.png"
            picture = None
            with contextlib.suppress(Exception):  # a broken matplotlib never breaks grading
                picture = plot(art, target)
            if picture is not None:
                console.print(
                    _field("Curve:", tree_file(picture.parent, picture.name)), soft_wrap=True
                )
        elif art.val_loss is not None:
            console.print(_field("Loss:", f"validation loss {art.val_loss:.3f}"))


__all__ = [
    "COMMANDS",
    "add_parsers",
    "after_grade",
    "grading_session",
    "reference_text",
    "run",
    "show_status",
]
