"""The one switch that binds the tests to a tree of code, and the one place a tree is resolved.

Every stage test imports the learner's (or the reference) modules through :func:`load`, never by a
fixed package name, so the same tests grade ``solutions/``, ``exercises/`` or any copy of the
exercises on disk. The tree is chosen by the environment variable ``LLMFS_TREE``:

- ``solutions`` (the default) or ``exercises``: the trees in this repository;
- any other value: a path to a folder laid out like ``exercises/`` (``ch2/attention.py``, ...).

The chosen folder is imported as the package ``llm_tree``, so relative imports inside it
(``from ..ch2.attention import MultiHeadAttention``) work whatever the folder is called.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "LLMFS_TREE"
PACKAGE = "llm_tree"


TREES = ("exercises", "solutions")  # the repository's own trees, named without a path


class UsageError(ValueError):
    """A request the grader cannot serve (unknown chapter or stage, missing tree): exit 2."""


def resolve_tree(tree: str | os.PathLike[str]) -> tuple[str, Path]:
    """``(value for LLMFS_TREE, folder)`` for ``exercises``, ``solutions`` or a path.

    A relative path is taken from the current directory (the stage runs from the repository
    root, so it gets the absolute path). Raises :class:`UsageError` when the folder is missing.
    """
    text = os.fspath(tree)
    if text in TREES:
        return text, REPO_ROOT / text
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise UsageError(f"tree {text!r} {what} (give exercises, solutions or a folder path)")
    return str(path), path


def tree_path(value: str | None = None) -> Path:
    """The folder the tests grade: ``solutions``, ``exercises`` or a path (see module docstring)."""
    value = value if value is not None else os.environ.get(ENV_VAR, "solutions")
    if value in TREES:
        return REPO_ROOT / value
    return Path(value).expanduser().resolve()


def _ensure_package() -> None:
    if PACKAGE in sys.modules:
        return
    root = tree_path()
    if not root.is_dir():
        raise FileNotFoundError(f"{ENV_VAR}={root} is not a folder")
    init = root / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(
            PACKAGE, init, submodule_search_locations=[str(root)]
        )
    else:
        # A copy without __init__.py is still a tree: make the package by hand.
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)


def load(name: str) -> ModuleType:
    """Import ``name`` (for example ``"ch2.attention"``) from the tree under test."""
    _ensure_package()
    return importlib.import_module(f"{PACKAGE}.{name}")
