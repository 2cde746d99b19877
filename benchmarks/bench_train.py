"""Training throughput of the ch3 GPT on nanoGPT's CPU Shakespeare configuration, in tokens/s.

    python benchmarks/bench_train.py [--tree solutions|exercises|PATH] [--steps 50] [--device cpu]

The configuration is nanoGPT's ``shakespeare_char`` CPU run: batch 12, block 64, 4 layers, 4 heads,
128 wide, no dropout, a character-level tokenizer. The text is the project's built-in corpus
(generated, nothing downloaded). The timing covers whole optimizer steps (``train_step``: data,
forward, backward, clipping, AdamW) after a few warm-up steps; tokens/s counts the input tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}
BATCH_SIZE = 12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=os.environ.get("LLMFS_TREE", "solutions"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv)
    os.environ["LLMFS_TREE"] = args.tree
    import torch

    from grader.tree import load

    corpus, tok_mod = load("ch3.corpus"), load("ch3.tokenizer")
    gpt_mod, data_mod, trainer_mod = load("ch3.gpt"), load("ch3.data"), load("ch3.trainer")

    text = corpus.generate_corpus()
    tokenizer = tok_mod.SimpleTokenizer(text)
    train, val = data_mod.create_dataloaders(
        text, tokenizer, block_size=CONFIG["block_size"], batch_size=args.batch_size
    )
    torch.manual_seed(0)
    model = gpt_mod.GPT(gpt_mod.GPTConfig(vocab_size=tokenizer.vocab_size, **CONFIG))
    trainer = trainer_mod.GPTTrainer(
        model, train, val, device=args.device, precision=args.precision, quiet=True,
        max_steps=args.warmup + args.steps, warmup_steps=args.warmup,
    )  # fmt: skip
    device = trainer.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        trainer.train_step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        record = trainer.train_step()
    sync()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch_size * CONFIG["block_size"]
    print(
        f"tree={args.tree} device={device} precision={trainer.dtype} threads="
        f"{torch.get_num_threads()} params={model.num_parameters():,}: {args.steps} steps of "
        f"{args.batch_size}x{CONFIG['block_size']} tokens in {seconds:.2f} s = "
        f"{tokens / seconds:,.0f} tokens/s ({1000 * seconds / args.steps:.1f} ms/step, "
        f"last loss {record['loss']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
