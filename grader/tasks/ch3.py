"""The end-to-end recipe of stage ch3 'e2e', shared by the test and by its fresh-process reload.

``python -m grader.tasks.ch3 CHECKPOINT PROMPT SEED N`` loads the checkpoint with the tree
chosen by LLMFS_TREE and prints, as JSON, the text that :func:`sample` generates: the test
compares it with the text generated before saving.
"""

from __future__ import annotations

import collections
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from grader.tree import load

# A small GPT learns the built-in grammar (spelling and word order) in a few hundred steps: about
# 13 s on one idle CPU core for the reference.
N_SENTENCES = 3000
BLOCK_SIZE = 32
BATCH_SIZE = 32
MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": 0.0}
# 400 steps: the validation loss ends at 0.586-0.591 against a bar of 1.44 and the samples at
# 98-99% corpus words against 90% (seeds 0-2); 600 took half as long again for 0.55 and 98-100%.
TRAIN = {"learning_rate": 1e-2, "warmup_steps": 60, "max_steps": 400, "grad_clip": 1.0}


def corpus_text(seed: int = 0) -> str:
    return load("ch3.corpus").generate_corpus(N_SENTENCES, seed=seed)


def unigram_baseline(text: str, train_split: float = 0.9) -> float:
    """Cross-entropy (nats per character) on the validation part of ``text`` of the best model
    that ignores context: the character frequencies of the training part (add-one smoothed)."""
    k = int(len(text) * train_split)
    counts = collections.Counter(text[:k])
    vocab = set(text)
    total = k + len(vocab)
    val = text[k:]
    return -sum(math.log((counts[c] + 1) / total) for c in val) / len(val)


def train(seed: int = 0, build: Callable[[int], nn.Module] | None = None, **changes: Any):
    """Train the recipe's GPT on the corpus with the tree's modules: ``(trainer, tokenizer)``.

    ``build(vocab_size)`` makes another model to train the same way (chapter 4's Llama, on the
    same data with the same trainer); ``changes`` override settings of :data:`TRAIN`.
    """
    tok_mod, gpt_mod = load("ch3.tokenizer"), load("ch3.gpt")
    data_mod, trainer_mod = load("ch3.data"), load("ch3.trainer")
    text = corpus_text()
    tokenizer = tok_mod.SimpleTokenizer(text)
    train_loader, val_loader = data_mod.create_dataloaders(
        text, tokenizer, block_size=BLOCK_SIZE, batch_size=BATCH_SIZE, seed=seed
    )
    torch.manual_seed(seed)
    if build is None:
        config = gpt_mod.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=BLOCK_SIZE, **MODEL)
        model = gpt_mod.GPT(config)
    else:
        model = build(tokenizer.vocab_size)
    trainer = trainer_mod.GPTTrainer(
        model,
        train_loader,
        val_loader,
        eval_interval=0,
        eval_batches=1000,  # the whole validation part
        device="cpu",
        tokenizer=tokenizer,
        seed=seed,
        quiet=True,
        **(TRAIN | changes),
    )
    trainer.train()
    return trainer, tokenizer


def sample(model, tokenizer, prompt: str, seed: int, n: int, temperature: float = 0.8) -> str:
    """``n`` tokens after ``prompt`` from the tree's generate, with a seeded generator."""
    generate = load("ch3.sampling").generate
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    out = generate(model, idx, n, temperature=temperature, generator=g)
    return tokenizer.decode(out[0, idx.size(1) :].tolist())


def reload(path):
    """``(model, tokenizer)`` from a checkpoint, with nothing but the checkpoint."""
    gpt_mod, tok_mod = load("ch3.gpt"), load("ch3.tokenizer")
    ckpt = load("ch3.trainer").read_checkpoint(path)
    model = gpt_mod.GPT(gpt_mod.GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    tokenizer = tok_mod.tokenizer_from_dict(json.loads(ckpt["tokenizer"]))
    return model.eval(), tokenizer


def main(argv: list[str]) -> int:
    path, prompt, seed, n = argv
    model, tokenizer = reload(path)
    print(json.dumps(sample(model, tokenizer, prompt, int(seed), int(n))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
