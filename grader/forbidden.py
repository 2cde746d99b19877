"""The policy on the oracles: APIs a stage asks the learner to write, not call (``-p grader.forbidden``).

A stage's tests use library APIs as oracles (``F.scaled_dot_product_attention`` checks the
learner's attention); a stage may list them in the manifest (``Stage.forbidden``) so that a
submission that simply calls them does not pass for having written them. The runner names them in
the stage's environment (``GRADER_FORBIDDEN``, comma-separated dotted names, :func:`env`) and this
plugin, before the tests import the tree, replaces each one in its module:

- a function by a wrapper that looks at who called it: the nearest frame that belongs to the tree
  under test or to the grading machinery (``tests/``, ``grader/``) decides, so the tests' own
  calls (the oracle) never count, and a call from the learner's code does, directly or through
  other library code;
- a class by a wrapper of its ``__init__`` with the same rule, which also counts any instance of a
  subclass defined in the tree (``class LayerNorm(nn.LayerNorm): pass``);
- after collection, a tree module that holds one of them under a name of its own
  (``LayerNorm = nn.LayerNorm``) is counted too, since the tests would call it through the tree.

The first use of each API becomes one line in ``GRADER_RESULTS``: in an instructor's run
(``GRADER_STRICT=1``, set by ``batch``, or ``GRADER_HIDDEN=1``, set by ``--hidden``) an integrity
``flag`` (the stage scores 0); in a learner's run a ``warning``, shown after the table. Both read
"ch2/attention.py:42 uses torch.nn.functional.scaled_dot_product_attention, which this stage asks
you to write". The mode is read when the plugin starts, before any learner code runs.

This catches a learner who reaches for the library, not one set on evading it (the same function
reached through ``torch._C``); the OS sandbox and the instructor's review cover the rest.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from .guard import asking_tree_frame
from .statuses import HIDDEN_ENV, RESULTS_ENV
from .tree import PACKAGE

FORBIDDEN_ENV = "GRADER_FORBIDDEN"
STRICT_ENV = "GRADER_STRICT"
REPO_ROOT = Path(__file__).resolve().parent.parent


def env(forbidden: tuple[str, ...]) -> dict[str, str]:
    """The stage environment that names ``forbidden`` to the plugin."""
    return {FORBIDDEN_ENV: ",".join(forbidden)}


def resolve(name: str) -> tuple[Any, str]:
    """``(owner, attribute)`` for a dotted name: ``torch.nn.LayerNorm`` -> ``(torch.nn, "LayerNorm")``.

    Raises ``LookupError`` naming ``name`` when no importable prefix holds it.
    """
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:-1]:
                owner = getattr(owner, part)
            getattr(owner, parts[-1])
        except AttributeError:
            break
        return owner, parts[-1]
    raise LookupError(f"forbidden API {name!r} does not exist here")


class Policy:
    """Records the first use of each forbidden API from the tree under test."""

    def __init__(self, tree: Path, results: str, strict: bool) -> None:
        self.tree = str(tree) + os.sep
        self.machinery = (str(REPO_ROOT / "tests") + os.sep, str(REPO_ROOT / "grader") + os.sep)
        self.results = results
        self.strict = strict
        self.used: set[str] = set()
        self.wrappers: dict[int, str] = {}  # id of a wrapper or class -> the API's name

    # -- who called -------------------------------------------------------------------------
    def tree_frame(self, frame: FrameType | None) -> FrameType | None:
        """The caller in the tree, if the nearest tree-or-machinery frame is the tree's."""
        return asking_tree_frame(frame, self.tree, self.machinery)

    def record(self, name: str, place: str, where: dict[str, Any] | None) -> None:
        if name in self.used:
            return
        self.used.add(name)
        message = f"{place} uses {name}, which this stage asks you to write"
        line = (
            {"event": "flag", "reason": message, "where": where}
            if self.strict
            else {"event": "warning", "message": message, "where": where}
        )
        with open(self.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def check_call(self, name: str, frame: FrameType | None, instance: object = None) -> None:
        asker = self.tree_frame(frame)
        if asker is not None:
            code = asker.f_code
            file = code.co_filename[len(self.tree) :]
            where = {
                "file": file,
                "line": asker.f_lineno,
                "function": getattr(code, "co_qualname", code.co_name),
            }
            self.record(name, f"{file}:{asker.f_lineno}", where)
        elif instance is not None and type(instance).__module__.startswith(PACKAGE + "."):
            cls = type(instance)
            file = cls.__module__[len(PACKAGE) + 1 :].replace(".", "/") + ".py"
            self.record(name, f"{file} ({cls.__name__})", {"file": file})

    # -- wrapping ---------------------------------------------------------------------------
    def install(self, name: str) -> None:
        owner, attribute = resolve(name)
        target = getattr(owner, attribute)
        if isinstance(target, type):
            self._wrap_class(name, target)
        elif callable(target):
            setattr(owner, attribute, self._wrap_function(name, target))
        else:
            raise LookupError(f"forbidden API {name!r} is neither a function nor a class")

    def _wrap_function(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        policy = self

        @functools.wraps(function)
        def forbidden(*args: Any, **kwargs: Any) -> Any:
            policy.check_call(name, sys._getframe(1))
            return function(*args, **kwargs)

        self.wrappers[id(forbidden)] = name
        return forbidden

    def _wrap_class(self, name: str, cls: type) -> None:
        policy = self
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            policy.check_call(name, sys._getframe(1), self)
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[misc]
        self.wrappers[id(cls)] = name

    def check_aliases(self) -> None:
        """Tree modules that hold a forbidden API under a name of their own."""
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith(PACKAGE + ".") or module is None:
                continue
            for attribute, value in list(vars(module).items()):
                name = self.wrappers.get(id(value))
                if name is not None and not attribute.startswith("__"):
                    file = module_name[len(PACKAGE) + 1 :].replace(".", "/") + ".py"
                    self.record(name, f"{file} ({attribute})", {"file": file})

    # -- pytest hooks -----------------------------------------------------------------------
    def pytest_collection_finish(self, session) -> None:
        self.check_aliases()


def pytest_configure(config) -> None:
    names = [n for n in os.environ.get(FORBIDDEN_ENV, "").split(",") if n.strip()]
    results = os.environ.get(RESULTS_ENV)
    if not names or not results:
        return
    from .tree import tree_path

    strict = os.environ.get(STRICT_ENV) == "1" or os.environ.get(HIDDEN_ENV) == "1"
    policy = Policy(tree_path(), results, strict)
    for name in names:
        policy.install(name.strip())
    config.pluginmanager.register(policy, "grader-forbidden")
