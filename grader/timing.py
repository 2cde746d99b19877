"""``python -m grader.timing``: time the reference, stage by stage, against the manifest's limits.

Runs every stage (or ``--stage NAME``) on ``solutions/`` and prints, per stage, the slowest
reference test, the per-test limit the rule of :mod:`grader.manifest` gives for it
(``max(MIN_TEST_TIMEOUT, MARGIN * slowest)``, rounded up to 5 s) and the manifest's
``test_timeout``. ``--check`` exits 1 when the reference takes more than ``test_timeout / MARGIN``
in some stage: the limit has fallen behind the code it times (run it on an idle machine; on a
loaded one every time is inflated).
"""

from __future__ import annotations

import argparse
import math
import sys

from .manifest import CHAPTERS, MARGIN, MIN_TEST_TIMEOUT, Stage
from .results import StageResult
from .runner import run_stage


def rule(slowest: float) -> float:
    """The per-test limit for a stage whose slowest reference test takes ``slowest`` seconds."""
    return max(MIN_TEST_TIMEOUT, 5.0 * math.ceil(MARGIN * slowest / 5.0))


def slowest(result: StageResult) -> float:
    return max((t.seconds for t in result.tests), default=0.0)


def too_tight(stage: Stage, measured: float) -> bool:
    """Whether the reference takes more than ``test_timeout / MARGIN``."""
    return measured * MARGIN > stage.test_timeout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.timing", description=__doc__)
    parser.add_argument("chapters", nargs="*", default=list(CHAPTERS), help="default: all")
    parser.add_argument("--stage", action="append", help="only this stage (repeat)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a limit is too tight")
    args = parser.parse_args(argv)
    failures = 0
    print(f"{'stage':<18} {'status':<8} {'slowest':>8} {'rule':>6} {'limit':>6}  slowest test")
    for name in args.chapters:
        chapter = CHAPTERS[name]
        for stage in chapter.stages:
            if args.stage and stage.name not in args.stage:
                continue
            result = run_stage(chapter, stage, "solutions")
            worst = max(result.tests, key=lambda t: t.seconds, default=None)
            measured = slowest(result)
            flag = ""
            if too_tight(stage, measured):
                failures += 1
                flag = "  <- the reference takes more than limit / margin"
            print(
                f"{chapter.name + ' ' + stage.name:<18} {result.status:<8} {measured:>7.2f}s "
                f"{rule(measured):>5g}s {stage.test_timeout:>5g}s  "
                f"{worst.name if worst else '-'}{flag}",
                flush=True,
            )
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
