"""What the learner sees: progress while stages run, then a table, the first problem, the score;
the generated text and loss curve an end-to-end stage left; the exact commands to type next.

Everything here only reads the dataclasses of :mod:`grader.results`; nothing here runs tests.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from rich.console import Console, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.status import Status
from rich.table import Table
from rich.text import Text

from . import artifacts, progress
from .manifest import Chapter, Stage
from .results import ChapterResult, StageResult, TestResult
from .statuses import (
    CRASHED,
    ERROR,
    FAILED,
    LOCKED,
    NOT_RUN,
    NOT_STARTED,
    PASSED,
    PUBLIC_PASSED,
    SKIPPED,
    TIMED_OUT,
)

STYLES = {
    PASSED: "bold green",
    PUBLIC_PASSED: "green",
    FAILED: "bold red",
    NOT_STARTED: "yellow",
    ERROR: "bold red",
    TIMED_OUT: "bold magenta",
    CRASHED: "bold red",
    LOCKED: "dim",
    SKIPPED: "dim",
    NOT_RUN: "dim",
}
MARKS = {PASSED: "✓", LOCKED: "·", SKIPPED: "-", NOT_RUN: "·"}


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (``python -m grader ch2 | head -1``): print nothing more, but
        finish the run, so that its progress is saved (rich's own default exits at once)."""
        self.quiet = True
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def make_console(**kwargs) -> Console:
    return _Console(highlight=False, **kwargs)


