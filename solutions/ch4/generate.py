"""Generation with a KV cache, for one prompt or a batch of prompts of different lengths.

Chapter 3's ``generate`` runs the whole context through the model for every new token: step
``t`` costs a pass over ``t`` tokens, so ``n`` tokens cost O(n^2) token-passes. With a KV cache
the prompt goes through once (the "prefill"), and then each step feeds only the newest token,
whose query attends to the cached keys and values: O(n) token-passes.

Prompts of different lengths share a batch by left padding (:func:`left_pad`): every prompt ends
in the last column, so every row's next token is appended in the same column, and ``pad_mask``
(False on the padding) keeps the padding out of attention and out of the positions. The
sampling rules (temperature, top-k, top-p) are chapter 3's, imported from ``ch3/sampling.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ch3.sampling import check_generate_arguments, filter_logits


def left_pad(
    prompts: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts of different lengths, padded on the left with ``pad_id``.

    Returns:
        ``(idx, pad_mask)``: (B, T) int64 with T the longest prompt's length, and (B, T) bool,
        True on the prompts' tokens, False on the padding.

    Raises:
        ValueError: if there is no prompt or a prompt is empty.
    """
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad needs at least one prompt, each of at least one token")
    # BEGIN SOLUTION
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    pad_mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        idx[row, T - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        pad_mask[row, T - len(prompt) :] = True
    return idx, pad_mask
    # END SOLUTION


def _next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids, by chapter 3's rules."""
    # BEGIN SOLUTION
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy: first index on ties
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
    # END SOLUTION


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    pad_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Extend every row of ``idx`` by up to ``max_new_tokens`` tokens.

    Args:
        model: a ``Llama``: ``model(idx, start_pos=..., cache=..., pad_mask=...)`` returns
            ``(logits, loss)``, ``model.new_cache(batch_size, max_len)`` makes a cache and
            ``model.config.max_seq_len`` is its longest sequence.
        idx: (B, T) int64 prompts (left-padded when ``pad_mask`` is given).
        max_new_tokens: how many tokens to add (>= 0).
        temperature, top_k, top_p: chapter 3's sampling rules (temperature 0 is greedy).
        eos_id: a row that produced it is finished and padded with ``eos_id`` from then on;
            generation stops when every row has finished.
        use_cache: True: one pass over the prompt into a KV cache of ``T + max_new_tokens``
            positions, then one token per step at ``start_pos`` = the number of tokens so far.
            False: every step runs the whole sequence again (the slow way, for comparison);
            both give the same tokens.
        generator: the random source for sampling (None: torch's global RNG).
        pad_mask: (B, T) bool from :func:`left_pad`, True on real tokens, or None (all real).

    Returns:
        (B, T + n) int64, ``idx`` followed by ``n <= max_new_tokens`` new tokens.

    The model is put in eval mode while generating and given back in the mode it was in.

    Raises:
        ValueError: for arguments chapter 3's ``check_generate_arguments`` rejects, a
            ``pad_mask`` of another shape than ``idx``, or ``T + max_new_tokens`` longer than
            ``model.config.max_seq_len``.
    """
    check_generate_arguments(idx, max_new_tokens, temperature, top_k, top_p)
    B, T = idx.shape
    if pad_mask is not None and tuple(pad_mask.shape) != (B, T):
        raise ValueError(f"pad_mask must have idx's shape {(B, T)}, got {tuple(pad_mask.shape)}")
    max_len = T + max_new_tokens
    if max_len > model.config.max_seq_len:
        raise ValueError(
            f"the prompt ({T} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_seq_len={model.config.max_seq_len}"
        )
    was_training = model.training
    model.eval()
    idx = idx.long()
    if pad_mask is not None:
        pad_mask = pad_mask.to(device=idx.device, dtype=torch.bool)
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    try:
        # BEGIN SOLUTION
        cache = model.new_cache(B, max_len) if use_cache else None
        new = idx  # the tokens the model has not seen yet
        for _ in range(max_new_tokens):
            if use_cache:
                start_pos = idx.size(1) - new.size(1)  # tokens already in the cache
                logits, _ = model(new, start_pos=start_pos, cache=cache, pad_mask=pad_mask)
            else:
                logits, _ = model(idx, pad_mask=pad_mask)
            next_id = _next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id[finished] = eos_id  # rows that already ended stay ended
                finished |= next_id[:, 0] == eos_id
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + steps)
            new = next_id  # (B, 1)
            if pad_mask is not None:
                pad_mask = torch.cat([pad_mask, pad_mask.new_ones(B, 1)], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        # END SOLUTION
    finally:
        model.train(was_training)
    return idx
