"""The end-to-end recipe of stage ch4 'e2e': chapter 3's task, trained with the Llama.

The same corpus, character tokenizer, loaders, trainer and settings as chapter 3's e2e stage
(:mod:`grader.tasks.ch3`), for :data:`STEPS` steps, with a Llama as wide and deep as chapter 3's
GPT and about as many parameters. ``python -m grader.tasks.ch4`` trains both, the Llama and that
GPT, with the same budget and prints their validation losses: the numbers of
docs/chapter04/4_7_e2e.md (a benchmark, not a test: no test asserts which model wins).
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from grader.tasks import ch3 as ch3_task
from grader.tree import load

# Half of chapter 3's e2e run. On seeds 0-2 the Llama ends at validation loss 0.614-0.625 (bar
# 1.44) and 97-99% corpus words (bar 90%); 150 steps gave 96-98%, 100 steps 77-88%, and 300 took
# half as long again for 0.571-0.577.
STEPS = 200
# Chapter 3's e2e GPT is 2 layers, 4 heads, 64 wide. SwiGLU's three matrices of 64 x 192 cost
# what GPT-2's two of 64 x 256 do; the Llama's untied output matrix costs about what the GPT's
# learned position table does: 102,208 parameters against 103,936 on the corpus.
MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 192}


def build_llama(vocab_size: int) -> nn.Module:
    """The recipe's Llama, from the tree's ch4/llama.py, for training windows of BLOCK_SIZE."""
    llama = load("ch4.llama")
    config = llama.LlamaConfig(vocab_size=vocab_size, max_seq_len=ch3_task.BLOCK_SIZE, **MODEL)
    return llama.Llama(config)


def train(seed: int = 0):
    """Train the recipe's Llama on the corpus: ``(trainer, tokenizer)``, as chapter 3 does."""
    return ch3_task.train(seed, build=build_llama, max_steps=STEPS)


def train_gpt(seed: int = 0):
    """Chapter 3's e2e GPT with the Llama's budget (:data:`STEPS` steps): the comparison."""
    return ch3_task.train(seed, max_steps=STEPS)


def sample(model, tokenizer, prompt: str, seed: int, n: int, temperature: float = 0.8) -> str:
    """``n`` characters after ``prompt``, by the tree's command line (ch4/cli.py): its generate
    with the KV cache, moving on in jumps past the model's ``max_seq_len`` of BLOCK_SIZE."""
    return load("ch4.cli").sample_text(model, tokenizer, prompt, n, temperature, seed=seed)


def main() -> int:
    """Train the Llama and the GPT with the same budget and print their validation losses."""
    torch.set_num_threads(1)
    for name, run in (("Llama", train), ("GPT", train_gpt)):
        start = time.perf_counter()
        trainer, _ = run(seed=0)
        seconds = time.perf_counter() - start
        print(
            f"{name}: {trainer.model.num_parameters():,} parameters, {STEPS} steps, validation "
            f"loss {trainer.evaluate():.3f} nats per character ({seconds:.1f} s on one thread)"
        )
    text = ch3_task.corpus_text()
    print(f"unigram baseline {ch3_task.unigram_baseline(text):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
