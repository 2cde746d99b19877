"""The machine-readable report: ``python -m grader ch2 --json FILE``.

Schema ``llmfs-grader/1`` (one JSON object; seconds are wall-clock floats)::

    {
      "schema": "llmfs-grader/1",
      "chapter": "ch2", "title": "The Transformer",
      "tree": "exercises",                  # as given: exercises, solutions or a path
      "tree_path": "/abs/path/exercises",
      "ok": false,                          # every stage graded passed (the exit code is 0)
      "score": 12.5, "max_score": 50,       # partial credit, see grader.results
      "seconds": 8.1,
      "totals": {"stages": 4, "stages_passed": 1, "tests": 30, "tests_passed": 19,
                 "by_status": {"passed": 1, "failed": 1, "locked": 2}},   # stages per status
      "stages": [
        {
          "name": "attention", "title": "...",
          "status": "passed",               # passed, failed, not started, error, timed out,
                                            # crashed, locked
          "label": "passed",                # the status as shown: "public tests passed" when
                                            # hidden tests were left out (learner's run)
          "hidden_excluded": 0,             # tests marked hidden that this run left out
          "flags": [],                      # integrity problems (grader/instructor/integrity.py,
                                            # grader/guard.py): a flagged stage scores 0
          "warnings": [],                   # shown only, e.g. a forbidden API in a learner's
                                            # run (grader/forbidden.py)
          "verdicts": null,                 # learner's run: the stage's process decided; an
                                            # instructor's run: {"by": "grader", "total": 15,
                                            # "verified": 9, "overridden": 0} (grader/verdicts.py:
                                            # tests compared with the reference's values, and
                                            # reported passes the grader refused)
          "points": 10, "score": 10.0,
          "tests_passed": 12, "tests_total": 12, "seconds": 2.4,
          "message": "",                    # the first problem, one or two sentences
          "where": null,                    # or {"file": "ch2/attention.py", "line": 42,
                                            #     "function": "MultiHeadAttention.forward"}
          "failed_test": null,              # nodeid of the test the message comes from
          "hint": "...", "doc": "docs/chapter02/2_2_attention.md",
          "files": ["ch2/attention.py"],
          "tests": [
            {"nodeid": "tests/ch2/test_attention.py::test_x", "name": "test_x",
             "doc": "first line of the test's docstring",
             "status": "passed",            # a stage status but locked, or skipped, not run
             "outcome": "passed",           # pytest's word: passed, failed, error, skipped
             "message": "", "where": null, "exception": null, "seconds": 0.01}
          ]
        }
      ]
    }

The batch grader (``grader/instructor/batch.py``) adds ``"learner"`` and ``"integrity"`` (every static
finding, as ``"file:line: reason"``) at the top level of each learner's report.
Locked stages have ``"tests": []`` and ``tests_total`` 0. Fields are only ever added within a
schema version.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..results import ChapterResult, StageResult, TestResult, Where

SCHEMA = "llmfs-grader/1"


def _where(where: Where | None) -> dict[str, Any] | None:
    if where is None:
        return None
    return {"file": where.file, "line": where.line, "function": where.function}


def case_dict(test: TestResult) -> dict[str, Any]:
    return {
        "nodeid": test.nodeid,
        "name": test.name,
        "doc": test.doc,
        "status": test.status,
        "outcome": test.outcome,
        "message": test.message,
        "where": _where(test.where),
        "exception": test.exception,
        "seconds": round(test.seconds, 4),
    }


def stage_dict(stage: StageResult) -> dict[str, Any]:
    return {
        "name": stage.name,
        "title": stage.title,
        "status": stage.status,
        "label": stage.label,
        "hidden_excluded": stage.hidden_excluded,
        "flags": list(stage.flags),
        "warnings": list(stage.warnings),
        "verdicts": None if stage.verdicts is None else {"by": "grader", **vars(stage.verdicts)},
        "points": stage.points,
        "score": stage.score,
        "tests_passed": stage.passed,
        "tests_total": stage.total,
        "seconds": round(stage.seconds, 3),
        "message": stage.message,
        "where": _where(stage.where),
        "failed_test": stage.failed_test.nodeid if stage.failed_test else None,
        "hint": stage.hint,
        "doc": stage.doc,
        "files": list(stage.files),
        "tests": [case_dict(t) for t in stage.tests],
    }


def to_dict(result: ChapterResult) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "chapter": result.chapter,
        "title": result.title,
        "tree": result.tree,
        "tree_path": result.tree_path,
        "ok": result.ok,
        "score": result.score,
        "max_score": result.max_score,
        "seconds": round(result.seconds, 3),
        "totals": {
            "stages": len(result.stages),
            "stages_passed": sum(s.ok for s in result.stages),
            "tests": sum(s.total for s in result.stages),
            "tests_passed": sum(s.passed for s in result.stages),
            "by_status": dict(Counter(s.status for s in result.stages)),
        },
        "stages": [stage_dict(s) for s in result.stages],
    }


def write_json(
    result: ChapterResult, path: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write the report (plus the top-level fields ``extra``) to ``path`` (its folder is
    created) and return the path."""
    return write_data(to_dict(result) | (extra or {}), path)


def write_data(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``data`` as indented JSON to ``path`` (its folder is created); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return target
