"""The tiny model and batch chapter 6's stage tests train: chapter 3's GPT from the tree under
test (its wte and lm_head tied), so that the learner's own GPT is what gets distributed."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from grader.tree import load
from tests.helpers import fill_parameters

BATCH, T, VOCAB = 4, 8, 32  # the global batch: BATCH sequences of T tokens


def tiny_gpt(seed: int = 0) -> nn.Module:
    """A 2-layer GPT without biases, weights fixed by name and ``seed`` (fill_parameters).

    No biases: the key's bias has a gradient that is zero in exact arithmetic (softmax ignores a
    constant added to a row of scores) and about 1e-10 in floats, whose sign depends on the order
    of the additions, and AdamW turns that noise into a full-size step: runs that add in another
    order (2 ranks against 1 process) would then differ by about the learning rate."""
    gpt = load("ch3.gpt")
    config = gpt.GPTConfig(
        vocab_size=VOCAB, block_size=T, n_layer=2, n_head=2, n_embd=16, bias=False
    )
    return fill_parameters(gpt.GPT(config), seed=seed)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: (BATCH, T) token ids each, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (BATCH, T), generator=generator)
    return x, torch.randint(0, VOCAB, (BATCH, T), generator=generator)


def flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened into one float64 vector (for one check of a whole model)."""
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
