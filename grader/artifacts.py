"""What an end-to-end stage leaves for the learner to see: generated text and the loss curve.

The grader names a fresh folder in the environment variable ``GRADER_ARTIFACTS`` of every stage
subprocess it starts (:func:`exported`). A stage test that finds it calls :func:`save`, which
writes ``<stage>.json`` there::

    {"title": "Your GPT after 300 steps",       # optional, a heading
     "sample": "generated text ...",            # optional, shown in a panel
     "samples": ["3 1 4 -> three one four"],    # optional, a few lines (translations)
     "losses": [4.2, 3.9, ...],                 # optional, training loss per step
     "val_loss": 1.9}                           # optional

Without ``GRADER_ARTIFACTS`` (an ordinary pytest run, a batch run) :func:`save` does nothing. After
the run, the grader reads the files back (:func:`collect`) and shows them after the table: the
text, and the loss curve as a PNG under ``.grader/artifacts/`` where matplotlib is importable,
as a text sparkline where it is not (and in both cases the first and last loss in numbers).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARTIFACTS_ENV = "GRADER_ARTIFACTS"
BLOCKS = "▁▂▃▄▅▆▇█"
_MAX_TEXT = 2000  # characters of sample text shown
_MAX_SAMPLES = 8


def save(stage: str, data: dict[str, Any]) -> Path | None:
    """Write ``data`` as ``<stage>.json`` into ``$GRADER_ARTIFACTS`` (for stage tests).

    Returns the file written, or None when the grader did not ask for artifacts. Never raises for
    a folder that cannot be written or data that is not JSON (None then): an artifact is a bonus,
    never a reason for a test to fail.
    """
    folder = os.environ.get(ARTIFACTS_ENV)
    if not folder:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stage):
        raise ValueError(f"artifact stage name {stage!r} must be a plain file name")
    target = Path(folder) / f"{stage}.json"
    try:
        text = json.dumps(data, default=float)  # tensors and numpy scalars become numbers
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
    except (OSError, TypeError, ValueError):  # a folder gone, a value that is not a number
        return None
    return target


@contextlib.contextmanager
def exported() -> Iterator[Path]:
    """A fresh folder, named in ``GRADER_ARTIFACTS`` (inherited by the stage subprocesses) for
    the duration of the block; the previous value is restored and the folder removed after."""
    previous = os.environ.get(ARTIFACTS_ENV)
    with tempfile.TemporaryDirectory(prefix="grader-artifacts-") as tmp:
        os.environ[ARTIFACTS_ENV] = tmp
        try:
            yield Path(tmp)
        finally:
            if previous is None:
                os.environ.pop(ARTIFACTS_ENV, None)
            else:
                os.environ[ARTIFACTS_ENV] = previous


@dataclass
class Artifact:
    """One stage's artifact, validated: bad fields are dropped rather than shown as garbage."""

    stage: str
    title: str = ""
    sample: str = ""
    samples: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_loss: float | None = None

    @classmethod
    def from_dict(cls, stage: str, data: dict[str, Any]) -> Artifact:
        def number(x: Any) -> float | None:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                return None
            return float(x) if math.isfinite(x) else None

        losses = data.get("losses")
        samples = data.get("samples")
        return cls(
            stage=stage,
            title=str(data.get("title") or ""),
            sample=str(data.get("sample") or "")[:_MAX_TEXT],
            samples=[str(s) for s in samples[:_MAX_SAMPLES]] if isinstance(samples, list) else [],
            losses=[v for v in map(number, losses) if v is not None]
            if isinstance(losses, list)
            else [],
            val_loss=number(data.get("val_loss")),
        )

    @property
    def empty(self) -> bool:
        return not (self.sample or self.samples or self.losses or self.val_loss is not None)


def collect(folder: Path, stages: Sequence[str]) -> list[Artifact]:
    """The artifacts of ``stages`` (in that order) found in ``folder``; unreadable ones skipped."""
    found = []
    for stage in stages:
        path = folder / f"{stage}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            artifact = Artifact.from_dict(stage, data)
            if not artifact.empty:
                found.append(artifact)
    return found


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """``values`` as unicode blocks, averaged into at most ``width`` buckets (low ▁ to high █)."""
    if not values:
        return ""
    n = len(values)
    if n > width:
        edges = [round(i * n / width) for i in range(width + 1)]
        values = [
            sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:], strict=False) if b > a
        ]
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return BLOCKS[len(BLOCKS) // 2] * len(values)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[round((v - low) / span * top)] for v in values)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except Exception:  # any failure to import means: no picture, a sparkline instead
        return False
    return True


def plot_losses(artifact: Artifact, target: Path) -> Path | None:
    """Save the loss curve of ``artifact`` as a PNG at ``target``; None without matplotlib."""
    if not artifact.losses or not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never open a window
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        ax.plot(range(1, len(artifact.losses) + 1), artifact.losses, label="training loss")
        if artifact.val_loss is not None:
            ax.axhline(artifact.val_loss, color="tab:orange", linestyle="--", label="val loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy loss")
        ax.set_title(artifact.title or f"{artifact.stage}: loss")
        ax.legend()
        fig.tight_layout()
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target)
    finally:
        plt.close(fig)
    return target
