"""What an end-to-end stage leaves behind (generated text, losses) and how the grader shows it."""

from __future__ import annotations

import json
import os

import pytest

from grader import artifacts, cli, progress, ui
from grader.artifacts import Artifact
from grader.ui import make_console

from .conftest import stage_test

# A fake end-to-end stage: "trains", then leaves its artifact the way tests/ch3/test_e2e.py does.
E2E = """
from grader import artifacts


def test_train_and_talk():
    losses = [4.0 - 0.1 * step for step in range(30)]
    artifacts.save("e2e", {
        "title": "Your fake model after 30 steps",
        "sample": "to be or not to be",
        "samples": ["3 1 -> three one"],
        "losses": losses,
        "val_loss": 1.25,
    })
    assert mod.good() == 1
"""


def test_a_stage_artifact_is_shown_after_the_table_with_a_loss_curve(
    make_stage, fake_chapter, tree, capsys
):
    fake_chapter(make_stage("e2e", stage_test(E2E)))
    code = cli.main(["ch9", "--tree", str(tree)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.index("Score:") < out.index("Your fake model after 30 steps")  # after the table
    assert "to be or not to be" in out and "generated text" in out
    assert "3 1 -> three one" in out
    assert "loss 4.000 → 1.100 over 30 steps, validation loss 1.250" in out
    assert "█" in out and "▁" in out  # the sparkline is always there
    assert artifacts.ARTIFACTS_ENV not in os.environ  # exported only during the run
    picture = progress.state_dir() / "artifacts" / progress.tree_key(str(tree)) / "ch9-e2e-loss.png"
    if artifacts.have_matplotlib():
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "ch9-e2e-loss.png" in out.replace("\n", "")
    assert not (tree / "e2e.json").exists()  # nothing written into the tree


def test_without_matplotlib_the_curve_is_a_sparkline_only(monkeypatch, capsys):
    monkeypatch.setattr(artifacts, "have_matplotlib", lambda: False)
    art = Artifact("e2e", losses=[3.0, 2.0, 1.0], val_loss=1.5)
    ui.show_artifacts(make_console(), [art], "ch3", "exercises")
    out = capsys.readouterr().out
    assert "█▅▁" in out and "Curve:" not in out
    assert "loss 3.000 → 1.000 over 3 steps, validation loss 1.500" in out
    assert not (progress.state_dir() / "artifacts").exists()


def test_a_plotting_failure_never_breaks_grading(capsys):
    def broken(art, target):
        raise RuntimeError("no display")

    ui.show_artifacts(
        make_console(), [Artifact("e2e", losses=[1.0, 0.5])], "ch3", "exercises", broken
    )
    assert "Curve:" not in capsys.readouterr().out


def test_save_is_a_no_op_without_the_grader_and_writes_json_with_it(tmp_path, monkeypatch):
    monkeypatch.delenv(artifacts.ARTIFACTS_ENV, raising=False)
    assert artifacts.save("e2e", {"sample": "x"}) is None
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "art"))
    path = artifacts.save("e2e", {"losses": [1, 2.5]})
    assert path == tmp_path / "art" / "e2e.json"
    assert json.loads(path.read_text()) == {"losses": [1, 2.5]}
    assert artifacts.save("e2e", {"sample": object()}) is None  # not JSON: skipped, no error
    with pytest.raises(ValueError, match="plain file name"):
        artifacts.save("../escape", {})


def test_collect_keeps_good_fields_and_drops_garbage(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps({"losses": [1.0, "x", None, float("nan"), 0.5], "val_loss": "low"})
    )
    (tmp_path / "b.json").write_text("{broken")
    (tmp_path / "c.json").write_text(json.dumps({"nothing": 1}))
    found = artifacts.collect(tmp_path, ["a", "b", "c", "missing"])
    assert [(a.stage, a.losses, a.val_loss) for a in found] == [("a", [1.0, 0.5], None)]


@pytest.mark.parametrize(
    ("values", "width", "expected"),
    [
        ([], 10, ""),
        ([2.0, 2.0, 2.0], 10, "▅▅▅"),
        ([0.0, 7.0], 10, "▁█"),
        ([float(v) for v in range(8)], 10, "▁▂▃▄▅▆▇█"),
        ([float(v) for v in range(100)], 4, "▁▃▆█"),  # averaged into 4 buckets
    ],
)
def test_sparkline(values, width, expected):
    assert artifacts.sparkline(values, width) == expected
