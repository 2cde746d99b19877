"""The one reducer of a stage's events: the plugin's JSON lines in, a :class:`StageResult` out.

The runner feeds every line to :meth:`StageEvents.add` as it is written (so the live display hears
about each test as it finishes) and asks :meth:`StageEvents.result` once the process has ended.
The lines are those of ``grader/plugin.py`` (``collected``, ``collect_error``, ``hidden``,
``start``, ``test``, ``exit``, ``finish``) and ``grader/guard.py`` (``flag``).

A stage whose process did not end by itself gets a :class:`Stop` from the runner: the test it was
running takes the stop's status and message, the tests it never reached are ``not run``.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .results import StageResult, TestResult, Where
from .statuses import CRASHED, ERROR, FAILED, NOT_RUN, PASSED, PRIORITY, SKIPPED, TIMED_OUT

_FAULT_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


@dataclass(frozen=True)
class Stop:
    """Why the process did not finish its tests: ``status`` and ``message`` go to the test it
    was in; ``decides`` makes them the stage's (a crash, the stage's time limit) rather than one
    more test result among the others (a test that timed out)."""

    status: str
    message: str
    where: Where | None = None
    decides: bool = True
    unreached: str = "not run: the stage stopped before this test"


def _name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def _test(r: dict[str, Any]) -> TestResult:
    return TestResult(
        nodeid=r["nodeid"],
        name=r.get("name") or _name(r["nodeid"]),
        status=r.get("status", FAILED),
        message=r.get("message", ""),
        seconds=float(r.get("seconds", 0.0)),
        doc=r.get("doc", ""),
        outcome=r.get("outcome", ""),
        where=Where.from_record(r.get("where")),
        exception=r.get("exception"),
    )


class StageEvents:
    """What the stage's process has said so far."""

    def __init__(self) -> None:
        self.seen = False  # any line at all (the plugin was loaded)
        self.collected: list[str] = []
        self.started: list[str] = []
        self.tests: dict[str, TestResult] = {}
        self.collect_errors: list[dict[str, Any]] = []
        self.exit: dict[str, Any] | None = None
        self.finished = False
        self.flags: list[str] = []
        self.warnings: list[str] = []  # shown, no effect on the score (grader/forbidden.py)
        self.hidden_excluded = 0
        self.startup: float | None = None  # seconds until the first test started (the runner's)

    @property
    def running(self) -> str | None:
        """The test that started and has not finished (the one a dead process died in)."""
        return next((n for n in reversed(self.started) if n not in self.tests), None)

    def add(self, r: dict[str, Any]) -> TestResult | None:
        """Take one line into account; returns the test it finished, if it finished one."""
        self.seen = True
        event = r.get("event")
        if event == "flag" and r.get("reason", "integrity") not in self.flags:
            self.flags.append(r.get("reason", "integrity"))
        elif event == "warning" and str(r.get("message")) not in self.warnings:
            self.warnings.append(str(r.get("message")))
        elif event == "hidden" and not r.get("included"):
            self.hidden_excluded = int(r.get("count", 0))
        elif event == "collected":
            self.collected = list(r.get("nodeids", []))
        elif event == "collect_error":
            self.collect_errors.append(r)
        elif event == "start":
            self.started.append(r["nodeid"])
        elif event == "test":
            test = _test(r)
            self.tests[test.nodeid] = test
            return test
        elif event == "exit":
            self.exit = r
        elif event == "finish":
            self.finished = True
        return None

    # -- the end ---------------------------------------------------------------------------

    def crash(self, returncode: int, log_tail: str, tree: Path) -> Stop | None:
        """How the process died, when it did not finish by itself (None when it did)."""
        if self.finished and self.running is None and returncode >= 0:
            return None
        if returncode < 0:
            where = _fault_where(log_tail, tree)
            message = f"the test process was killed by {_signal_name(-returncode)}"
        elif self.exit is not None:
            where = Where.from_record(self.exit.get("where"))
            message = (
                f"your code called os._exit({self.exit.get('code')}), which ends the process at "
                "once"
            )
        else:
            where = None
            message = f"the test process stopped unexpectedly (exit code {returncode})"
        return Stop(CRASHED, message + (f" (at {where})" if where is not None else ""), where)

    def result(
        self,
        fields: dict[str, Any],
        *,
        test_file: str,
        stop: Stop | None,
        returncode: int,
        log_tail: str,
        tree: Path,
        seconds: float,
    ) -> StageResult:
        """The stage's result; ``fields`` are the manifest's (``grader.runner.stage_fields``),
        ``test_file`` the stage's pytest file (named when pytest could not run it)."""
        common = fields | {
            "seconds": round(seconds, 3),
            "returncode": returncode,
            "log_tail": log_tail,
            "flags": tuple(self.flags),
            "warnings": tuple(self.warnings),
            "hidden_excluded": self.hidden_excluded,
            "startup": round(self.startup or 0.0, 3),
        }
        if not self.seen and stop is None and returncode > 0:
            # pytest stopped before the plugin was even configured (a broken conftest, a bad
            # option): nothing the learner's code did, so say what pytest said.
            lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
            said = next(
                (x for x in reversed(lines) if "error" in x.lower()), lines[-1] if lines else ""
            )
            message = f"pytest could not run {test_file} (exit code {returncode}): {said}"
            return StageResult(status=ERROR, message=message, **common)

        stop = stop or self.crash(returncode, log_tail, tree)
        if stop is not None and not self.collected and not self.collect_errors:
            stop = replace(stop, message=stop.message + " while loading your code")
        if stop is None and self.collect_errors:
            first = self.collect_errors[0]
            status = first.get("status") or ERROR
            if status == FAILED:  # an exception while importing the test file is an error here
                status = ERROR
            return StageResult(
                status=status,
                message=first.get("message", "could not load the tests"),
                where=Where.from_record(first.get("where")),
                **common,
            )

        tests = self._in_order(stop)
        if stop is not None and stop.decides:
            failed = next((t for t in tests if t.status == stop.status), None)
            return StageResult(
                status=stop.status,
                tests=tests,
                message=stop.message,
                where=stop.where,
                failed_test=failed,
                **common,
            )
        if not tests:
            last = log_tail.strip().splitlines()[-1] if log_tail.strip() else ""
            message = f"no tests ran in {test_file}" + (f": {last}" if last else "")
            return StageResult(status=ERROR, message=message, **common)
        counted = [t for t in tests if t.status != SKIPPED]
        if counted and all(t.passed for t in counted):
            return StageResult(status=PASSED, tests=tests, **common)
        status = next(s for s in (*PRIORITY, NOT_RUN, SKIPPED) if any(t.status == s for t in tests))
        if status in (NOT_RUN, SKIPPED):
            status = ERROR
        first = next(t for t in tests if t.status == status)
        return StageResult(
            status=status,
            tests=tests,
            message=first.message,
            where=first.where,
            failed_test=first,
            **common,
        )

    def _in_order(self, stop: Stop | None) -> tuple[TestResult, ...]:
        """Every test in collection order; after a stop, the unfinished ones too."""
        if stop is None:
            return tuple(self.tests[n] for n in self.collected if n in self.tests) + tuple(
                t for n, t in self.tests.items() if n not in self.collected
            )
        running = self.running
        results = []
        cut = False  # past the first test that timed out: the stage stopped there
        for nodeid in self.collected or self.started:
            if cut:
                results.append(TestResult(nodeid, _name(nodeid), NOT_RUN, stop.unreached))
            elif nodeid in self.tests:
                results.append(self.tests[nodeid])
                # A test that finished in the moment before the kill still counts as not run,
                # so the score does not depend on how fast the supervisor was.
                cut = stop.status == TIMED_OUT and self.tests[nodeid].status == TIMED_OUT
            elif nodeid == running:
                results.append(
                    TestResult(nodeid, _name(nodeid), stop.status, stop.message, where=stop.where)
                )
            else:
                results.append(TestResult(nodeid, _name(nodeid), NOT_RUN, stop.unreached))
        return tuple(results)


def _fault_where(log: str, tree: Path) -> Where | None:
    """The innermost tree frame of a faulthandler dump (it lists the most recent call first)."""
    for filename, line, function in _FAULT_FRAME.findall(log):
        try:
            rel = Path(filename).resolve().relative_to(tree).as_posix()
        except (ValueError, OSError):
            continue
        return Where(rel, int(line), function)
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
