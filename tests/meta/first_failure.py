"""The first failing test of a stage on each of several trees, in one process (a test helper).

``python -m tests.meta.first_failure JOBS.json RESULTS.json`` where JOBS.json is a list of
``{"name", "tests", "tree"}`` (a stage's test file, a tree folder): for each job it runs the
stage's tests with ``-x`` against the tree, as the grader would, and writes ``{name: {"nodeid",
"type", "message"}}`` (``null`` when every test passed). One process imports torch once for
every tree, instead of one grader subprocess per tree: a broken copy costs its tests, not a
new interpreter.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

from grader.tree import ENV_VAR, PACKAGE


class FirstFailure:
    """A pytest plugin that keeps the first failed test's exception type and message."""

    def __init__(self) -> None:
        self.found: dict[str, str] | None = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.failed and self.found is None:
            error = call.excinfo.value if call.excinfo is not None else None
            self.found = {
                "nodeid": item.nodeid,
                "type": type(error).__name__ if error is not None else "",
                "message": str(error) if error is not None else report.longreprtext,
            }


def first_failure(tests: str, tree: str) -> dict[str, str] | None:
    """Run ``tests`` against ``tree`` until the first failure, in this process."""
    os.environ[ENV_VAR] = tree
    for name in list(sys.modules):  # the previous tree, and the test modules bound to it
        if name == PACKAGE or name.startswith((PACKAGE + ".", "tests.ch")):
            del sys.modules[name]
    collector = FirstFailure()
    # no:unraisableexception: its five gc.collect() at the end of every session took 1 s of a
    # broken copy's 1.2 s (as in the grader's stage command).
    args = [tests, "-x", "-q", "--tb=no", "-p", "no:cacheprovider", "-p", "no:randomly"]
    args += ["-p", "no:unraisableexception"]
    pytest.main(args, plugins=[collector])
    return collector.found


def main(argv: list[str]) -> int:
    jobs_path, results_path = argv
    with open(jobs_path, encoding="utf-8") as f:
        jobs: list[dict[str, Any]] = json.load(f)
    results = {job["name"]: first_failure(job["tests"], job["tree"]) for job in jobs}
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
