"""The pytest plugin the grader loads into every stage's subprocess (``-p grader.plugin``).

It turns what pytest knows about each test into one record a learner can read, and appends it as
one JSON line to the file named by the environment variable ``GRADER_RESULTS``, flushed at once:
a process that dies in the middle of a stage still leaves every record it had written, and the
``start`` line of the test that was running when it died. Without ``GRADER_RESULTS`` the plugin
does nothing, so loading it in an ordinary pytest run is harmless.

Lines, in order (every line is one JSON object with an ``event`` key):

- ``{"event": "collected", "nodeids": [...]}`` once collection is done;
- ``{"event": "collect_error", "nodeid", "status", "message", "where", "exception"}`` for a test
  file that could not be imported (a SyntaxError in the tree, for example);
- ``{"event": "start", "nodeid"}`` before each test;
- ``{"event": "test", "nodeid", "name", "doc", "outcome", "status", "message", "where",
  "exception", "seconds"}`` after each test (see :func:`classify` for ``status``);
- ``{"event": "hidden", "count", "included"}`` when the stage has tests marked ``hidden``
  (left out unless ``GRADER_HIDDEN=1``: an instructor's run);
- ``{"event": "flag", "reason", "where"}`` from the integrity guard (``grader/guard.py``);
- ``{"event": "exit", "code", "where"}`` when learner code calls ``os._exit`` (just before it
  runs);
- ``{"event": "finish", "exitstatus"}`` when the session ends normally.

In an instructor's run the values of every check go to a second file, ``GRADER_CHECKS``
(``grader/checks.py``), from which the grader decides the verdicts itself (``grader/verdicts.py``):
nothing written here can make a test pass there.

``where`` is ``{"file", "line", "function"}`` for the deepest traceback frame inside the tree
under test (the learner's code), tree-relative, or ``null`` when the error did not pass through it.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from . import checks
from .statuses import (
    CRASHED,
    ERROR,
    FAILED,
    HIDDEN_ENV,
    NOT_STARTED,
    PASSED,
    RESULTS_ENV,
    SKIPPED,
    TIMED_OUT,
)
from .tree import PACKAGE, tree_path

# Exceptions that mean Python could not load or resolve the learner's code at all.
_LOAD_ERRORS = (SyntaxError, ImportError, NameError)
_TIMEOUT_PREFIX = "Timeout (>"  # pytest-timeout's message, signal method
_MAX_MESSAGE = 600
READING = "grader_reading"  # an exception's attribute: this function's result, made elsewhere
_OUT_OF_MEMORY = ("can't allocate memory", "cannot allocate memory", "not enough memory")


class _Places:
    """Turns file names into tree-relative ``file`` strings, and tells tree frames apart."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._cache: dict[str, str | None] = {}

    def in_tree(self, filename: str) -> str | None:
        """``filename`` relative to the tree (``ch2/attention.py``), or None outside it."""
        if filename not in self._cache:
            rel: str | None = None
            if self.root is not None and not filename.startswith("<"):
                try:
                    rel = Path(filename).resolve().relative_to(self.root).as_posix()
                except (ValueError, OSError):
                    rel = None
            self._cache[filename] = rel
        return self._cache[filename]

    def deepest(self, tb: TracebackType | None) -> dict[str, Any] | None:
        """The innermost frame of ``tb`` that runs code of the tree."""
        found = None
        while tb is not None:
            code = tb.tb_frame.f_code
            rel = self.in_tree(code.co_filename)
            if rel is not None:
                function = getattr(code, "co_qualname", code.co_name)  # co_qualname: 3.11+
                found = {"file": rel, "line": tb.tb_lineno, "function": function}
            tb = tb.tb_next
        return found

    def raised_in_tree(self, tb: TracebackType | None) -> bool:
        """Whether the exception was raised (not merely passed through) by tree code."""
        last = None
        while tb is not None:
            last = tb
            tb = tb.tb_next
        return last is not None and self.in_tree(last.tb_frame.f_code.co_filename) is not None


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def _at(where: dict[str, Any] | None) -> str:
    if where is None:
        return ""
    return f" (at {where['file']}:{where['line']}, in {where['function']})"


def _unwrap(exc: BaseException) -> BaseException:
    """pytest wraps import failures of a test file in a CollectError: get the real exception."""
    if type(exc).__name__ == "CollectError" and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _loading_file(tb: TracebackType | None, places: _Places) -> str | None:
    """The tree file Python was compiling when ``tb`` was raised (importlib's ``source_path``)."""
    while tb is not None:
        path = tb.tb_frame.f_locals.get("source_path") or tb.tb_frame.f_locals.get("path")
        if isinstance(path, str) and places.in_tree(path):
            return places.in_tree(path)
        tb = tb.tb_next
    return None


