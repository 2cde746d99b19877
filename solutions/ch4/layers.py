"""The three layers a Llama block is made of, beyond chapter 3's: RMSNorm, RoPE and SwiGLU.

- RMSNorm (Zhang and Sennrich, 2019) replaces LayerNorm: no mean subtracted, no bias, only a
  scale, ``x / sqrt(mean(x^2) + eps) * weight``.
- Rotary position embeddings (RoPE, Su et al., 2021) replace the learned position embedding:
  queries and keys are rotated by an angle proportional to their position, so their dot product
  depends only on the distance between them.
- SwiGLU (Shazeer, 2020) replaces the GELU MLP: ``down(silu(gate(x)) * up(x))``.

Conventions are Hugging Face's (``transformers``' Llama), so its checkpoints load unchanged:
RoPE uses the "rotate half" layout, in which dimension ``i`` of a head is paired with dimension
``i + head_dim / 2`` (Meta's original code pairs neighbours ``2i`` and ``2i + 1`` instead; the
conversion script permutes the rows of ``q_proj`` and ``k_proj`` so both give the same scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with a learned scale ``weight``.

    ``y = x / sqrt(mean(x ** 2) + eps) * weight``, the mean over the last dimension. The
    normalisation is computed in float32 whatever the input's dtype (in float16, ``x ** 2``
    overflows past 65504) and cast back to the input's dtype before the scale, as Hugging Face's
    ``LlamaRMSNorm`` does. ``weight`` starts at ones.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        # BEGIN SOLUTION
        self.weight = nn.Parameter(torch.ones(dim))
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., dim), any float dtype -> the same shape and dtype."""
        # BEGIN SOLUTION
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)
        # END SOLUTION


def llama3_scaled_frequencies(
    inv_freq: torch.Tensor,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_len: int,
) -> torch.Tensor:
    """Llama 3.1's RoPE scaling (``rope_type: "llama3"``): slow the low frequencies down.

    A frequency whose wavelength ``2 pi / inv_freq`` is longer than
    ``original_max_len / low_freq_factor`` (it never completed a turn in training) is divided by
    ``factor``; one whose wavelength is shorter than ``original_max_len / high_freq_factor`` is
    kept; in between, the two are blended with ``s = (original_max_len / wavelength -
    low_freq_factor) / (high_freq_factor - low_freq_factor)``: ``(1 - s) * inv_freq / factor +
    s * inv_freq``. Returns a new (head_dim // 2,) tensor of the same dtype.
    """
    # BEGIN SOLUTION
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = original_max_len / low_freq_factor
    high_freq_wavelength = original_max_len / high_freq_factor
    smooth = (original_max_len / wavelength - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / factor, blended)
    return torch.where(wavelength < high_freq_wavelength, inv_freq, scaled)
    # END SOLUTION


def rope_cache(
    head_dim: int,
    max_len: int,
    theta: float = 10000.0,
    scaling: Mapping[str, float] | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosines and sines of RoPE for positions ``0 .. max_len - 1``, in float32.

    Frequency ``i`` (``i = 0 .. head_dim/2 - 1``) is ``inv_freq[i] = theta ** (-2 i / head_dim)``;
    with ``scaling`` (a config's ``rope_scaling``: ``factor``, ``low_freq_factor``,
    ``high_freq_factor``, ``original_max_position_embeddings``) the frequencies go through
    :func:`llama3_scaled_frequencies` first. Position ``p`` turns pair ``i`` by the angle
    ``p * inv_freq[i]``.

    Returns:
        ``(cos, sin)``, each (max_len, head_dim): column ``i`` and column ``i + head_dim/2`` hold
        the same angle (the rotate-half layout), ``cos[p, i] = cos(p * inv_freq[i % (head_dim/2)])``.

    Raises:
        ValueError: if ``head_dim`` is odd (the dimensions are rotated in pairs).
    """
    # BEGIN SOLUTION
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (head_dim/2,)
    if scaling is not None:
        inv_freq = llama3_scaled_frequencies(
            inv_freq,
            scaling["factor"],
            scaling["low_freq_factor"],
            scaling["high_freq_factor"],
            scaling["original_max_position_embeddings"],
        )
    positions = torch.arange(max_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)  # (max_len, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, head_dim): both halves of a pair
    return angles.cos(), angles.sin()
    # END SOLUTION


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Rotate the queries or keys ``x`` to their positions (the rotate-half layout).

    Args:
        x: (B, n_heads, T, head_dim) queries or keys.
        cos, sin: (max_len, head_dim) from :func:`rope_cache`.
        positions: the position of each of the T tokens: (T,) shared by the batch, or (B, T)
            one row per sequence (left-padded batches), int64.

    Returns:
        (B, n_heads, T, head_dim) in ``x``'s dtype: with ``x1, x2 = x[..., :head_dim/2],
        x[..., head_dim/2:]`` and ``c, s`` the rows ``cos[positions], sin[positions]``,
        ``x * c + cat(-x2, x1) * s``, that is each pair ``(x1[i], x2[i])`` turned by its angle.
    """
    # BEGIN SOLUTION
    c = cos[positions].to(x.dtype)  # (T, hd) or (B, T, hd)
    s = sin[positions].to(x.dtype)
    if positions.dim() == 2:  # one row of positions per sequence: broadcast over the heads
        c, s = c.unsqueeze(1), s.unsqueeze(1)  # (B, 1, T, hd)
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hd/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, nh, T, hd)
    return x * c + rotated * s
    # END SOLUTION


class SwiGLU(nn.Module):
    """The gated feed-forward layer of Llama: ``down_proj(silu(gate_proj(x)) * up_proj(x))``.

    ``gate_proj`` and ``up_proj`` are ``nn.Linear(dim, hidden_dim, bias=False)``, ``down_proj``
    is ``nn.Linear(hidden_dim, dim, bias=False)``; silu(z) = z * sigmoid(z).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        # BEGIN SOLUTION
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., dim) -> (..., dim)."""
        # BEGIN SOLUTION
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # END SOLUTION
