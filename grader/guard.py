"""The integrity guard: a pytest plugin loaded into every stage's subprocess (``-p grader.guard``).

The tests always come from the grader; the guard makes sure the code under test does not lean on
them. While a stage runs it records, as ``{"event": "flag", "reason", "where"}`` lines in the
``GRADER_RESULTS`` file (the runner collects them into ``StageResult.flags``, and a flagged stage
scores 0):

- tree code importing ``solutions``, ``exercises``, ``grader`` or ``tests`` (the import is also
  refused with an ``ImportError`` that says why);
- tree code opening a file of ``solutions/``, ``grader/`` or a ``.py`` file of ``tests/`` (an
  audit hook on ``open`` events, :func:`sys.addaudithook`); ``linecache`` reading the source
  lines of a stack that ``traceback`` formats is not counted (``torch.manual_seed`` formats the
  stack, and the calling test is on it);
- anything that replaced a function or class of pytest, of the grader's plugin, of the tests'
  helpers or of ``builtins``, or swapped ``sys.modules['pytest']`` (checked after collection and
  after every test against a snapshot taken before the tree was imported).

The guard is off when the tree is the repository's ``solutions/`` (the reference may do as it
likes), when ``GRADER_GUARD=0``, and outside a grader run (no ``GRADER_RESULTS``). It costs one
Python call per ``import`` statement and per audit event, and a few dictionary scans per test.
"""

from __future__ import annotations

import builtins
import json
import linecache
import os
import sys
import tokenize
import traceback
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from .statuses import RESULTS_ENV
from .tree import REPO_ROOT, tree_path

SWITCH_ENV = "GRADER_GUARD"
BLOCKED_IMPORTS = frozenset({"solutions", "exercises", "grader", "tests"})
# Objects whose functions and classes the code under test must leave alone.
WATCHED = (
    "builtins",
    "pytest",
    "_pytest.runner",
    "_pytest.reports",
    "_pytest.outcomes",
    "_pytest.python",
    "_pytest.main",
    "pluggy",
    "tests.helpers",
    "grader.tree",
    "grader.plugin",
)
_WATCHED_SET = frozenset(WATCHED)
WATCHED_CLASSES = (
    ("_pytest.reports", "TestReport"),
    ("_pytest.runner", "CallInfo"),
    ("grader.plugin", "GraderPlugin"),
)


def _module_root(name: str) -> str | None:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    return os.path.dirname(os.path.realpath(file)) + os.sep if file else None


def asking_tree_frame(
    frame: FrameType | None, tree: str, machinery: tuple[str, ...], max_depth: int = 80
) -> FrameType | None:
    """Walking out from ``frame``: the first frame of the ``tree`` folder, unless a frame of the
    ``machinery`` folders (the tests, the grader, pytest) comes first, then None: what the tests
    do on their own account is never the learner's. Shared by the guard and grader.forbidden."""
    for _ in range(max_depth):
        if frame is None:
            return None
        filename = frame.f_code.co_filename
        if filename.startswith(tree):
            return frame
        if filename.startswith(machinery):
            return None
        frame = frame.f_back
    return None


# The standard library's files that read source lines for a stack being formatted.
_LINE_READERS = frozenset(os.path.realpath(m.__file__) for m in (linecache, tokenize))
_STACK_FORMATTER = os.path.realpath(traceback.__file__)


def _formatting_a_stack(frame: FrameType | None) -> bool:
    """This open is ``linecache`` reading a source file for ``traceback``: the lines of the frames
    on the stack, which is not the tree reading the grader's files. ``torch.manual_seed`` does it
    in every tree (it queues CUDA's seeding with ``traceback.format_stack()``), and the test that
    called the tree is on that stack. ``linecache`` called by the tree itself is still flagged."""
    through_linecache = False
    while frame is not None:
        file = os.path.realpath(frame.f_code.co_filename)
        if file == _STACK_FORMATTER:
            return through_linecache
        if file not in _LINE_READERS:
            return False
        through_linecache = True
        frame = frame.f_back
    return False