def classify(exc: BaseException, places: _Places) -> dict[str, Any]:
    """What went wrong, for the learner: ``status``, one-line ``message``, ``where``, ``exception``.

    - ``timed out``: pytest-timeout stopped the test (it was still running after the limit);
    - ``crashed``: the code called ``sys.exit()`` or ran out of memory;
    - ``error``: Python could not load the code (SyntaxError, ImportError, NameError) or the
      module lacks a name the tests use;
    - ``not started``: a ``NotImplementedError`` raised by the tree (the stub's own message);
    - ``failed``: anything else, an assertion (a ``LearnerFailure`` message is shown as is) or an
      exception that the learner's code raised, with the place it was raised.
    """
    exc = _unwrap(exc)
    reading = getattr(exc, READING, None)
    if isinstance(reading, dict):  # read where it happened, in another process (grader/ranks.py)
        return dict(reading)
    tb = exc.__traceback__
    where = places.deepest(tb)
    kind = type(exc).__name__
    text = str(exc)
    info: dict[str, Any] = {"exception": kind, "where": where}

    if isinstance(exc, pytest.fail.Exception) and text.startswith(_TIMEOUT_PREFIX):
        limit = text[len(_TIMEOUT_PREFIX) :].split("s)", 1)[0]
        message = f"still running after {limit} s, the time limit for this test"
        return info | {"status": TIMED_OUT, "message": message + _at(where)}
    if isinstance(exc, SystemExit):
        message = f"your code called sys.exit({exc.code!r}), which would stop the whole program"
        return info | {"status": CRASHED, "message": message + _at(where)}
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(s in text.lower() for s in _OUT_OF_MEMORY)
    ):
        return info | {"status": CRASHED, "message": "ran out of memory" + _at(where)}
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        message = "wrote more output than the grader allows (printing in a loop?)" + _at(where)
        return info | {"status": CRASHED, "message": message}
    if isinstance(exc, (SyntaxError, ValueError)) and "null bytes" in text:
        rel = _loading_file(tb, places) or "a file of your tree"
        where = {"file": rel, "line": None, "function": None}
        message = f"{rel} is not Python source code (it contains null bytes)"
        return info | {"status": ERROR, "message": message, "where": where}
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith(PACKAGE + "."):
        rel = exc.name[len(PACKAGE) + 1 :].replace(".", "/") + ".py"
        message = f"{rel} is missing from your tree (was it deleted, moved or renamed?)"
        return info | {"status": ERROR, "message": message, "where": None}
    if isinstance(exc, SyntaxError) and exc.filename is None:
        rel = _loading_file(tb, places) or "a file of your tree"
        message = f"{rel} is not valid Python source: {exc.msg}"
        return info | {"status": ERROR, "message": message, "where": None}
    if isinstance(exc, SyntaxError):
        rel = places.in_tree(exc.filename or "") or exc.filename or "?"
        where = {"file": rel, "line": exc.lineno, "function": None}
        message = f"{rel}:{exc.lineno}: {kind}: {exc.msg}"
        return info | {"status": ERROR, "message": message, "where": where}
    if isinstance(exc, _LOAD_ERRORS):
        place = f"{where['file']}:{where['line']}: " if where else ""
        return info | {"status": ERROR, "message": f"{place}{kind}: {_first_line(text)}"}
    if isinstance(exc, AttributeError) and where is None and "llm_tree." in text:
        # The test asked the learner's module for a name it does not define.
        message = f"{_first_line(text.replace('llm_tree.', ''))}: was it renamed or deleted?"
        return info | {"status": ERROR, "message": message}
    if isinstance(exc, NotImplementedError) and places.raised_in_tree(tb):
        message = _first_line(text) or f"not implemented yet{_at(where)}"
        return info | {"status": NOT_STARTED, "message": message}
    if isinstance(exc, AssertionError):
        if type(exc).__name__ == "LearnerFailure":
            message = " ".join(text.split())  # already a sentence for the learner
        else:
            message = _first_line(text) or "an assertion failed"
        return info | {"status": FAILED, "message": message + _at(where)}
    if isinstance(exc, pytest.fail.Exception):
        return info | {"status": FAILED, "message": _first_line(text) + _at(where)}
    message = f"{kind}: {_first_line(text)}" if text else kind
    if isinstance(exc, (TypeError, AttributeError)) and "NoneType" in text:
        # A stub that returns None (a forgotten `return`) fails where its result is used.
        message = f"got None where a value was expected (a missing `return`?): {message}"
    if where is not None:
        message += f" (raised at {where['file']}:{where['line']}, in {where['function']})"
    return info | {"status": FAILED, "message": message}


