"""The committed stubs are exactly what the solutions generate, and each one teaches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from grader import manifest, stubs

REPO = Path(__file__).resolve().parents[2]


def test_stubs_are_up_to_date():
    """`python -m grader.stubs --check` passes (run as the README and CI run it)."""
    run = subprocess.run(
        [sys.executable, "-m", "grader.stubs", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, "stale stubs:\n" + run.stdout + run.stderr


def test_every_stage_file_has_a_stub_that_names_its_stage():
    """Each file a stage asks the learner to edit raises NotImplementedError naming the stage."""
    for chapter in manifest.CHAPTERS.values():
        for stage in chapter.stages:
            for rel in stage.files:
                text = (stubs.EXERCISES / rel).read_text(encoding="utf-8")
                assert "raise NotImplementedError(" in text, f"exercises/{rel} has no stub"
                owner = manifest.stage_of_file(rel)
                assert f"stage '{owner.name}' not started" in text, (
                    f"exercises/{rel}: the stub messages should name stage '{owner.name}'"
                )
