"""Sampling speed of the ch3 GPT, in generated tokens per second.

    python benchmarks/bench_sampling.py [--tree solutions|exercises|PATH] [--tokens 256,1024]
        [--device cpu] [--threads 1]

The model is nanoGPT's CPU Shakespeare configuration (4 layers, 4 heads, 128 wide, block 64) with
a character vocabulary of the built-in corpus, freshly initialised: the speed does not depend on
the weights. ``generate`` has no KV cache, so every new token runs the model over the last
``block_size`` tokens; rows of a batch are generated together (tokens/s counts all rows).
``--threads`` defaults to the command line's default (``OMP_NUM_THREADS``, else half the cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=os.environ.get("LLMFS_TREE", "solutions"))
    parser.add_argument("--tokens", default="256,1024", help="comma-separated counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    os.environ["LLMFS_TREE"] = args.tree
    import torch

    from solutions.ch3.cli import default_threads

    torch.set_num_threads(args.threads or default_threads())

    from grader.tree import load

    corpus, tok_mod = load("ch3.corpus"), load("ch3.tokenizer")
    gpt_mod, sampling = load("ch3.gpt"), load("ch3.sampling")
    tokenizer = tok_mod.SimpleTokenizer(corpus.generate_corpus(500))
    torch.manual_seed(0)
    model = gpt_mod.GPT(gpt_mod.GPTConfig(vocab_size=tokenizer.vocab_size, **CONFIG))
    model = model.to(args.device).eval()
    print(f"tree={args.tree} device={args.device} threads={torch.get_num_threads()}")
    cases = [(n, batch, options) for n in map(int, args.tokens.split(",")) for batch, options in
             ((1, {}), (1, {"top_k": 10}), (1, {"top_p": 0.9}), (8, {}))]  # fmt: skip
    for tokens, batch, options in cases:
        idx = torch.tensor([tokenizer.encode("the ")] * batch, device=args.device)
        g = torch.Generator(device=args.device).manual_seed(0)
        sampling.generate(model, idx, 8, generator=g)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        sampling.generate(model, idx, tokens, generator=g, **options)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        label = ", ".join(f"{k}={v}" for k, v in options.items()) or "temperature 1"
        print(
            f"batch {batch}, {label:>14}: {tokens} tokens in {seconds:.2f} s = "
            f"{batch * tokens / seconds:,.0f} tokens/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
