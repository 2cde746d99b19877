"""The learner's saved progress: the latest status of every stage, and the hints seen so far.

Every grading run of a tree (``python -m grader ch2``, ``watch``) records, per chapter and stage,
the status it just got; ``python -m grader`` (no arguments), ``hint``, ``solution`` and ``watch``
read it back. One small JSON file per tree, never inside the tree itself (a submission folder is
never written to), and never in the checkout for a tree outside it:

- ``exercises``: ``.grader/progress.json`` (the repository's git-ignored ``.grader/`` folder);
- another tree inside the checkout (``solutions``): ``.grader/progress/<name>-<hash>.json``,
  keyed by the tree's resolved path;
- a tree outside the checkout: the same name under the user's state folder,
  ``$XDG_STATE_HOME/llm-from-scratch/`` (by default ``~/.local/state/llm-from-scratch/``).

``GRADER_STATE_DIR`` replaces all of these folders (the tests point it at a tmp folder). The file::

    {
      "schema": "llmfs-progress/1",
      "tree": "exercises", "tree_path": "/abs/path/exercises",
      "stages": {"ch2": {"attention": {"status": "passed", "tests_passed": 12,
                                       "tests_total": 12, "score": 10.0, "message": "",
                                       "at": "2024-05-01T10:00:00"}}},
      "hints": {"ch2": {"attention": 2}}            # the hint level reached (1-based)
    }

A stage that a run left ``locked`` keeps its previous record: locked means "not run this time".
A missing or unreadable file is an empty state, and a value of the wrong type is dropped (control
characters in text are escaped, ``grader/text.py``). Writes are atomic (a temporary file, then
``os.replace``), so an interrupted run never leaves half a file, and :meth:`Progress.save` merges
under a lock file: it re-reads the file and applies only what this process changed, so two
processes saving at once (a ``watch`` and a ``grade``) lose nothing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import Chapter, Stage
from .results import StageResult
from .statuses import LOCKED, NOT_RUN, PASSED
from .text import escape_controls
from .tree import REPO_ROOT, resolve_tree

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: saves are atomic but not merged
    fcntl = None  # type: ignore[assignment]

SCHEMA = "llmfs-progress/1"
STATE_ENV = "GRADER_STATE_DIR"


def state_dir() -> Path:
    """The folder for everything the grader keeps for the learner (``.grader/`` by default)."""
    override = os.environ.get(STATE_ENV)
    return Path(override).expanduser().resolve() if override else REPO_ROOT / ".grader"


def tree_key(tree: str | os.PathLike[str]) -> str:
    """A file-name-safe key for a tree: ``exercises``, or ``<folder name>-<hash of its path>``."""
    value, path = resolve_tree(tree)
    if value == "exercises":
        return "exercises"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name) or "tree"
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:10]
    return f"{name}-{digest}"


def user_state_dir() -> Path:
    """Where progress for trees outside the checkout goes (never into the checkout)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base).expanduser() / "llm-from-scratch"


def state_path(tree: str | os.PathLike[str]) -> Path:
    key = tree_key(tree)
    if key == "exercises":
        return state_dir() / "progress.json"
    inside = resolve_tree(tree)[1].is_relative_to(REPO_ROOT)
    folder = state_dir() if inside or os.environ.get(STATE_ENV) else user_state_dir()
    return folder / "progress" / f"{key}.json"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``.<name>.lock`` beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# The fields of a stage record and their types; anything else in a record is dropped on load.
_RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "status": str,
    "tests_passed": int,
    "tests_total": int,
    "score": (int, float),
    "message": str,
    "at": str,
}
_ABSENT = object()


def _clean_record(value: Any) -> dict[str, Any]:
    """The fields of a stage record that have their type, text with control characters escaped."""
    return {
        key: escape_controls(item) if isinstance(item, str) else item
        for key, item in value.items()
        if key in _RECORD_FIELDS
        and isinstance(item, _RECORD_FIELDS[key])
        and not isinstance(item, bool)
    }


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    """``(stages, hints)`` from the file at ``path``; empty for a missing or broken file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}  # never run, or a file the learner broke: start afresh
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        data = {}
    stages = _nested(data.get("stages"), lambda v: isinstance(v, dict))
    stages = {c: {s: _clean_record(r) for s, r in items.items()} for c, items in stages.items()}
    hints = _nested(data.get("hints"), lambda v: isinstance(v, int) and not isinstance(v, bool))
    return stages, hints


def _merge(disk: dict, base: dict, mine: dict) -> dict:
    """``disk`` with the ``{chapter: {stage: value}}`` entries that changed from ``base`` to
    ``mine`` applied (set or removed); entries this process did not touch keep the disk's."""
    merged = {chapter: dict(items) for chapter, items in disk.items()}
    for chapter in set(base) | set(mine):
        before, after = base.get(chapter, {}), mine.get(chapter, {})
        for stage in set(before) | set(after):
            old, new = before.get(stage, _ABSENT), after.get(stage, _ABSENT)
            if old == new:
                continue
            if new is _ABSENT:
                merged.get(chapter, {}).pop(stage, None)
            else:
                merged.setdefault(chapter, {})[stage] = new
    return {chapter: items for chapter, items in merged.items() if items}