class GraderPlugin:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed at unconfigure
        self.places = _Places(tree_path())
        self._tests: dict[str, dict[str, Any]] = {}
        self._collect: dict[str, dict[str, Any]] = {}
        self._install_exit_hook()
        if os.environ.get(checks.CHECKS_ENV):  # an instructor's run: grader/verdicts.py
            checks.open_channel(os.environ[checks.CHECKS_ENV])

    # -- writing ---------------------------------------------------------------------------
    def emit(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _install_exit_hook(self) -> None:
        """Record where ``os._exit`` was called from before it ends the process."""
        real_exit = os._exit
        plugin = self

        def _exit(code: int) -> None:
            try:
                frame = sys._getframe(1)
                where = None
                while frame is not None:
                    rel = plugin.places.in_tree(frame.f_code.co_filename)
                    if rel is not None and where is None:
                        code_obj = frame.f_code
                        where = {
                            "file": rel,
                            "line": frame.f_lineno,
                            "function": getattr(code_obj, "co_qualname", code_obj.co_name),
                        }
                    frame = frame.f_back
                plugin.emit({"event": "exit", "code": code, "where": where})
            finally:
                real_exit(code)

        os._exit = _exit

    # -- collection ------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_exception_interact(self, node, call, report) -> None:
        if call.excinfo is None:
            return
        if not isinstance(node, pytest.Item):  # tests are classified in makereport
            self._collect[node.nodeid] = classify(call.excinfo.value, self.places)

    def pytest_collectreport(self, report) -> None:
        if not report.failed:
            return
        record = self._collect.pop(report.nodeid, None)
        if record is None:
            text = str(report.longrepr) if report.longrepr else "could not collect the tests"
            record = {
                "status": ERROR,
                "message": _first_line(text.strip().splitlines()[-1] if text.strip() else text),
                "where": None,
                "exception": None,
            }
        self.emit({"event": "collect_error", "nodeid": report.nodeid, **record})

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        """Leave out tests marked ``hidden`` unless this is an instructor's run."""
        hidden = [item for item in items if item.get_closest_marker("hidden") is not None]
        if not hidden:
            return
        included = os.environ.get(HIDDEN_ENV) == "1"
        if not included:
            items[:] = [item for item in items if item.get_closest_marker("hidden") is None]
            config.hook.pytest_deselected(items=hidden)
        self.emit({"event": "hidden", "count": len(hidden), "included": included})

    def pytest_collection_finish(self, session) -> None:
        self.emit({"event": "collected", "nodeids": [item.nodeid for item in session.items]})

    # -- running ---------------------------------------------------------------------------
    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self._tests.setdefault(nodeid, {})
        checks.begin(nodeid)
        self.emit({"event": "start", "nodeid": nodeid, "time": time.time()})

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        state = self._tests.setdefault(item.nodeid, {})
        state["seconds"] = state.get("seconds", 0.0) + report.duration
        state.setdefault("item", item)
        if "outcome" in state:
            return  # the first phase that did not pass decides
        if report.skipped:
            state["outcome"] = SKIPPED
            state["skip"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        elif report.failed:
            state["outcome"] = "failed" if report.when == "call" else "error"
            if call.excinfo is not None:
                state["exc"] = classify(call.excinfo.value, self.places)

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        state = self._tests.pop(nodeid, {})
        item = state.get("item")
        doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
        outcome = state.get("outcome", PASSED)
        record: dict[str, Any] = {
            "event": "test",
            "nodeid": nodeid,
            "name": item.name if item is not None else nodeid.rsplit("::", 1)[-1],
            "doc": _first_line(" ".join(doc.strip().split("\n\n")[0].split())),  # a sentence
            "outcome": outcome,
            "status": PASSED,
            "message": "",
            "where": None,
            "exception": None,
            "seconds": round(state.get("seconds", 0.0), 4),
        }
        if outcome == SKIPPED:
            record |= {"status": SKIPPED, "message": _first_line(str(state.get("skip", "")))}
        elif outcome != PASSED:
            exc = state.get("exc") or {
                "status": FAILED,
                "message": "the test failed",
                "where": None,
                "exception": None,
            }
            record |= exc
        self.emit(record)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.emit({"event": "finish", "exitstatus": int(exitstatus)})


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "hidden: a test only an instructor's run includes (GRADER_HIDDEN=1)"
    )
    path = os.environ.get(RESULTS_ENV)
    if path:
        config.pluginmanager.register(GraderPlugin(path), "grader-results")


def pytest_unconfigure(config) -> None:
    plugin = config.pluginmanager.get_plugin("grader-results")
    if plugin is not None:
        plugin.close()
