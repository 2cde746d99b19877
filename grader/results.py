"""What grading says, as data: a test's result, a stage's, a chapter's. Nothing here runs or prints.

Stage status, from its tests (a learner fixes the first problem in this order):
``passed`` when every test that ran passed (skipped tests do not count); otherwise the first of
``error``, ``crashed``, ``timed out``, ``failed``, ``not started`` that any test has
(:data:`grader.statuses.PRIORITY`); stages after the first one that did not pass are ``locked``
unless the chapter is graded with ``--all``.

Score: partial credit, ``stage.points * passed / total`` (rounded to 2 decimals), where ``total``
counts the stage's collected tests minus skipped ones (a test the stage never reached, ``not run``,
counts as not passed). Locked stages score 0, and so do flagged ones (integrity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .statuses import LOCKED, PASSED, PUBLIC_PASSED, SKIPPED


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
class Verdicts:
    """How the grader decided a stage's tests itself (an instructor's run, grader/verdicts.py):
    ``verified`` of the ``total`` tests compared with the reference's values, ``overridden``
    passes reported by the stage's process that the grader did not accept."""

    total: int
    verified: int
    overridden: int = 0


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
    startup: float = 0.0  # of ``seconds``, those before the first test started (imports)
    message: str = ""  # the first problem, in one or two sentences ("" when passed or locked)
    where: Where | None = None
    failed_test: TestResult | None = None  # the test whose message this is, if any
    hint: str = ""  # the hint that fits the failed test (manifest: Hint.tests), else the first
    hint_level: int = 0  # its number among the stage's hints (1-based; 0: no hint)
    hint_count: int = 0  # how many hints the stage has
    doc: str = ""
    files: tuple[str, ...] = ()
    returncode: int | None = None
    log_tail: str = ""  # the end of pytest's own output, for diagnosing a crash
    flags: tuple[str, ...] = ()  # integrity problems (grader/instructor/integrity.py): score 0
    hidden_excluded: int = 0  # tests marked hidden that this (learner's) run left out
    warnings: tuple[str, ...] = ()  # shown, no effect on the score (grader/forbidden.py)
    optional: bool = False  # an optional stage (manifest: Stage.optional) locks nothing
    verdicts: Verdicts | None = None  # None: the stage's process decided (a learner's run)

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
        """Every required stage graded passed (an optional stage that did not pass is allowed)."""
        counted = [s for s in self.stages if not s.optional] or self.stages
        return bool(counted) and all(s.ok for s in counted)

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
