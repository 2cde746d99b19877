"""The policy on the oracles (grader/forbidden.py): a stage's forbidden APIs, called by the tree.

On the fake tree, a stage forbids ``statistics.mean`` (a function) and ``textwrap.TextWrapper``
(a class) and its tests use both as oracles: only the tree's use is reported, as a warning in a
learner's run and as an integrity flag (score 0) in an instructor's. On copies of the reference,
the real ch2 stages flag the library call in the stage that asks for the code, and only there.
"""

from __future__ import annotations

import shutil

import pytest

from grader import manifest
from grader.forbidden import resolve
from grader.runner import REPO_ROOT, Sandbox, run_stage

from .conftest import stage_test

FORBIDDEN = ("statistics.mean", "textwrap.TextWrapper")
MOD = """
import statistics
import textwrap


def mean(xs):
    return statistics.mean(xs)


def own_mean(xs):
    return sum(xs) / len(xs)


class Wrapper(textwrap.TextWrapper):
    pass


Alias = textwrap.TextWrapper
"""
ORACLE_TESTS = """
import statistics
import textwrap


def test_mean():
    assert mod.{mean}([1, 2, 3]) == statistics.mean([1, 2, 3])


def test_wrapper():
    assert textwrap.TextWrapper(width=5).wrap("a b c") == ["a b c"]
"""
STRICT = Sandbox(env={"GRADER_STRICT": "1"})


@pytest.fixture
def chapter(tree):
    (tree / "ch9" / "mod.py").write_text(MOD)
    return manifest.Chapter("ch9", "fake", ())


def forbidding(make_stage, source: str):
    return make_stage("oracle", stage_test(source), forbidden=FORBIDDEN)


def test_the_tests_own_oracle_calls_do_not_count(chapter, tree, make_stage):
    (tree / "ch9" / "mod.py").write_text(MOD.replace("Alias = textwrap.TextWrapper", ""))
    stage = forbidding(make_stage, ORACLE_TESTS.format(mean="own_mean"))
    result = run_stage(chapter, stage, str(tree), sandbox=STRICT)
    assert result.ok and result.flags == () and result.warnings == ()


def test_a_learners_run_warns_and_keeps_the_score(chapter, tree, make_stage):
    stage = forbidding(make_stage, ORACLE_TESTS.format(mean="mean"))
    result = run_stage(chapter, stage, str(tree))
    assert result.ok and result.score == 10 and result.flags == ()
    assert result.warnings == (
        "ch9/mod.py (Alias) uses textwrap.TextWrapper, which this stage asks you to write",
        "ch9/mod.py:7 uses statistics.mean, which this stage asks you to write",
    )


def test_an_instructors_run_flags_and_scores_zero(chapter, tree, make_stage):
    source = ORACLE_TESTS.format(mean="mean") + (
        "\n\ndef test_subclass():\n    assert mod.Wrapper(width=3).width == 3\n"
    )
    result = run_stage(chapter, forbidding(make_stage, source), str(tree), sandbox=STRICT)
    assert result.status == "passed" and result.score == 0 and result.warnings == ()
    assert result.flags == (
        "ch9/mod.py (Alias) uses textwrap.TextWrapper, which this stage asks you to write",
        "ch9/mod.py:7 uses statistics.mean, which this stage asks you to write",
    )


def test_every_forbidden_api_of_the_manifest_exists():
    for chapter in manifest.CHAPTERS.values():
        for stage in chapter.stages:
            for name in stage.forbidden:
                owner, attribute = resolve(name)
                assert callable(getattr(owner, attribute)), name
    with pytest.raises(LookupError, match="torch.nn.NoSuchThing"):
        resolve("torch.nn.NoSuchThing")


# -- the reference with one library call slipped in -----------------------------------------

CALLS_SDPA = """

_own_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0):
    out, weights = _own_attention(q, k, v, mask, dropout_p)
    if mask is None and dropout_p == 0.0:
        out = F.scaled_dot_product_attention(q, k, v)  # the library does the work
    return out, weights
"""
USES_LAYERNORM = (
    "\n\nclass LayerNorm(nn.LayerNorm):  # the library's, under the stage's name\n    pass\n"
)


@pytest.fixture(scope="module")
def broken_reference(tmp_path_factory):
    tree = tmp_path_factory.mktemp("broken") / "tree"
    shutil.copytree(REPO_ROOT / "solutions", tree, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tree / "ch2" / "attention.py", "a") as f:
        f.write(CALLS_SDPA)
    with open(tree / "ch2" / "block.py", "a") as f:
        f.write(USES_LAYERNORM)
    return tree


@pytest.mark.parametrize(
    "stage, expected",
    [
        ("attention", "ch2/attention.py:"),
        ("block", "ch2/block.py"),
    ],
)
def test_a_broken_reference_is_flagged_in_the_stage_that_asks_for_the_code(
    broken_reference, stage, expected
):
    chapter = manifest.CHAPTERS["ch2"]
    result = run_stage(chapter, chapter.stage(stage), str(broken_reference), sandbox=STRICT)
    assert result.status == "passed" and result.score == 0, result.message
    assert result.flags and all(f.startswith(expected) for f in result.flags), result.flags
    api = (
        "torch.nn.functional.scaled_dot_product_attention"
        if stage == "attention"
        else "torch.nn.LayerNorm"
    )
    assert any(f" uses {api}, which this stage asks you to write" in f for f in result.flags)
