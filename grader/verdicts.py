"""Verdicts decided by the grader, not by the process under test (an instructor's run).

The stage's process runs the learner's code, so anything it says about itself can be forged: a
results line that says "passed", a patched ``torch.allclose``, a ``pytest.skip()``. In an
instructor's run (``batch``, ``grade --hidden``) the grader therefore decides each test itself:

1. The answer key (:class:`Key`, made by ``grader/answer_key.py``). The stage's tests run on the
   reference (``solutions/``), in the sandbox, with every test included, in a process that never
   sees learner code. Every check the tests make (``tests/helpers.py`` through
   ``grader/checks.py``) leaves its kind, the value it expected and its tolerance; a check whose
   expected value depends on the code under test (an oracle given the learner's own weights) is
   marked not ``stable``.
2. The learner's run writes only values (``GRADER_CHECKS``), never verdicts.
3. :func:`judge` decides each test of the key:

   - a test that did not run, was skipped, or is missing from the record fails ("counts as
     failed, never as absent"); the stage's test count comes from the key;
   - a test its process reported as passed passes only if the grader received every one of its
     checks, in order, of the key's kind, and each agrees: a *stable* value (one the key holds)
     is compared with the key's value at the key's tolerance; another is compared with the
     value the test computed in the process (so a patched ``torch.isclose`` changes nothing);
     a condition (``check(...)``) must be true;
   - a test its process reported as not passed keeps that status and message (a process gains
     nothing by failing).

What it does not stop: a submission that rewrites the tests' helpers inside its own process can
report, as its output, the value a test computed as expected (the oracle runs in the same
process). The key makes that a deliberate rewrite of the grader's helpers, which the in-process
guard (``grader/guard.py``) flags, rather than one forged line in a file; :class:`Verdicts`
reports per stage how many tests the grader compared against the key and how many it could only
check for consistency.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import checks
from .results import StageResult, TestResult, Verdicts
from .statuses import FAILED, PASSED, PRIORITY, SKIPPED

SCHEMA = "llmfs-key/1"


@dataclass(frozen=True)
class CheckKey:
    kind: str
    expected: Any  # encoded (grader/checks.py)
    atol: float = 0.0
    rtol: float = 0.0
    stable: bool = False  # the same whatever the code under test does with the RNG


@dataclass(frozen=True)
class TestKey:
    __test__ = False  # not a pytest test class

    nodeid: str
    checks: tuple[CheckKey, ...]
    counted: bool = True  # same number of checks in both reference runs: the count is enforced

    @property
    def verified(self) -> bool:
        """The grader compares every value the test checks with the reference's (a condition,
        ``check(...)``, is computed in the process and only has to be true)."""
        values = [c for c in self.checks if c.kind != checks.TRUE]
        return self.counted and bool(values) and all(c.stable for c in values)


@dataclass(frozen=True)
class Key:
    stage: str
    tests: tuple[TestKey, ...]
    skipped: tuple[str, ...] = ()  # skipped on the reference here (a missing optional package)
    hidden: bool = True  # made with the tests marked hidden: the learner's run includes them

    def to_json(self) -> str:
        data = {
            "schema": SCHEMA,
            "stage": self.stage,
            "skipped": list(self.skipped),
            "hidden": self.hidden,
            "tests": [
                {"nodeid": t.nodeid, "counted": t.counted, "checks": [vars(c) for c in t.checks]}
                for t in self.tests
            ],
        }
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Key:
        data = json.loads(text)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} key")
        tests = tuple(
            TestKey(t["nodeid"], tuple(CheckKey(**c) for c in t["checks"]), t["counted"])
            for t in data["tests"]
        )
        return cls(data["stage"], tests, tuple(data["skipped"]), bool(data["hidden"]))


# -- the learner's run ----------------------------------------------------------------------


def test_id(nodeid: str) -> str:
    """A test's id within its stage file (``test_x[param]``): the same whatever the working
    directory made of the file's part of pytest's node id."""
    return nodeid.split("::", 1)[-1]


def read_checks(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The check lines of a run, by test, in order; malformed lines are ignored (they count as
    missing checks, which fail)."""
    try:
        return parse_checks(path.read_bytes())
    except OSError:
        return {}


