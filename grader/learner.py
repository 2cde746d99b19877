"""The learner's loop: where am I, what next, a hint, start a stage over, compare with the reference.

The commands (their options are in :mod:`grader.cli`)::

    python -m grader                           # where you are and the exact command to run next
    python -m grader status [--tree T]         # the same, for any tree
    python -m grader hint ch2 [STAGE]          # the next hint, from a nudge to the exact idea
    python -m grader reset ch2 STAGE [--yes]   # the stage's files back to the stub, with a backup
    python -m grader solution ch2 STAGE        # the reference beside your code, once it passes

and what a grading run (``grade``, ``watch``: :mod:`grader.watch`) does before and after its
stages. Everything reads and writes the saved progress of :mod:`grader.progress`; nothing here runs
a test except :func:`grade_stage` (``solution --rerun``, ``watch``). A request the grader will not
serve (an unknown stage, ``reset`` without confirmation, ``solution`` before the stage passes)
raises :class:`~grader.tree.UsageError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text

from . import artifacts, manifest, progress, stubs
from .manifest import Chapter, Stage
from .progress import Progress
from .results import ChapterResult, StageResult
from .runner import run_stage, select_stages
from .server import learner_sandbox
from .statuses import EXIT_OK, LOCKED, NOT_RUN, PASSED
from .tree import UsageError, resolve_tree
from .ui import (
    MARKS,
    LiveProgress,
    command,
    field,
    numbered,
    plain_table,
    show_artifacts,
    stage_label,
    status_text,
    tree_file,
    wrapped_field,
)


def chapter_named(name: str) -> Chapter:
    chapters = manifest.CHAPTERS
    if name not in chapters:
        raise UsageError(f"unknown chapter {name!r} (chapters: {', '.join(chapters)})")
    return chapters[name]


def stage_named(chapter: Chapter, name: str) -> Stage:
    return select_stages(chapter, name)[0]


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
        required = sum(not s.optional for s in chapter.stages)
        optional = f" ({required} required)" if required < len(chapter.stages) else ""
        console.print(
            Text.assemble(
                (f"{chapter.name} · {chapter.title}", "bold"),
                (f"   {passed}/{len(chapter.stages)} stages passed{optional}", "dim"),
            )
        )
        table = plain_table("", "#", "Stage", "Status", "Tests", "Last run")
        for number, stage in enumerate(chapter.stages, 1):
            entry = state.entry(chapter.name, stage.name) or {}
            status = state.status(chapter.name, stage.name)
            tests = (
                f"{entry.get('tests_passed', 0)}/{entry.get('tests_total', 0)}" if entry else "–"
            )
            table.add_row(
                MARKS.get(status, "✗"),
                str(number),
                stage_label(stage.name, stage.optional),
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
        wrapped_field(console, "Status:", status)
    folder = resolve_tree(tree)[1]
    edit = ", ".join(tree_file(folder, f) for f in stage.files)
    console.print(field("Edit:", edit), soft_wrap=True)
    if stage.hints:
        wrapped_field(console, "Hint:", stage.hints[0])
    console.print(field("Read:", stage.doc))
    console.print(
        field("Run:", command(chapter.name, stage.name, tree=tree), style="bold"), soft_wrap=True
    )
    console.print(
        field("", f"{command('watch', chapter.name, tree=tree)}   (reruns it on every save)"),
        soft_wrap=True,
    )
    console.print(
        field("More:", command("hint", chapter.name, stage.name, tree=tree)), soft_wrap=True
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
        numbered(console, [(n, text, "") for n, text in enumerate(hints, 1)])
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
    numbered(
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


def solution_diff(folder: Path, rel: str) -> str:
    """The unified diff from the learner's ``rel`` to the reference (empty when the same)."""
    path = folder / rel
    mine = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "".join(
        difflib.unified_diff(
            mine.splitlines(keepends=True),
            stubs.reference_text(rel).splitlines(keepends=True),
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
        why = "it has not been run yet" if status == NOT_RUN else f"its last run: {status}"
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
    return run_stage(chapter, stage, tree, listener=live, sandbox=learner_sandbox(tree))


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
    progress.record(tree, [result])
    live.stage_finished(stage, result)
    return result


@dataclass
class Session:
    """One grading run's side channel: the folder the stages write their artifacts into."""

    artifacts: Path


@contextlib.contextmanager
def grading_session() -> Iterator[Session]:
    """For the duration of a grading run, stage subprocesses get ``GRADER_ARTIFACTS``."""
    with artifacts.exported() as folder:
        yield Session(folder)


def record(result: ChapterResult) -> None:
    """Save the run into the tree's progress state."""
    progress.record(result.tree, result.stages)


def hints_seen(result: ChapterResult) -> dict[str, int]:
    """The hint level the learner has reached in each stage of ``result`` (0: none yet)."""
    with contextlib.suppress(OSError, UsageError):
        state = Progress.load(result.tree)
        return {s.name: state.hint_level(result.chapter, s.name) for s in result.stages}
    return {}


def show_session_artifacts(console: Console, result: ChapterResult, session: Session) -> None:
    """What the end-to-end stages of this run left behind: generated text, the loss curve."""
    ran = [s.name for s in result.stages if s.status != LOCKED]
    show_artifacts(console, artifacts.collect(session.artifacts, ran), result.chapter, result.tree)