def status_text(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def stage_label(name: str, optional: bool) -> str:
    return f"{name} (optional)" if optional else name


def command(*words: str, tree: str = "exercises") -> str:
    """The exact command line to type: ``python -m grader ch2 attention [--tree T]``."""
    parts = ["python", "-m", "grader", *words]
    if tree != "exercises":
        parts += ["--tree", tree]
    return " ".join(shlex.quote(p) for p in parts)


class LiveProgress:
    """A spinner line per stage on a terminal; one plain line per finished stage elsewhere."""

    def __init__(self, console: Console, chapter: Chapter) -> None:
        self.console = console
        self.chapter = chapter
        self.status: Status | None = None
        self.label = ""

    def stage_started(self, stage: Stage, index: int, count: int) -> None:
        self.label = f"{self.chapter.name} · stage {index + 1}/{count}: "
        self.label += stage_label(stage.name, stage.optional)
        if self.console.is_terminal:
            self.status = self.console.status(f"{self.label} …")
            self.status.start()

    def test_finished(self, stage: Stage, test: TestResult, done: int, total: int) -> None:
        if self.status is not None:
            self.status.update(f"{self.label} … {done}/{total or '?'} tests")

    def stage_finished(self, stage: Stage, result: StageResult) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        line = Text(f"{MARKS.get(result.status, '✗')} {self.label}: ")
        line.append_text(status_text(result.label))
        line.append(f" ({result.passed}/{result.total} tests, {_seconds(result.seconds)})")
        self.console.print(line)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def tree_file(tree_path: str | Path, rel: str) -> str:
    """A path the learner can open: relative to the current folder when it is below it
    (``exercises/ch2/attention.py``), absolute otherwise."""
    path = Path(tree_path) / rel
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def plain_table(*headers: str) -> Table:
    """The borderless table every listing uses: numbers right-aligned, the row number dim."""
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for header in headers:
        numeric = header in ("#", "Tests", "Points", "Time")
        table.add_column(
            header, justify="right" if numeric else "left", style="dim" if header == "#" else ""
        )
    return table


def stage_table(result: ChapterResult) -> Table:
    table = plain_table("#", "Stage", "Status", "Tests", "Points", "Time")
    for number, stage in enumerate(result.stages, 1):
        is_locked = stage.status == LOCKED
        table.add_row(
            str(number),
            stage_label(stage.name, stage.optional),
            status_text(stage.label),
            "–" if is_locked else f"{stage.passed}/{stage.total}",
            f"{stage.score:g}/{stage.points}",
            "–" if is_locked else _seconds(stage.seconds),
        )
    return table


def _indented(renderable: RenderableType, indent: int = 2) -> Padding:
    """``renderable`` with every wrapped line indented, not only the first."""
    return Padding(renderable, (0, 0, 0, indent), expand=False)


def problem_lines(
    result: ChapterResult, stage: StageResult, verbose: bool = False, hints_seen: int = 0
) -> list[RenderableType]:
    """The first problem of ``stage`` in plain sentences, with the hint that fits the failed
    check (and how far the learner has gone in the stage's hints) and the doc to read."""
    title = Text(f"{stage.name}: ", style="bold")
    title.append_text(status_text(stage.status))
    if stage.failed_test is not None:
        title.append(f" in {stage.failed_test.name}", style="dim")
    lines: list[RenderableType] = [title, _indented(Text(stage.message or "(no message)"))]

    fields = Table.grid(padding=(0, 1))
    fields.add_column(style="bold", no_wrap=True, min_width=6)
    fields.add_column()
    test = stage.failed_test
    if test is not None and test.doc:
        fields.add_row("Test:", test.doc)
    if stage.where is not None and stage.status != NOT_STARTED:
        where = stage.where
        place = tree_file(result.tree_path, where.file) + (f":{where.line}" if where.line else "")
        fields.add_row("Where:", place + (f", in {where.function}" if where.function else ""))
    elif stage.files and stage.status == NOT_STARTED:
        fields.add_row("Edit:", ", ".join(tree_file(result.tree_path, f) for f in stage.files[:1]))
    if stage.hint:
        hint = Text(stage.hint)
        if stage.hint_count > 1:
            level = f"hint {stage.hint_level} of {stage.hint_count}"
            if hints_seen:
                level += f"; you have read up to hint {min(hints_seen, stage.hint_count)}"
            more = command("hint", result.chapter, stage.name, tree=result.tree)
            hint.append(f"\n({level}: {more})", style="dim")
        fields.add_row("Hint:", hint)
    if stage.doc:
        fields.add_row("Read:", stage.doc)
    if fields.row_count:
        lines.append(_indented(fields))
    others = [t for t in stage.tests if t.status not in (PASSED, SKIPPED) and t is not test]
    if others and not verbose:
        lines.append(
            _indented(
                Text(
                    f"({len(others)} more test(s) of this stage did not pass; -v lists them)", "dim"
                )
            )
        )
    for t in others if verbose else ():  # the first one is already shown above
        row = Text(f"✗ {t.name}: ")
        row.append_text(status_text(t.status))
        row.append(f": {t.message}" if t.message else "")
        lines.append(_indented(row))
    return lines


def render(
    console: Console,
    result: ChapterResult,
    verbose: bool = False,
    hints_seen: Mapping[str, int] | None = None,
) -> None:
    """The table, integrity flags, the first problem (every problem with ``verbose``), the
    score. ``hints_seen``: the hint level each stage's learner has reached (saved progress)."""
    hints_seen = hints_seen or {}
    console.print()
    heading = Text.assemble(
        (f"{result.chapter} · {result.title}", "bold"), f"   tree: {result.tree}", style=""
    )
    console.print(heading)
    console.print(stage_table(result))
    console.print()
    for stage in result.stages:
        for flag in stage.flags:
            console.print(Text(f"Integrity: {stage.name}: {flag} (no credit)", style="bold red"))
        for warning in stage.warnings:
            note = " (an instructor's run gives this stage 0)"
            console.print(Text(f"Warning: {stage.name}: {warning}{note}", style="bold yellow"))
    problem = result.first_problem
    if problem is not None:
        for line in problem_lines(result, problem, verbose, hints_seen.get(problem.name, 0)):
            console.print(line)
        if verbose:
            for stage in result.stages:
                if stage is not problem and stage.status not in (PASSED, LOCKED):
                    console.print()
                    for line in problem_lines(
                        result, stage, verbose, hints_seen.get(stage.name, 0)
                    ):
                        console.print(line)
        console.print()
    passed = sum(s.ok for s in result.stages)
    score = Text.assemble(
        ("Score: ", "bold"),
        f"{result.score:g} / {result.max_score} points",
        f"   ({passed} of {len(result.stages)} stage(s) passed, {_seconds(result.seconds)})",
    )
    console.print(score)
    if result.ok and any(s.hidden_excluded for s in result.stages):
        console.print(
            Text(
                "Every stage passed its public tests (hidden tests run when your instructor "
                "grades).",
                style="bold green",
            )
        )
    elif result.ok and all(s.ok for s in result.stages):
        console.print(Text("Every stage passed.", style="bold green"))
    elif result.ok:
        skipped = ", ".join(s.name for s in result.stages if not s.ok)
        console.print(
            Text(f"Every required stage passed (optional, not yet: {skipped}).", "bold green")
        )


def render_list(console: Console, chapters: dict[str, Chapter]) -> None:
    for chapter in chapters.values():
        console.print(Text(f"{chapter.name} · {chapter.title}", style="bold"))
        table = plain_table("#", "Stage", "What you build", "Files", "Points")
        for number, stage in enumerate(chapter.stages, 1):
            table.add_row(
                str(number),
                stage_label(stage.name, stage.optional),
                stage.title,
                ", ".join(stage.files),
                str(stage.points),
            )
        console.print(table)
        console.print()


# -- pieces the learner's other commands share (grader.learner, grader.watch) -----------------


def numbered(console: Console, items: list[tuple[int, str, str]]) -> None:
    """``  1. text`` lines whose continuation lines stay indented under the text."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", width=4)
    grid.add_column()
    for number, text, style in items:
        grid.add_row(Text(f"{number}.", style=style), Text(text, style=style))
    console.print(grid)


def wrapped_field(console: Console, label: str, value: str | Text) -> None:
    """A labelled field whose long text wraps under itself, not under the label."""
    grid = Table.grid()
    grid.add_column(width=9, style="bold")
    grid.add_column()
    grid.add_row("  " + label, value)
    console.print(grid)


def field(label: str, value: str | Text, style: str = "") -> Text:
    line = Text("  " + label.ljust(7), style="bold")
    line.append_text(value if isinstance(value, Text) else Text(value, style=style))
    return line


def show_artifacts(
    console: Console,
    found: list[artifacts.Artifact],
    chapter: str,
    tree: str,
    plot: Callable[[artifacts.Artifact, Path], Path | None] = artifacts.plot_losses,
) -> None:
    """Generated text in a panel; the loss curve as a sparkline, and as a PNG in
    ``.grader/artifacts/<tree>/`` where matplotlib is importable."""
    for art in found:
        console.print()
        console.print(Text(art.title or f"{chapter} · {art.stage}: what your model does", "bold"))
        for line in art.samples or ():
            console.print(Text("  " + line))
        if art.sample:
            console.print(Panel(Text(art.sample), title="generated text", title_align="left"))
        if art.losses:
            first, last = art.losses[0], art.losses[-1]
            numbers = f"loss {first:.3f} → {last:.3f} over {len(art.losses)} steps"
            if art.val_loss is not None:
                numbers += f", validation loss {art.val_loss:.3f}"
            console.print(field("Loss:", numbers))
            console.print(field("", artifacts.sparkline(art.losses), style="cyan"))
            picture = None
            with contextlib.suppress(Exception):  # a broken matplotlib never breaks grading
                folder = progress.state_dir() / "artifacts" / progress.tree_key(tree)
                picture = plot(art, folder / f"{chapter}-{art.stage}-loss.png")
            if picture is not None:
                console.print(
                    field("Curve:", tree_file(picture.parent, picture.name)), soft_wrap=True
                )
        elif art.val_loss is not None:
            console.print(field("Loss:", f"validation loss {art.val_loss:.3f}"))
