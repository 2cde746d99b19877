"""The per-test limits follow the manifest's rule (``python -m grader.timing`` times the reference)."""

from __future__ import annotations

from grader import manifest, timing


def test_the_rule():
    assert timing.rule(0.0) == manifest.MIN_TEST_TIMEOUT  # torch's warm-up floor
    assert timing.rule(1.08) == 15.0  # 10 x 1.08 s, rounded up to 5 s
    assert timing.rule(18.0) == 180.0


def test_every_limit_is_one_the_rule_can_give():
    for chapter in manifest.CHAPTERS.values():
        for stage in chapter.stages:
            where = f"{chapter.name} {stage.name}"
            assert stage.test_timeout >= manifest.MIN_TEST_TIMEOUT, where
            assert stage.test_timeout % 5 == 0, where
            assert stage.time_limit > stage.test_timeout, where


def test_a_reference_slower_than_limit_over_margin_is_flagged():
    stage = manifest.CHAPTERS["ch2"].stage("attention")
    assert not timing.too_tight(stage, stage.test_timeout / manifest.MARGIN)
    assert timing.too_tight(stage, 1.01 * stage.test_timeout / manifest.MARGIN)
