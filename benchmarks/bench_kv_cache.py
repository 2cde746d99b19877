"""Generation speed of chapter 4's Llama with and without the KV cache, in new tokens per second.

    python benchmarks/bench_kv_cache.py [--tree solutions|exercises|PATH] [--tokens 256,1024]
        [--batch 1] [--device cpu] [--threads 1]

The model is a small Llama, freshly initialised (the speed does not depend on the weights):
vocab 2,048, dim 128, 4 layers, 4 query heads sharing 2 key-value heads (head size 32), SwiGLU
hidden 352, max_seq_len 1,056, tied embeddings: 1,000,576 parameters. The prompt is 16 tokens;
generation is greedy (temperature 0), so only the model is timed, not the sampling. With the
cache, ``generate`` runs the prompt once and then one token per step; without it, every step
runs the whole sequence again (O(n^2) token-passes for n tokens). The two run interleaved,
cached first, after one warm-up each, so load from other programs hits both alike.
``--threads`` defaults to the command line's default (``OMP_NUM_THREADS``, else half the cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = dict(
    vocab_size=2048,
    dim=128,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    hidden_dim=352,
    max_seq_len=1056,
    tie_embeddings=True,
)
PROMPT = 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=os.environ.get("LLMFS_TREE", "solutions"))
    parser.add_argument("--tokens", default="256,1024", help="comma-separated counts")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    os.environ["LLMFS_TREE"] = args.tree
    import torch

    from solutions.ch3.cli import default_threads

    torch.set_num_threads(args.threads or default_threads())

    from grader.tree import load

    llama, gen = load("ch4.llama"), load("ch4.generate")
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig(**CONFIG)).to(args.device).eval()
    idx = torch.randint(0, CONFIG["vocab_size"], (args.batch, PROMPT), device=args.device)

    def timed(tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = gen.generate(model, idx, tokens, temperature=0.0, use_cache=use_cache)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    load_average = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"tree={args.tree} device={args.device} threads={torch.get_num_threads()} "
        f"batch={args.batch} parameters={model.num_parameters():,} load average {load_average}"
    )
    for use_cache in (True, False):
        timed(8, use_cache)  # warm-up
    for tokens in map(int, args.tokens.split(",")):
        cached_s, cached = timed(tokens, True)
        uncached_s, uncached = timed(tokens, False)
        same = "identical" if torch.equal(cached, uncached) else "DIFFERENT"
        rate = args.batch * tokens
        print(
            f"{tokens:>5} new tokens: cache {cached_s:7.2f} s = {rate / cached_s:8,.0f} tokens/s; "
            f"no cache {uncached_s:7.2f} s = {rate / uncached_s:8,.0f} tokens/s; speed-up "
            f"{uncached_s / cached_s:5.1f}x (outputs {same})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
