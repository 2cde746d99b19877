"""The BPE trainer every tutorial teaches (recount all pairs before each merge) is right: it passes
the ``tokenizer`` stage, and the optional ``bpe_speed`` stage says why it is slow, in words."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

from grader import manifest
from grader.runner import run_stage
from grader.tree import REPO_ROOT

# A broken copy of the reference: learn_merges replaced by a minbpe-style recount.
NAIVE = '''

def learn_merges(word_counts, num_merges, first_id=256):
    """Recount every pair before every merge (correct, one pass over the data per merge)."""
    words = [(list(w), c) for w, c in word_counts.items()]
    merges = {}
    for k in range(num_merges):
        counts = {}
        for w, c in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + c
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < 2:
            break
        merges[best] = first_id + k
        words = [(merge_ids(w, best, first_id + k), c) for w, c in words]
    return merges
'''


def test_a_naive_recount_passes_tokenizer_and_hears_why_it_is_slow(tmp_path):
    tree = tmp_path / "naive"
    shutil.copytree(REPO_ROOT / "solutions", tree, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tree / "ch3" / "tokenizer.py", "a", encoding="utf-8") as f:
        f.write(NAIVE)
    chapter = manifest.CHAPTERS["ch3"]
    with ThreadPoolExecutor(2) as pool:  # two stage processes at once: half the wait
        tokenizer, speed = pool.map(
            lambda name: run_stage(chapter, chapter.stage(name), str(tree)),
            ("tokenizer", "bpe_speed"),
        )

    assert tokenizer.status == "passed", tokenizer.message
    assert speed.status == "failed"
    assert speed.message.startswith("your trainer recounts every pair after each merge"), (
        speed.message
    )
    assert "keep the pair counts and the positions of each pair" in speed.message
