"""Autoregressive generation: temperature, top-k and nucleus (top-p) sampling.

A language model gives, for the last position of its context, logits over the vocabulary. One new
token is chosen from them, appended, and the longer context goes back in: token by token. How the
token is chosen is what the options control:

- ``temperature``: divides the logits. Below 1 sharpens the distribution, above 1 flattens it,
  and 0 means greedy (always the most likely token; nothing is divided by zero).
- ``top_k``: only the k most likely tokens stay candidates.
- ``top_p``: only the smallest set of most likely tokens whose probability adds up to ``p`` stays
  (the "nucleus"), so the number of candidates adapts to how sure the model is.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to ``-inf`` the logits of the tokens that may not be sampled; ``logits`` is (B, V).

    top-k keeps the ``top_k`` largest logits of each row (ties with the k-th are kept too; a
    ``top_k`` larger than V keeps everything). top-p then sorts the remaining probabilities in
    decreasing order and keeps the shortest prefix whose sum reaches ``top_p``: a token is dropped
    when the tokens more likely than it already sum to ``top_p`` or more. The most likely token is
    always kept. Returns a new tensor; ``logits`` is not modified.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'sampling' not started: implement filter_logits in ch3/sampling.py (read docs/chapter03/3_7_sampling.md#top-k-and-top-p-filter_logits)"
    )


def check_generate_arguments(
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> None:
    """Raise ValueError naming the first argument of :func:`generate` that is out of range.

    In this order: ``idx`` must be a 2-D (B, T) tensor, of integer dtype (int64 or int32), with
    T >= 1; ``max_new_tokens`` an int >= 0; ``temperature`` a finite number >= 0; ``top_k`` None
    or an int >= 1; ``top_p`` None or a number in (0, 1]. The message says which argument, what
    it must be and what it got. :func:`generate` calls it before anything else.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'sampling' not started: implement check_generate_arguments in ch3/sampling.py (read docs/chapter03/3_7_sampling.md#arguments-out-of-range-check_generate_arguments)"
    )


def _block_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    block_size = getattr(config, "block_size", None) or getattr(model, "block_size", None)
    if block_size is None:
        raise ValueError("generate needs model.config.block_size to crop the context")
    return int(block_size)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend every row of ``idx`` by up to ``max_new_tokens`` sampled tokens.

    Args:
        model: ``model(idx)`` returns ``(logits, loss)`` with logits (B, T, V);
            ``model.config.block_size`` is its longest context.
        idx: (B, T) int64 token ids, the prompts (T >= 1).
        max_new_tokens: how many tokens to add (>= 0).
        temperature: > 0 divides the logits; 0 means greedy (the argmax, first index on ties).
        top_k: keep only the k most likely tokens (``None``: all).
        top_p: keep only the nucleus of probability ``top_p`` (``None`` or 1: all).
        eos_id: stop a row once it has produced this token; the row is then padded with
            ``eos_id`` while others go on, and generation stops as soon as every row has ended.
        generator: the random source for sampling (``None``: torch's global RNG); the same
            seeded generator gives the same tokens.

    Returns:
        (B, T + n) int64: ``idx`` followed by the ``n <= max_new_tokens`` new tokens.

    Each step feeds only the last ``block_size`` tokens (the model has no positions beyond
    that), takes the logits of the last position, applies temperature, then top-k, then top-p,
    and samples from the softmax. The model is put in eval mode (no dropout) while generating
    and given back in the mode it was in.

    Raises:
        ValueError: for a malformed ``idx`` or an argument out of range (temperature < 0,
            top_k < 1, top_p outside (0, 1], max_new_tokens < 0).
    """
    check_generate_arguments(idx, max_new_tokens, temperature, top_k, top_p)
    block_size = _block_size(model)
    was_training = model.training
    model.eval()
    idx = idx.long()
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'sampling' not started: implement generate in ch3/sampling.py (read docs/chapter03/3_7_sampling.md#the-generation-loop-generate)"
        )
    finally:
        model.train(was_training)  # even if the model raised
    return idx