def _nested(value: Any, keep: Callable[[Any], bool]) -> dict[str, dict[str, Any]]:
    """``{chapter: {stage: item}}`` from ``value``, without whatever has another shape."""
    if not isinstance(value, dict):
        return {}
    return {
        str(chapter): {str(k): v for k, v in items.items() if keep(v)}
        for chapter, items in value.items()
        if isinstance(items, dict)
    }


@dataclass
class Progress:
    """The saved state of one tree. Load with :meth:`load`, change, then :meth:`save`."""

    tree: str
    tree_path: str
    path: Path
    stages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    hints: dict[str, dict[str, int]] = field(default_factory=dict)
    # What was on disk when loaded or last saved: save() applies only the changes since.
    _base: tuple[dict, dict] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._base = copy.deepcopy((self.stages, self.hints))

    @classmethod
    def load(cls, tree: str | os.PathLike[str] = "exercises") -> Progress:
        value, folder = resolve_tree(tree)
        path = state_path(tree)
        stages, hints = _read(path)
        return cls(os.fspath(tree), str(folder), path, stages, hints)

    def save(self) -> Path:
        """Merge this state's changes into the file on disk, under its lock."""
        with locked(self.path):
            disk_stages, disk_hints = _read(self.path)
            self.stages = _merge(disk_stages, self._base[0], self.stages)
            self.hints = _merge(disk_hints, self._base[1], self.hints)
            data = {
                "schema": SCHEMA,
                "tree": self.tree,
                "tree_path": self.tree_path,
                "stages": self.stages,
                "hints": self.hints,
            }
            write_atomic(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
            self._base = copy.deepcopy((self.stages, self.hints))
        return self.path

    # -- stages ---------------------------------------------------------------------------

    def record_stage(self, result: StageResult) -> None:
        """Remember ``result`` as the latest status of its stage (a locked result is skipped)."""
        if result.status == LOCKED:
            return
        self.stages.setdefault(result.chapter, {})[result.name] = {
            "status": result.status,
            "tests_passed": result.passed,
            "tests_total": result.total,
            "score": result.score,
            "message": result.message,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def forget(self, chapter: str, names: Iterable[str]) -> None:
        """Drop the records of stages whose code changed under them (``reset``)."""
        records = self.stages.get(chapter, {})
        for name in names:
            records.pop(name, None)

    def entry(self, chapter: str, stage: str) -> dict[str, Any] | None:
        record = self.stages.get(chapter, {}).get(stage)
        return record if isinstance(record, dict) else None

    def status(self, chapter: str, stage: str) -> str:
        record = self.entry(chapter, stage)
        return str(record.get("status", NOT_RUN)) if record else NOT_RUN

    def passed(self, chapter: str, stage: str) -> bool:
        return self.status(chapter, stage) == PASSED

    def current_stage(self, chapter: Chapter) -> Stage | None:
        """The first required stage of ``chapter`` that has not passed (None when every one
        has): an optional stage is never the one a learner is sent to next."""
        return next(
            (s for s in chapter.stages if not s.optional and not self.passed(chapter.name, s.name)),
            None,
        )

    # -- hints ----------------------------------------------------------------------------

    def hint_level(self, chapter: str, stage: str) -> int:
        level = self.hints.get(chapter, {}).get(stage, 0)
        return level if isinstance(level, int) and level > 0 else 0

    def set_hint_level(self, chapter: str, stage: str, level: int) -> None:
        if level <= 0:
            self.hints.get(chapter, {}).pop(stage, None)
        else:
            self.hints.setdefault(chapter, {})[stage] = level


def record(tree: str | os.PathLike[str], results: Iterable[StageResult]) -> Path | None:
    """Save ``results`` into the tree's progress file; a state that cannot be written is skipped
    (progress is a convenience: it never makes a grading run fail)."""
    try:
        state = Progress.load(tree)
        for result in results:
            state.record_stage(result)
        return state.save()
    except OSError:
        return None
