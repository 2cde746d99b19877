"""The answer key of a stage: what its checks expect on the reference (``grader/verdicts.py``).

:func:`key_for` runs the stage's tests on the reference (``solutions/``), in the sandbox, with
every test included, in a process that never sees learner code, and keeps every check's kind,
expected value and tolerance. It runs them a second time on :func:`perturbed_copy`, a copy of
the reference whose every function first draws a random number: a check whose expected value
changes there is one whose expected value depends on how the code under test uses the random
generator (an oracle given the learner's own weights), so the key marks it not ``stable`` and
the grader compares it with the value the test computed in the process instead. A test whose
number of checks changes there is not ``counted`` (extra checks are then allowed).

Keys are cached in the grader's state folder (``.grader/keys/``, never visible inside the
sandbox) under a hash of everything they depend on: the tests, the reference, the recorder,
torch's and Python's versions. Making one costs about twice the stage's own time.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import checks
from .manifest import Chapter, Stage
from .progress import state_dir, write_atomic
from .runner import Sandbox, run_stage
from .statuses import HIDDEN_ENV, PASSED, SKIPPED
from .tree import REPO_ROOT, UsageError
from .verdicts import CheckKey, Key, TestKey, agree, read_checks, test_id

REFERENCE = REPO_ROOT / "solutions"


def applies(chapter: Chapter, reference: Path = REFERENCE) -> bool:
    """Whether the reference has this chapter (a course chapter always does)."""
    return (reference / chapter.name).is_dir()


def key_for(
    chapter: Chapter,
    stage: Stage,
    *,
    reference: Path = REFERENCE,
    cache: Path | None = None,
    prefix: tuple[str, ...] = (),
    hidden: bool = True,
) -> Key:
    """The stage's answer key: from the cache, or made now (two runs of the stage's tests on
    the reference, about twice the stage's own time). ``prefix`` is the sandbox's command
    prefix (``grader.sandbox.for_learner()``); ``hidden``: with the tests marked hidden (the
    learner's run must then include them too). Raises UsageError when the reference fails."""
    folder = cache if cache is not None else state_dir() / "keys"
    path = (
        folder
        / f"{chapter.name}-{stage.name}-{'h' if hidden else 'p'}{_fingerprint(stage, reference)}.json"
    )
    try:
        return Key.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    key = make_key(chapter, stage, reference=reference, prefix=prefix, hidden=hidden)
    write_atomic(path, key.to_json())
    return key


def make_key(
    chapter: Chapter,
    stage: Stage,
    *,
    reference: Path = REFERENCE,
    prefix: tuple[str, ...] = (),
    hidden: bool = True,
) -> Key:
    with tempfile.TemporaryDirectory(prefix="grader-key-") as tmp:
        runs = []
        for name, tree, guard in (
            ("reference", reference, "1"),
            ("perturbed", perturbed_copy(reference, Path(tmp) / "perturbed"), "0"),
        ):
            path = Path(tmp) / f"{name}.jsonl"
            env = {
                checks.CHECKS_ENV: str(path),
                HIDDEN_ENV: "1" if hidden else "0",
                "GRADER_GUARD": guard,
            }
            result = run_stage(chapter, stage, str(tree), sandbox=Sandbox(env=env, prefix=prefix))
            runs.append((result, read_checks(path)))
    (result, reference_checks), (_, perturbed_checks) = runs
    broken = [t for t in result.tests if t.status not in (PASSED, SKIPPED)]
    if broken or not result.tests:
        said = f"{broken[0].name}: {broken[0].message}" if broken else result.message
        raise UsageError(
            f"the reference fails stage {chapter.name} {stage.name} ({said}), so the grader "
            "cannot make its answer key (a problem of the grader, not of the submission)"
        )
    tests = []
    for test in result.tests:
        if test.status != PASSED:
            continue
        ours = reference_checks.get(test_id(test.nodeid), [])
        theirs = perturbed_checks.get(test_id(test.nodeid), [])
        keys = tuple(
            CheckKey(
                kind=c["kind"],
                expected=c["expected"],
                atol=c["atol"],
                rtol=c["rtol"],
                stable=i < len(theirs) and _same_expectation(c, theirs[i]),
            )
            for i, c in enumerate(ours)
        )
        tests.append(TestKey(test.nodeid, keys, counted=len(ours) == len(theirs)))
    skipped = tuple(t.nodeid for t in result.tests if t.status == SKIPPED)
    return Key(stage.name, tuple(tests), skipped, hidden)


def _same_expectation(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The two runs expected the same: tensors within the check's tolerance, else equal."""
    if a["kind"] != b["kind"]:
        return False
    if a["kind"] == checks.CLOSE:
        return agree(checks.CLOSE, b["expected"], a["expected"], a)
    return a["expected"] == b["expected"]


def _fingerprint(stage: Stage, reference: Path) -> str:
    """A hash of what the key depends on: tests, reference, recorder, torch, Python."""
    digest = hashlib.sha256()
    try:
        import torch

        digest.update(torch.__version__.encode())
    except ImportError:  # pragma: no cover - the grader's tests need torch
        pass
    digest.update(sys.version.encode())
    test_file = Path(stage.tests) if Path(stage.tests).is_absolute() else REPO_ROOT / stage.tests
    sources = [
        *sorted(test_file.parent.glob("*.py")),
        *sorted((REPO_ROOT / "tests").glob("*.py")),
        REPO_ROOT / "grader" / "checks.py",
        Path(__file__),
        *sorted(p for p in reference.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
    ]
    for path in sources:
        try:
            digest.update(path.as_posix().encode() + b"\0" + path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:16]


class _Perturb(ast.NodeTransformer):
    """Make every function first draw from torch's and Python's random generators."""

    DRAW = "__import__('torch').rand(1); __import__('random').random()"

    def _visit_function(self, node):
        self.generic_visit(node)
        body = node.body
        start = (
            1
            if body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
            else 0
        )
        node.body = [*body[:start], *ast.parse(self.DRAW).body, *body[start:]]
        return node

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function


def perturbed_copy(reference: Path, target: Path) -> Path:
    """A copy of ``reference`` whose functions consume the RNG differently (see the docstring)."""
    shutil.copytree(reference, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        path.write_text(ast.unparse(ast.fix_missing_locations(_Perturb().visit(tree))), "utf-8")
    return target


def keys_for(
    chapter: Chapter,
    stages: Iterable[Stage],
    *,
    reference: Path = REFERENCE,
    prefix: tuple[str, ...] = (),
    hidden: bool = True,
) -> dict[str, Key]:
    """The keys of ``stages`` (empty when the reference lacks the chapter: a made-up chapter)."""
    if not applies(chapter, reference):
        return {}
    return {
        s.name: key_for(chapter, s, reference=reference, prefix=prefix, hidden=hidden)
        for s in stages
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m grader.answer_key ch3 [STAGE...]``: make (or load) the keys and say how much of
    each stage the grader verifies itself, for the developers of a chapter's tests."""
    import argparse
    import time

    from .manifest import CHAPTERS
    from .runner import select_stages
    from .sandbox import for_learner

    parser = argparse.ArgumentParser(prog="python -m grader.answer_key", description=main.__doc__)
    parser.add_argument("chapter", choices=sorted(CHAPTERS))
    parser.add_argument("stages", nargs="*")
    args = parser.parse_args(argv)
    chapter = CHAPTERS[args.chapter]
    try:
        stages = select_stages(chapter, args.stages or None)
    except UsageError as error:
        parser.error(str(error))
    print(
        f"{'stage':<14} {'tests':>5} {'verified':>8} {'checks':>6} {'stable':>6} {'conditions':>10}"
    )
    for stage in stages:
        start = time.monotonic()
        key = key_for(chapter, stage, prefix=for_learner())
        every = [c for t in key.tests for c in t.checks]
        print(
            f"{stage.name:<14} {len(key.tests):>5} {sum(t.verified for t in key.tests):>8} "
            f"{len(every):>6} {sum(c.stable for c in every):>6} "
            f"{sum(c.kind == checks.TRUE for c in every):>10}   ({time.monotonic() - start:.1f} s)"
        )
        for test in key.tests:
            if not test.verified:
                print(f"    not verified: {test.nodeid.split('::', 1)[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
