"""The project's own checks of the chapter 2 e2e task (not a stage: they do not grade a tree)."""

from __future__ import annotations

import pytest

from grader.tasks import ch2 as task


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (45, "forty five"),
        (100, "one hundred"),
        (407, "four hundred seven"),
        (919, "nine hundred nineteen"),
        (1000, "one thousand"),
        (2045, "two thousand forty five"),
        (5019, "five thousand nineteen"),
        (9999, "nine thousand nine hundred ninety nine"),
    ],
)
def test_number_to_words(n, words):
    """number_to_words writes numbers the way the docs say."""
    assert task.number_to_words(n) == words


def test_number_to_words_rejects_out_of_range():
    """Numbers outside 0..MAX_NUMBER are an error."""
    with pytest.raises(ValueError):
        task.number_to_words(task.MAX_NUMBER + 1)


def test_round_trip_and_vocabulary():
    """Every number's words are in the target vocabulary and decode back; lengths fit max_len."""
    config = task.TrainConfig()
    for n in range(task.MAX_NUMBER + 1):
        ids = task.encode_target(n)
        assert task.decode_target(ids) == task.number_to_words(n)
        assert len(ids) <= config.max_len and len(task.encode_source(n)) <= config.max_len


def test_held_out_numbers_are_never_trained_on():
    """split_numbers gives disjoint train and test sets of the requested sizes."""
    train, test = task.split_numbers(3000, 300, seed=0)
    assert len(set(train)) == 3000 and len(set(test)) == 300
    assert not set(train) & set(test)
