"""How long byte-level BPE training takes: vocab 512 and 1,024 on 200 KB and 1 MB of text.

    python benchmarks/bench_bpe.py [--tree solutions|exercises|PATH] [--no-pattern]

The text is generated here, deterministically (seeded), so the numbers need no download: made-up
words built from kana-like syllables with Zipf-distributed frequencies, in sentences, with a
sprinkle of Japanese and emoji so multi-byte characters take part. Times are wall-clock seconds
for ``BPETokenizer().train(text, vocab_size)``, best of ``--repeat`` runs (tokens/byte is
measured on the first 20 KB); ``--no-pattern``
also times training without GPT-2's pre-tokenisation (the whole text is one sequence, so the
incremental pair counts carry all the work).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SYLLABLES = [c + v for c in "kstnhmyrwgzdbp" for v in "aiueo"] + ["n"]
JAPANESE = ["日本語", "東京", "学習", "言語モデル", "こんにちは", "ありがとう", "データ"]
EMOJI = ["🙂", "🚀", "👍🏽", "🇯🇵"]


def make_text(n_bytes: int, seed: int = 0) -> str:
    """``n_bytes`` of UTF-8 text (cut at a character boundary), the same for the same seed."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(30_000)]
    words += JAPANESE + EMOJI
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    rng.shuffle(weights)  # Japanese and emoji get ordinary ranks, not the rarest ones
    cum_weights = list(itertools.accumulate(weights))
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        sentence = " ".join(rng.choices(words, cum_weights=cum_weights, k=rng.randint(4, 14)))
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([". ", ". ", "? ", "! ", ".\n"])
        parts.append(sentence)
        size += len(sentence.encode("utf-8"))
    return "".join(parts).encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=os.environ.get("LLMFS_TREE", "solutions"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-pattern", action="store_true", help="also time pattern=None")
    args = parser.parse_args(argv)
    os.environ["LLMFS_TREE"] = args.tree
    from grader.tree import load

    tokenizer = load("ch3.tokenizer")
    patterns = [("GPT-2", tokenizer.GPT2_PATTERN)] + ([("none", None)] if args.no_pattern else [])
    print(f"BPE training time, tree={args.tree}, {os.cpu_count()} CPU(s), best of {args.repeat}")
    print(
        f"{'text':>8} {'pattern':>8} {'vocab':>6} {'merges':>7} {'seconds':>8} {'tokens/byte':>12}"
    )
    for n_bytes in (200_000, 1_000_000):
        text = make_text(n_bytes)
        for name, pattern in patterns:
            for vocab_size in (512, 1024):
                best = float("inf")
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    tok = tokenizer.BPETokenizer().train(text, vocab_size, pattern=pattern)
                    best = min(best, time.perf_counter() - start)
                sample = text[:20_000]  # encoding one 1 MB chunk (no pattern) would take long
                ratio = len(tok.encode(sample)) / len(sample.encode("utf-8"))
                size = f"{n_bytes // 1000} KB" if n_bytes < 1_000_000 else "1 MB"
                print(
                    f"{size:>8} {name:>8} {vocab_size:>6} {len(tok.merges):>7} {best:>8.2f} "
                    f"{ratio:>12.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