def parse_checks(data: bytes) -> dict[str, list[dict[str, Any]]]:
    """:func:`read_checks` of a file's bytes (the runner reads them through a descriptor it
    opened before the stage started, so the stage cannot swap the file for a link)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            nodeid, n, kind = record["nodeid"], record["n"], record["kind"]
            record["atol"], record["rtol"] = float(record["atol"]), float(record["rtol"])
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(nodeid, str) or kind not in checks.KINDS or not isinstance(n, int):
            continue
        made = found.setdefault(test_id(nodeid), [])
        if n == len(made):  # a test run twice, or lines out of order, leave the first run's
            made.append(record)
    return found


def judge(result: StageResult, key: Key, records: dict[str, list[dict[str, Any]]]) -> StageResult:
    """``result`` with every verdict decided by the grader (the module docstring's rules)."""
    reported = {test_id(t.nodeid): t for t in result.tests}
    tests: list[TestResult] = []
    overridden = 0
    for test_key in key.tests:
        test = reported.get(test_id(test_key.nodeid))
        name = test_key.nodeid.rsplit("::", 1)[-1]
        if test is None:
            message = "did not run (the reference runs it), so it counts as failed"
            tests.append(TestResult(test_key.nodeid, name, FAILED, message))
        elif test.status == SKIPPED:
            message = "was skipped, but it runs on the reference, so it counts as failed"
            tests.append(replace(test, status=FAILED, message=message))
        elif test.status == PASSED:
            problem = _disagreement(test_key, records.get(test_id(test_key.nodeid), []))
            if problem is None:
                tests.append(test)
            else:
                overridden += 1
                message = f"the grader does not accept this pass: {problem}"
                tests.append(replace(test, status=FAILED, message=message))
        else:
            tests.append(test)
    verdicts = Verdicts(len(key.tests), sum(t.verified for t in key.tests), overridden)
    warnings = result.warnings
    if overridden:
        warnings += (
            f"the grader's own comparison with the reference overrode {overridden} test(s) "
            "that the stage's process reported as passed",
        )
    judged = replace(result, tests=tuple(tests), verdicts=verdicts, warnings=warnings)
    if result.status != PASSED:
        return judged  # a crash, a time limit, a failure: the process's own account stands
    first = next((t for t in tests if t.status != PASSED), None)
    if first is None:
        return judged
    status = next(s for s in PRIORITY if any(t.status == s for t in tests))
    first = next(t for t in tests if t.status == status)
    return replace(
        judged, status=status, message=first.message, where=first.where, failed_test=first
    )


def _disagreement(test_key: TestKey, got: list[dict[str, Any]]) -> str | None:
    """Why the values a passing test sent do not support its pass; None when they do."""
    expected = test_key.checks
    if len(got) < len(expected):
        return f"it made {len(got)} of the {len(expected)} checks the reference makes"
    if test_key.counted and len(got) > len(expected):
        return f"it made {len(got)} checks where the reference makes {len(expected)}"
    for i, (check, sent) in enumerate(zip(expected, got, strict=False)):
        if sent["kind"] != check.kind:
            return f"check {i + 1} was a {sent['kind']!r} check, not {check.kind!r}"
        target = check.expected if check.stable else sent["expected"]
        if check.kind == checks.TRUE:
            target = True
        if not agree(check.kind, sent["got"], target, vars(check)):
            whose = "the reference's" if check.stable else "the expected"
            return f"check {i + 1} ({check.kind}) does not match {whose} value"
    return None


def agree(kind: str, got: Any, expected: Any, tolerance: dict[str, Any]) -> bool:
    """The grader's own comparison of two encoded values (its torch, its code)."""
    if kind in (checks.BELOW, checks.AT_LEAST):
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (got, expected)
        ):
            return False
        return got < expected if kind == checks.BELOW else got >= expected
    if kind == checks.SAME and _is_tensor(got) and _is_tensor(expected):
        try:  # torch.equal's rule: the same shape and values, whatever the dtypes
            a, b = checks.decode_tensor(got), checks.decode_tensor(expected)
            return a.shape == b.shape and bool((a.double() == b.double()).all())
        except (ValueError, RuntimeError, KeyError, TypeError):
            return False
    if kind != checks.CLOSE or not _is_tensor(got) or not _is_tensor(expected):
        return got == expected
    import torch

    try:
        a, b = checks.decode_tensor(got), checks.decode_tensor(expected)
    except (ValueError, RuntimeError, KeyError, TypeError):
        return False
    if a.shape != b.shape:
        return False
    kinds_differ = checks.is_floating(got["tensor"]) != checks.is_floating(expected["tensor"])
    if (kinds_differ or got["tensor"] == "bool") and got["tensor"] != expected["tensor"]:
        return False  # check_close's own dtype rule
    atol, rtol = float(tolerance["atol"]), float(tolerance["rtol"])
    return bool(
        torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True)
        if a.numel()
        else True
    )


def _is_tensor(value: Any) -> bool:
    return isinstance(value, dict) and {"tensor", "shape", "data"} <= value.keys()
