"""Optional stage ch3 'bpe_speed': BPE training that updates its pair counts instead of recounting.

A trainer that recounts every pair after every merge (the version most tutorials teach) is right,
and passes the ``tokenizer`` stage; it is slow on long texts, because each merge costs one pass
over the data. This stage measures that cost against a count of all the pairs of the same data,
on the machine at hand, and says what it found: it never waits long enough to time out.
"""

from __future__ import annotations

import random
import time
from collections import Counter

from grader.tree import load
from tests.helpers import check, check_equal

tok = load("ch3.tokenizer")

LEARN = "ch3/tokenizer.py, learn_merges"
FEW, MANY = 10, 50  # merges: the cost of the MANY - FEW merges in between is what is measured
COUNTS_PER_MERGE = 0.6  # a recount pays 1-3 full counts per merge, the reference 0.1-0.3
BUDGET = 4.0  # seconds: past this a slow trainer is judged on what was measured so far


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _one_long_text() -> tuple[int, ...]:
    """About 50 KB of syllable words with a lot of repeated pairs, as one sequence of bytes."""
    rng = random.Random(0)
    syllables = [c + v for c in "kstnmhr" for v in "aiueo"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(2000)]
    return tuple(" ".join(rng.choices(words, k=10_000)).encode("utf-8"))


def _one_count(ids: tuple[int, ...]) -> float:
    """The time to count every adjacent pair of ``ids`` once, as fast as Python can: the least a
    recount pays per merge. The fastest of a few, so a burst of load on a shared machine does
    not count."""
    return min(_seconds(lambda: Counter(zip(ids, ids[1:], strict=False))) for _ in range(5))


def test_each_merge_costs_less_than_a_pass_over_the_data():
    """After the first merges, each further merge costs less than one count of all the pairs."""
    ids = _one_long_text()
    one_count = _one_count(ids)
    learned: dict = {}

    def learn(n: int) -> None:
        learned.clear()
        learned.update(tok.learn_merges({ids: 1}, n))

    few = _seconds(lambda: learn(FEW))
    check_equal(len(learned), FEW, "number of merges learned", LEARN)
    check(
        few < BUDGET,
        f"your trainer took {few:.1f} s for the first {FEW} merges on {len(ids):,} bytes, where "
        f"counting all its pairs once takes {one_count * 1000:.0f} ms: about "
        f"{few / FEW / one_count:.0f} full counts per merge. Look at {LEARN}: count the pairs once, "
        "then after a merge update only the pairs around it.",
    )
    many = _seconds(lambda: learn(MANY))
    check_equal(len(learned), MANY, "number of merges learned", LEARN)
    per_merge = max(0.0, many - few) / (MANY - FEW)
    if few + many < BUDGET:
        # Always a second look, and the fastest of each: load comes in bursts, and a burst in
        # the FEW run alone makes a slow trainer look fast (a recount passed once in CI).
        few = min(few, _seconds(lambda: learn(FEW)))
        many = min(many, _seconds(lambda: learn(MANY)))
        per_merge = max(0.0, many - few) / (MANY - FEW)
    check(
        per_merge < COUNTS_PER_MERGE * one_count,
        f"your trainer recounts every pair after each merge: {MANY - FEW} more merges took "
        f"{many - few:.2f} s on {len(ids):,} bytes, where counting all its pairs once takes "
        f"{one_count * 1000:.0f} ms, so each merge costs about {per_merge / one_count:.1f} full "
        "counts, and 50,000 merges on a corpus 1,000 times larger would take days. Look at {LEARN}: keep "
        "the pair counts and the positions of each pair, and after a merge update only the "
        "pairs around it.",
    )
