"""Shared helpers for the chapter 2 stage tests: copy the tree's weights into torch.nn oracles.

PyTorch's ``nn.MultiheadAttention`` keeps the three input projections in one matrix,
``in_proj_weight = cat([W_q, W_k, W_v])``, and its boolean masks mean the opposite of ours:
``True`` = NOT allowed to attend. Everything here copies from the tree's module into the oracle,
so the tree's own initialisation is what gets compared.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from tests.helpers import Mistake, fail


def submodule(module: nn.Module, name: str, where: str) -> nn.Module:
    """``module.<name>``, or a failure that names the attribute the docstring promises."""
    if not hasattr(module, name):
        fail(
            f"{type(module).__name__} should have a submodule named {name!r} (its docstring lists "
            f"the names the tests rely on), but it has none. Look at {where}."
        )
    return getattr(module, name)


def unpack_attention(result: object, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, weights)`` from an attention call, or a failure saying what was returned."""
    if not (isinstance(result, tuple) and len(result) == 2):
        got = type(result).__name__
        if isinstance(result, tuple):
            got = f"a tuple of {len(result)}"
        fail(f"it should return the pair (output, weights), got {got}. Look at {where}.")
    return result


@torch.no_grad()
def randomize_layernorm(norm: nn.Module) -> None:
    """Give a LayerNorm a non-trivial weight and bias (they start as ones and zeros)."""
    norm.weight.copy_(1.0 + 0.5 * torch.randn_like(norm.weight))
    norm.bias.copy_(0.5 * torch.randn_like(norm.bias))


@torch.no_grad()
def copy_attention(ours: nn.Module, theirs: nn.MultiheadAttention, where: str) -> None:
    """Copy the tree's ``MultiHeadAttention`` (q/k/v/out_proj) into ``nn.MultiheadAttention``."""
    projections = [submodule(ours, name, where) for name in ("q_proj", "k_proj", "v_proj")]
    out_proj = submodule(ours, "out_proj", where)
    theirs.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
    theirs.out_proj.weight.copy_(out_proj.weight)
    if theirs.in_proj_bias is not None:
        theirs.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        theirs.out_proj.bias.copy_(out_proj.bias)


@torch.no_grad()
def copy_weight_and_bias(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy ``weight`` and ``bias`` from the tree's module into torch's (a Linear, a LayerNorm)."""
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


def key_padding(lengths: list[int], size: int) -> torch.Tensor:
    """``torch.bool`` (B, size), ``True`` at real positions: row b has ``lengths[b]`` of them."""
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: bool = True,
    dim: int = -1,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) over the keys (``dim=-1``), masked keys at 0 (True = may attend).

    ``scale=False`` and ``dim=-2`` give the usual wrong variants; a masked row keeps its zeros.
    """
    scores = q @ k.transpose(-2, -1)
    if scale:
        scores = scores / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return weights if mask is None else weights.masked_fill(~mask, 0.0).nan_to_num(0.0)


def sdpa_mistakes(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
) -> list[Mistake]:
    """The wrong attention weights a learner is likely to compute, on these inputs."""
    mistakes = [
        Mistake(
            "softmax(QK^T) without the 1/sqrt(d_k) scale",
            "divide the scores by sqrt(d_k) = sqrt(q.size(-1)) before the softmax",
            attention_weights(q, k, mask, scale=False),
        ),
        Mistake(
            "a softmax over the queries (dim=-2) instead of over the keys",
            "take the softmax over the last dimension (dim=-1), so each query's weights sum to 1",
            attention_weights(q, k, mask, dim=-2),
        ),
    ]
    if mask is not None:
        mistakes.append(
            Mistake(
                "attention with the mask inverted (True taken as 'hide this key')",
                "True means 'may attend': fill the scores with -inf where the mask is False "
                "(masked_fill(~mask, ...))",
                attention_weights(q, k, ~mask),
            )
        )
    return mistakes


@torch.no_grad()
def multi_head_by_hand(
    module: nn.Module,
    n_heads: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    transpose_split: bool = True,
    transpose_merge: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tree's ``MultiHeadAttention`` (its q/k/v/out_proj) computed here: ``(output, weights)``.

    ``transpose_split=False`` views the projections straight as (B, h, T, d_k) and
    ``transpose_merge=False`` reshapes (B, h, T, d_k) straight back to (B, T, d_model): the two
    ways of mixing positions and heads up that give the right shapes and the wrong numbers.
    """
    where = "ch2/attention.py, MultiHeadAttention"
    projections = [submodule(module, n, where) for n in ("q_proj", "k_proj", "v_proj", "out_proj")]
    B, T_q, d_model = query.shape
    h, d_k = n_heads, d_model // n_heads

    def split(x: torch.Tensor, proj: nn.Module) -> torch.Tensor:
        x = proj(x)
        if transpose_split:
            return x.view(B, x.size(1), h, d_k).transpose(1, 2)  # (B, h, T, d_k)
        return x.view(B, h, x.size(1), d_k)

    q, k, v = (split(x, p) for x, p in zip((query, key, value), projections, strict=False))
    weights = attention_weights(q, k, mask)  # (B, h, T_q, T_k)
    out = weights @ v  # (B, h, T_q, d_k)
    out = out.transpose(1, 2) if transpose_merge else out
    return projections[3](out.reshape(B, T_q, d_model)), weights
