"""tests/helpers.py: the sentences a learner reads when a check fails."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import LearnerFailure, Mistake, check_close, fail_if_mistake

EXPECTED = torch.tensor([[0.5, 0.25], [0.125, 1.0]])


def message(*args, **kwargs) -> str:
    with pytest.raises(LearnerFailure) as failure:
        check_close(*args, **kwargs)
    return str(failure.value)


def test_the_message_reads_for_plural_and_singular_subjects():
    """No verb agrees with ``what``: 'the attention weights' and 'the output' both read right."""
    text = message(EXPECTED + 1, EXPECTED, "the attention weights", "ch2/attention.py, f")
    assert text.startswith("the attention weights should match the reference, but 4 of 4 entries")
    assert " 4 of 4 entries differ (first at index (0, 0): expected 0.5, got 1.5;" in text
    one_off = EXPECTED.clone()
    one_off[1, 1] = 0.0
    text = message(one_off, EXPECTED, "the output", "ch2/attention.py, f")
    assert "the output should match the reference, but 1 of 4 entries differs (first at " in text
    assert text.endswith("Look at ch2/attention.py, f.") and "\n" not in text


def test_a_known_mistake_is_named_in_one_sentence():
    mistakes = [
        Mistake("the transpose", "transpose back", EXPECTED.T),
        Mistake("twice the answer", "halve it", 2 * EXPECTED),
    ]
    text = message(2 * EXPECTED, EXPECTED, "the weights", "f.py, g", mistakes=mistakes)
    assert text == "the weights came out as twice the answer: halve it. Look at f.py, g."
    # a wrong answer that is no known mistake still gets the numbers
    assert "should match the reference" in message(
        3 * EXPECTED, EXPECTED, "w", "f", mistakes=mistakes
    )
    check_close(EXPECTED, EXPECTED, "w", "f", mistakes=[Mistake("it", "fix", EXPECTED)])


def test_the_hint_comes_only_with_wrong_values():
    """A shape or dtype failure says nothing about why values could be wrong (issue 8, part 8)."""
    hint = "dropout must be off in eval"
    shape = message(torch.zeros(3), EXPECTED, "the output", "f", hint=hint)
    assert shape == "the output should have shape (2, 2), got (3,). Look at f."
    dtype = message(EXPECTED.long(), EXPECTED, "the output", "f", hint=hint)
    assert hint not in dtype
    values = message(EXPECTED + 1, EXPECTED, "the output", "f", hint=hint)
    assert values.endswith(f"; {hint}. Look at f.")
    nan = EXPECTED.clone()
    nan[0, 0] = float("nan")
    text = message(nan, EXPECTED, "the output", "f", hint=hint)
    assert "1 of 4 entries is NaN" in text and text.endswith(f"; {hint}. Look at f.")


def test_fail_if_mistake_compares_numbers_sets_and_approximations():
    fail_if_mistake(0.1, [Mistake("zero", "start at 1", 0.0)], "lr", "f")  # no match: no failure
    with pytest.raises(LearnerFailure, match="lr came out as zero: start at 1"):
        fail_if_mistake(
            0.0, [Mistake("zero", "start at 1", pytest.approx(1e-15, abs=1e-12))], "lr", "f"
        )
    with pytest.raises(LearnerFailure, match="came out as the book's split"):
        fail_if_mistake({1, 2}, [Mistake("the book's split", "split first", {2, 1})], "w", "f")
    fail_if_mistake(torch.ones(2), [Mistake("m", "f", torch.ones(3))], "w", "f")  # shapes differ
