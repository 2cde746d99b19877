"""Shared helpers for the chapter 2 stage tests: copy the tree's weights into torch.nn oracles.

PyTorch's ``nn.MultiheadAttention`` keeps the three input projections in one matrix,
``in_proj_weight = cat([W_q, W_k, W_v])``, and its boolean masks mean the opposite of ours:
``True`` = NOT allowed to attend. Everything here copies from the tree's module into the oracle,
so the tree's own initialisation is what gets compared.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tests.helpers import fail


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
