"""Byte-level BPE side by side with tiktoken, Hugging Face tokenizers and minbpe, on one text.

    python benchmarks/bench_vs_bpe.py --data PATH/TO/input.txt [--minbpe PATH/TO/minbpe]
        [--vocab-size 1024] [--train-bytes 200000] [--rounds 3] [--minbpe-train]

``--data`` is tinyshakespeare (``data/tinyshakespeare/input.txt`` of github.com/karpathy/char-rnn).
Our tokenizer is trained on the first ``--train-bytes`` of it, then every contender encodes and
decodes the whole file with the SAME vocabulary: tiktoken is built offline from our merges
(``tiktoken.Encoding(mergeable_ranks={token bytes: id})``), minbpe's ``RegexTokenizer`` gets our
merges and vocabulary; their ids are checked equal to ours. Hugging Face's Rust trainer
(``ByteLevelBPETokenizer``) trains on the same bytes to the same size, and encodes with its own
vocabulary. Everything is single-threaded (``RAYON_NUM_THREADS=1`` for Hugging Face).

tiktoken, tokenizers and minbpe are optional, benchmark-only: a missing one is skipped (pip
install tiktoken tokenizers; minbpe is a checkout of github.com/karpathy/minbpe). Contenders run
interleaved, ``--rounds`` times; each figure is the best round (the least disturbed by other
programs). "cold" is our first encode (empty chunk cache), "warm" the same text again. The
ratios (ours against each peer, >1 means ours is faster) are printed last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # Hugging Face tokenizers: one thread
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_of(rounds: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="tinyshakespeare input.txt")
    parser.add_argument("--minbpe", type=Path, help="a checkout of karpathy/minbpe")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--train-bytes", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--minbpe-train", action="store_true", help="also time minbpe's trainer")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    from solutions.ch3.tokenizer import GPT2_PATTERN, BPETokenizer

    text = args.data.read_text(encoding="utf-8")
    train_text = text.encode("utf-8")[: args.train_bytes].decode("utf-8", errors="ignore")
    mb = len(text.encode("utf-8")) / 1e6
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{mb:.2f} MB text, vocab {args.vocab_size}, training on {len(train_text):,} chars")

    train_s: dict[str, float] = {}
    encode_s: dict[str, float] = {}
    decode_s: dict[str, float] = {}
    ours = BPETokenizer().train(train_text, args.vocab_size)
    ids = ours.encode(text)

    def ours_cold() -> None:
        BPETokenizer.from_dict(ours.to_dict()).encode(text)

    contenders_train = {"ours": lambda: BPETokenizer().train(train_text, args.vocab_size)}
    contenders_encode = {"ours (cold)": ours_cold, "ours (warm)": lambda: ours.encode(text)}
    contenders_decode = {"ours": lambda: ours.decode(ids)}

    try:
        import tiktoken
    except ImportError:
        print("tiktoken not installed: skipped")
    else:
        ranks: dict[bytes, int] = {}
        for i, token in sorted(ours.vocab.items()):
            ranks.setdefault(token, i)
        enc = tiktoken.Encoding(
            "ours", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
        same = enc.encode_ordinary(text) == ids
        print(f"tiktoken with our merges gives our ids: {same}")
        contenders_encode["tiktoken"] = lambda: enc.encode_ordinary(text)
        contenders_decode["tiktoken"] = lambda: enc.decode(ids)
    try:
        from tokenizers import ByteLevelBPETokenizer
    except ImportError:
        print("tokenizers not installed: skipped")
    else:
        hf = ByteLevelBPETokenizer()

        def hf_train() -> None:
            ByteLevelBPETokenizer().train_from_iterator(
                [train_text], vocab_size=args.vocab_size, show_progress=False
            )

        hf.train_from_iterator([train_text], vocab_size=args.vocab_size, show_progress=False)
        lines = text.splitlines(keepends=True)
        contenders_train["Hugging Face"] = hf_train
        contenders_encode["Hugging Face"] = lambda: hf.encode(text)
        contenders_encode["Hugging Face (batch of lines)"] = lambda: hf.encode_batch(lines)
    if args.minbpe is not None:
        sys.path.insert(0, str(args.minbpe))
        from minbpe import RegexTokenizer
        from minbpe.regex import GPT2_SPLIT_PATTERN

        peer = RegexTokenizer(pattern=GPT2_SPLIT_PATTERN)
        peer.merges = dict(ours.merges)
        peer.vocab = dict(ours.vocab)
        print(f"minbpe with our merges gives our ids: {peer.encode_ordinary(text) == ids}")
        contenders_encode["minbpe"] = lambda: peer.encode_ordinary(text)
        contenders_decode["minbpe"] = lambda: peer.decode(ids)
        if args.minbpe_train:
            contenders_train["minbpe"] = lambda: RegexTokenizer(GPT2_SPLIT_PATTERN).train(
                train_text, args.vocab_size
            )

    for _ in range(args.rounds):  # interleaved: each round runs every contender once
        for table, contenders in (
            (train_s, contenders_train),
            (encode_s, contenders_encode),
            (decode_s, contenders_decode),
        ):
            for name, fn in contenders.items():
                table[name] = min(table.get(name, float("inf")), best_of(1, fn))
    print(f"load before: {load}, after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    for name, s in train_s.items():
        print(f"train  {name:<30} {s:8.3f} s")
    for name, s in encode_s.items():
        print(f"encode {name:<30} {s:8.3f} s  {mb / s:6.2f} MB/s")
    for name, s in decode_s.items():
        print(f"decode {name:<30} {s:8.3f} s  {mb / s:6.2f} MB/s")
    ratios = [
        f"train vs {n}: {s / train_s['ours']:.2f}x" for n, s in train_s.items() if n != "ours"
    ]
    for ours_name in ("ours (cold)", "ours (warm)"):
        ratios += [
            f"encode {ours_name[6:-1]} vs {n}: {s / encode_s[ours_name]:.2f}x"
            for n, s in encode_s.items()
            if not n.startswith("ours")
        ]
    ratios += [
        f"decode vs {n}: {s / decode_s['ours']:.2f}x" for n, s in decode_s.items() if n != "ours"
    ]
    print("ratio (peer time / our time, >1: ours faster): " + "; ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
