"""What the learner sees: progress while stages run, then a table, the first problem, the score.

Everything here only reads the dataclasses of :mod:`grader.runner`; nothing here runs tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console, RenderableType
from rich.padding import Padding
from rich.status import Status
from rich.table import Table
from rich.text import Text

from .manifest import Chapter, Stage
from .runner import ChapterResult, StageResult, TestResult
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


def make_console(**kwargs) -> Console:
    return Console(highlight=False, **kwargs)


def status_text(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


class LiveProgress:
    """A spinner line per stage on a terminal; one plain line per finished stage elsewhere."""

    def __init__(self, console: Console, chapter: Chapter) -> None:
        self.console = console
        self.chapter = chapter
        self.status: Status | None = None
        self.label = ""

    def stage_started(self, stage: Stage, index: int, count: int) -> None:
        self.label = f"{self.chapter.name} · stage {index + 1}/{count}: {stage.name}"
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


def stage_table(result: ChapterResult) -> Table:
    table = Table(title=None, show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("Stage")
    table.add_column("Status")
    table.add_column("Tests", justify="right")
    table.add_column("Points", justify="right")
    table.add_column("Time", justify="right")
    for number, stage in enumerate(result.stages, 1):
        is_locked = stage.status == LOCKED
        table.add_row(
            str(number),
            stage.name,
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
    result: ChapterResult, stage: StageResult, verbose: bool = False
) -> list[RenderableType]:
    """The first problem of ``stage`` in plain sentences, with the hint and the doc to read."""
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
        fields.add_row("Hint:", stage.hint)
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
    if verbose:
        for t in stage.tests:
            if t.status in (PASSED, SKIPPED):
                continue
            row = Text(f"✗ {t.name}: ")
            row.append_text(status_text(t.status))
            row.append(f": {t.message}" if t.message else "")
            lines.append(_indented(row))
    return lines


def render(console: Console, result: ChapterResult, verbose: bool = False) -> None:
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
        for line in problem_lines(result, problem, verbose):
            console.print(line)
        if verbose:
            for stage in result.stages:
                if stage is not problem and stage.status not in (PASSED, LOCKED):
                    console.print()
                    for line in problem_lines(result, stage, verbose):
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
    elif result.ok:
        console.print(Text("Every stage passed.", style="bold green"))


def render_list(console: Console, chapters: dict[str, Chapter]) -> None:
    for chapter in chapters.values():
        table = Table(
            title=Text(f"{chapter.name} · {chapter.title}", style="bold"),
            title_justify="left",
            show_edge=False,
            pad_edge=False,
            box=None,
            header_style="bold",
        )
        table.add_column("#", justify="right", style="dim")
        table.add_column("Stage")
        table.add_column("What you build")
        table.add_column("Files")
        table.add_column("Points", justify="right")
        for number, stage in enumerate(chapter.stages, 1):
            table.add_row(
                str(number), stage.name, stage.title, ", ".join(stage.files), str(stage.points)
            )
        console.print(table)
        console.print()
