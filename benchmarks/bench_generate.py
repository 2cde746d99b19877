"""Generation speed of the ch4 Llama with and without the KV cache, in generated tokens per second.

    python benchmarks/bench_generate.py [--tree solutions|exercises|PATH] [--tokens 256,1024]
        [--device cpu] [--threads 1] [--config small]

The model is the command line's ``--config`` (``small``: 4 layers, 4 query and 2 key-value heads,
128 wide, the width of chapter 3's benchmarks) with ``max_seq_len`` long enough for the prompt and
every new token, freshly initialised: the speed does not depend on the weights. Greedy decoding,
batch 1. With the cache, the prompt goes through once and each step feeds one token; without it,
every step runs the whole sequence again (``generate(use_cache=False)``), so its cost grows with
the length. Both runs of a length alternate, so load from other programs hits both alike; the
ratio is printed last. ``--threads`` defaults to the command line's default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "the cat sees "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=os.environ.get("LLMFS_TREE", "solutions"))
    parser.add_argument("--tokens", default="256,1024", help="comma-separated counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--config", default="small")
    args = parser.parse_args(argv)
    os.environ["LLMFS_TREE"] = args.tree
    import torch

    from solutions.ch3.cli import default_threads
    from solutions.ch4.cli import CONFIGS

    torch.set_num_threads(args.threads or default_threads())

    from grader.tree import load

    corpus, tok_mod = load("ch3.corpus"), load("ch3.tokenizer")
    llama, gen = load("ch4.llama"), load("ch4.generate")
    tokenizer = tok_mod.SimpleTokenizer(corpus.generate_corpus(500))
    counts = [int(n) for n in args.tokens.split(",")]
    shape = {k: v for k, v in CONFIGS[args.config].items() if k != "block_size"}
    config = llama.LlamaConfig(
        vocab_size=tokenizer.vocab_size, max_seq_len=len(PROMPT) + max(counts), **shape
    )
    torch.manual_seed(0)
    model = llama.Llama(config).to(args.device).eval()
    idx = torch.tensor([tokenizer.encode(PROMPT)], device=args.device)
    print(
        f"tree={args.tree} device={args.device} threads={torch.get_num_threads()} "
        f"config={args.config} ({model.num_parameters():,} parameters) "
        f"load={Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else '?'}"
    )

    def timed(tokens: int, use_cache: bool) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        gen.generate(model, idx, tokens, temperature=0, use_cache=use_cache)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(8, True), timed(8, False)  # warm-up
    for tokens in counts:
        cached, uncached = timed(tokens, True), timed(tokens, False)
        cached = min(cached, timed(tokens, True))  # cached runs are short: best of two
        print(
            f"{tokens:5d} tokens: with the cache {tokens / cached:8,.0f} tokens/s, without "
            f"{tokens / uncached:8,.0f} tokens/s: {uncached / cached:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
