"""Shared fixtures: every test runs seeded, on CPU, on one torch thread; a timeout is one line.

Seeded so a failure repeats exactly. One thread because the tensors here are small, so a second
thread buys little, while on shared cores (the grader beside an editor, batch grading with
--jobs 2, a 2-core CI runner) torch's spinning worker threads make training up to 10x slower:
the ch2 e2e stage measured 58 ms/step on one thread against 600 ms/step on two under load.
"""

from __future__ import annotations

import os

import pytest
import torch

# The test suite leaves no stage server (grader/server.py) running behind it: every grading run it
# makes starts its stages as plain subprocesses; tests/grader/test_server.py tests the server.
os.environ.setdefault("GRADER_SERVER", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """For the whole session, so that module-scoped fixtures (the e2e stages train a model in
    one) run on one thread too: a function-scoped fixture is set up after them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test or fixture that ran past pytest-timeout's limit is reported in one line, where it
    was stopped, instead of a traceback through torch's source (hundreds of lines)."""
    outcome = yield
    report = outcome.get_result()
    error = call.excinfo.value if call.excinfo is not None else None
    if not (report.failed and isinstance(error, pytest.fail.Exception)):
        return
    message = str(error).strip()
    if not message.startswith("Timeout (>"):
        return
    frames = [f for f in call.excinfo.traceback if "pytest" not in str(f.path)]
    frame = frames[-1] if frames else None
    where = f" (stopped at {frame.path}:{frame.lineno + 1})" if frame is not None else ""
    report.longrepr = f"{message.splitlines()[0]} In the {call.when} of {item.name}{where}."
