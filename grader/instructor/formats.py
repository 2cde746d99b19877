"""Reports for other tools: JUnit XML (CI servers, LMS plug-ins) and Gradescope's ``results.json``.

Both are built from a :class:`grader.results.ChapterResult`, like the JSON report
(``grader/instructor/report.py``), and show the learner's one-line messages, never tracebacks.

**JUnit XML** (``--junit FILE``): ``<testsuites>`` with one ``<testsuite name="ch2.attention">``
per stage and one ``<testcase>`` per test. A test that ``failed`` or is ``not started`` has a
``<failure>``; ``error``, ``crashed``, ``timed out`` and ``not run`` have an ``<error>``;
``skipped`` has ``<skipped>``; each with ``message`` (the learner's sentence) and ``type`` (the
grader's status). A stage without tests (locked, or its tests could not be loaded) has one
testcase named after the stage that carries the stage's message; integrity flags add a
testcase ``integrity`` with a ``<failure>``. Control characters in names and messages are written
as escapes (``grader/text.py``), so the file is always well-formed XML.

**Gradescope** (``--gradescope FILE``; the fields of Gradescope's autograder specification,
https://gradescope-autograders.readthedocs.io/en/latest/specs/): top-level ``score``,
``execution_time`` (seconds), ``output`` (the summary), ``visibility``, ``stdout_visibility``,
``extra_data`` and ``tests``: one entry per stage with ``score``, ``max_score`` (the stage's
points), ``status`` (``"passed"``/``"failed"``), ``name``, ``number`` (``"3.2"``: chapter 3,
stage 2), ``output`` (status, message, where to look, hint, doc; tests that did not pass),
``tags`` and ``visibility``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..results import ChapterResult, StageResult
from ..statuses import (
    CRASHED,
    ERROR,
    FAILED,
    LOCKED,
    NOT_RUN,
    NOT_STARTED,
    PASSED,
    SKIPPED,
    TIMED_OUT,
)
from ..text import escape_controls
from .report import write_data

FAILURES = (FAILED, NOT_STARTED)
ERRORS = (ERROR, CRASHED, TIMED_OUT, NOT_RUN)
VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")


# -- JUnit XML ------------------------------------------------------------------------------


def _case(suite: ET.Element, classname: str, name: str, status: str, message: str, seconds=0.0):
    # Messages and names come from the learner's code: no control character reaches the XML.
    name, message = escape_controls(name), escape_controls(message)
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")
    if status in FAILURES:
        ET.SubElement(case, "failure", message=message, type=status).text = message
    elif status in ERRORS:
        ET.SubElement(case, "error", message=message, type=status).text = message
    elif status in (SKIPPED, LOCKED):
        ET.SubElement(case, "skipped", message=message or status)
    return case


def junit_tree(result: ChapterResult, name: str | None = None) -> ET.ElementTree:
    """The JUnit XML document for ``result`` (``name`` labels the whole run, e.g. a learner)."""
    label = escape_controls(name or f"{result.chapter} · {result.title}")  # a learner's folder name
    root = ET.Element("testsuites", name=label)
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for stage in result.stages:
        classname = f"{result.chapter}.{stage.name}"
        suite = ET.SubElement(root, "testsuite", name=classname)
        if stage.tests:
            for test in stage.tests:
                _case(suite, classname, test.name, test.status, test.message, test.seconds)
        else:
            _case(suite, classname, stage.name, stage.status, stage.message, stage.seconds)
        for flag in stage.flags:
            _case(suite, classname, "integrity", FAILED, f"integrity: {flag}")
        counts = {
            "tests": len(suite),
            "failures": sum(c.find("failure") is not None for c in suite),
            "errors": sum(c.find("error") is not None for c in suite),
            "skipped": sum(c.find("skipped") is not None for c in suite),
        }
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{stage.seconds:.3f}")
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{result.seconds:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(result: ChapterResult, path: str | os.PathLike[str], name: str | None = None):
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    junit_tree(result, name).write(target, encoding="utf-8", xml_declaration=True)
    return target


# -- Gradescope -----------------------------------------------------------------------------


def _stage_output(stage: StageResult) -> str:
    lines = [f"{stage.label} ({stage.passed}/{stage.total} tests)"]
    if stage.hidden_excluded:
        lines.append(f"{stage.hidden_excluded} hidden test(s) were not run.")
    if stage.message:
        lines.append(stage.message)
    if stage.where is not None and stage.status != NOT_STARTED:
        lines.append(f"Where: {stage.where}")
    for flag in stage.flags:
        lines.append(f"Integrity: {flag} (no credit for this stage)")
    if stage.status not in (PASSED, LOCKED):
        if stage.hint:
            lines.append(f"Hint: {stage.hint}")
        if stage.doc:
            lines.append(f"Read: {stage.doc}")
        others = [t for t in stage.tests if t.status not in (PASSED, SKIPPED)]
        if others:
            lines.append("Tests that did not pass:")
            lines.extend(f"- {t.name}: {t.status}: {t.message}" for t in others)
    return "\n".join(lines)


def gradescope_dict(
    result: ChapterResult, visibility: str = "visible", chapter_number: int | None = None
) -> dict[str, Any]:
    """Gradescope's ``results.json`` for ``result`` (see the module docstring)."""
    if visibility not in VISIBILITIES:
        raise ValueError(f"visibility must be one of {VISIBILITIES}, got {visibility!r}")
    number = chapter_number or int("".join(c for c in result.chapter if c.isdigit()) or 0)
    tests = []
    for index, stage in enumerate(result.stages, 1):
        tests.append(
            {
                "score": stage.score,
                "max_score": stage.points,
                "status": "passed" if stage.ok else "failed",
                "name": f"{result.chapter} {stage.name}: {stage.title}",
                "number": f"{number}.{index}",
                "output": _stage_output(stage),
                "tags": [result.chapter, stage.name, stage.status],
                "visibility": visibility,
            }
        )
    passed = sum(s.ok for s in result.stages)
    summary = (
        f"{result.chapter} · {result.title}: {result.score:g} / {result.max_score} points, "
        f"{passed} of {len(result.stages)} stage(s) passed."
    )
    flagged = [s.name for s in result.stages if s.flags]
    if flagged:
        summary += f" Integrity problems in: {', '.join(flagged)} (no credit for those stages)."
    if any(s.hidden_excluded for s in result.stages):
        summary += " Hidden tests were not run: these are public-test results."
    return {
        "score": result.score,
        "execution_time": round(result.seconds),
        "output": summary,
        "visibility": visibility,
        "stdout_visibility": "hidden",
        "extra_data": {"chapter": result.chapter, "max_score": result.max_score},
        "tests": tests,
    }


def write_gradescope(result: ChapterResult, path: str | os.PathLike[str], **kwargs) -> Path:
    return write_data(gradescope_dict(result, **kwargs), path)