class Guard:
    def __init__(self, tree: Path, results: str) -> None:
        self.tree = str(tree) + os.sep
        self.repo = str(REPO_ROOT) + os.sep
        self.protected_dirs = tuple(str(REPO_ROOT / d) + os.sep for d in ("solutions", "grader"))
        self.tests_dir = str(REPO_ROOT / "tests") + os.sep
        # Frames of these folders are the grading machinery: what they open is not cheating.
        machinery = [self.tests_dir, str(REPO_ROOT / "grader") + os.sep]
        for name in ("_pytest", "pytest", "pluggy", "pytest_timeout"):
            root = _module_root(name)
            if root is not None:
                machinery.append(root if name != "pytest_timeout" else root + "pytest_timeout")
        self.machinery = tuple(machinery)
        self._file = open(results, "a", encoding="utf-8")  # noqa: SIM115 -- closed at unconfigure
        self._reasons: set[str] = set()
        self._snapshot: dict[str, dict[str, int]] = {}
        self._modules: dict[str, object] = {}
        self._active = True

    # -- recording -------------------------------------------------------------------------
    def flag(self, reason: str, where: dict[str, Any] | None = None) -> None:
        if reason in self._reasons:
            return
        self._reasons.add(reason)
        self._file.write(json.dumps({"event": "flag", "reason": reason, "where": where}) + "\n")
        self._file.flush()

    def _where(self, frame: FrameType) -> dict[str, Any]:
        code = frame.f_code
        return {
            "file": code.co_filename[len(self.tree) :],
            "line": frame.f_lineno,
            "function": getattr(code, "co_qualname", code.co_name),
        }

    def _asker(self, frame: FrameType | None) -> FrameType | None:
        """The tree frame that asked for this, if the nearest tree-or-machinery frame is one."""
        return asking_tree_frame(frame, self.tree, self.machinery, max_depth=60)

    # -- imports ---------------------------------------------------------------------------
    def install_import_hook(self) -> None:
        real_import = builtins.__import__
        guard = self

        def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and name.partition(".")[0] in BLOCKED_IMPORTS and guard._active:
                guard.check_import(name, sys._getframe(1))
            module = real_import(name, globals, locals, fromlist, level)
            if name in _WATCHED_SET and name not in guard._snapshot:
                guard.take_snapshot((name,))
            return module

        builtins.__import__ = guarded_import
        sys.meta_path.insert(0, _Finder(self))

    def check_import(self, name: str, frame: FrameType | None) -> None:
        asker = self._asker(frame)
        if asker is None:
            return
        where = self._where(asker)
        top = name.partition(".")[0]
        self.flag(f"{where['file']}:{where['line']} imports {name} (the grader's {top}/)", where)
        raise ImportError(
            f"your code may not import {name}: the grader checks your own code, so "
            f"{top}/ is off limits"
        )

    # -- files -----------------------------------------------------------------------------
    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not self._active:
            return
        path = args[0] if args else None
        if isinstance(path, int) or path is None:
            return
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if not real.startswith(self.repo):
            return
        if not (
            real.startswith(self.protected_dirs)
            or (real.startswith(self.tests_dir) and real.endswith(".py"))
        ):
            return
        if _formatting_a_stack(sys._getframe(1)):
            return
        asker = self._asker(sys._getframe(1))
        if asker is not None:
            where = self._where(asker)
            rel = real[len(self.repo) :]
            self.flag(f"{where['file']}:{where['line']} opens {rel} (the grader's files)", where)

    # -- patching --------------------------------------------------------------------------
    @staticmethod
    def _callables(obj: object) -> dict[str, int]:
        return {
            k: id(v) for k, v in list(vars(obj).items()) if callable(v) or isinstance(v, ModuleType)
        }

    def take_snapshot(self, names=WATCHED) -> None:
        """Remember the functions and classes of the watched modules imported so far (the
        others are remembered when first imported, before any test module uses them)."""
        for name in names:
            module = sys.modules.get(name)
            if module is None:
                continue
            self._modules[name] = module
            self._snapshot[name] = self._callables(module)
            for module_name, cls_name in WATCHED_CLASSES:
                cls = getattr(module, cls_name, None) if module_name == name else None
                if cls is not None:
                    self._snapshot[f"{name}.{cls_name}"] = self._callables(cls)
                    self._modules[f"{name}.{cls_name}"] = cls

    def check_patches(self) -> None:
        for name, before in self._snapshot.items():
            obj = self._modules[name]
            if name in WATCHED and sys.modules.get(name) is not obj:
                self.flag(f"sys.modules[{name!r}] was replaced (tampering with the tests)")
            now = self._callables(obj)
            changed = sorted(k for k, v in before.items() if now.get(k) != v)
            if changed:
                self.flag(f"{name}.{changed[0]} was replaced or removed (tampering with the tests)")

    # -- pytest hooks ----------------------------------------------------------------------
    def pytest_collection_finish(self, session) -> None:
        self.check_patches()

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        self.check_patches()

    def close(self) -> None:
        self._active = False
        self._file.close()


class _Finder:
    """Refuses ``importlib.import_module("solutions...")`` and friends from tree code."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in BLOCKED_IMPORTS and self.guard._active:
            self.guard.check_import(fullname, sys._getframe(1))
        return None


def pytest_configure(config) -> None:
    results = os.environ.get(RESULTS_ENV)
    if not results or os.environ.get(SWITCH_ENV) == "0":
        return
    tree = tree_path()
    if tree == REPO_ROOT / "solutions":
        return
    guard = Guard(tree, results)
    guard.take_snapshot()
    guard.install_import_hook()
    guard.take_snapshot()  # builtins.__import__ is now the guard's own
    sys.addaudithook(guard.audit)
    config.pluginmanager.register(guard, "grader-guard")


def pytest_unconfigure(config) -> None:
    guard = config.pluginmanager.get_plugin("grader-guard")
    if guard is not None:
        guard.close()
