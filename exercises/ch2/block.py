"""The parts around attention: LayerNorm, sinusoidal positions, the feed-forward layer, and the
encoder and decoder blocks that stack them with residual connections.

Post-LN (the default, as in "Attention Is All You Need"): ``x = norm(x + dropout(sublayer(x)))``.
Pre-LN (``norm_first=True``, as in GPT-2): ``x = x + dropout(sublayer(norm(x)))``.
Masks follow ``ch2/attention.py``: ``torch.bool``, ``True`` = may attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import MultiHeadAttention


class LayerNorm(nn.Module):
    """Layer normalisation over the last dimension, with a learned scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, where mean and the biased variance
    (divide by d_model, not d_model - 1) are taken over the last dimension. Parameters:
    ``weight`` (initialised to ones) and ``bias`` (zeros), both of shape (d_model,).
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement LayerNorm.__init__ in ch2/block.py (read docs/chapter02/2_3_block.md#layer-normalisation-layernorm)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (..., d_model); returns the same shape."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement LayerNorm.forward in ch2/block.py (read docs/chapter02/2_3_block.md#layer-normalisation-layernorm)"
        )


def sinusoidal_positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed position table of "Attention Is All You Need".

    ``PE[pos, 2i] = sin(pos / 10000^(2i / d_model))`` and
    ``PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))``.

    Returns:
        float32 tensor of shape (max_len, d_model).

    Raises:
        ValueError: if ``d_model`` is odd (sines and cosines come in pairs).
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch2 stage 'block' not started: implement sinusoidal_positional_encoding in ch2/block.py (read docs/chapter02/2_3_block.md#positions-sinusoidal_positional_encoding)"
    )


class FeedForward(nn.Module):
    """The position-wise feed-forward layer: ``linear2(dropout(relu(linear1(x))))``.

    Submodules: ``linear1 = nn.Linear(d_model, d_ff)``, ``linear2 = nn.Linear(d_ff, d_model)``.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement FeedForward.__init__ in ch2/block.py (read docs/chapter02/2_3_block.md#the-position-wise-feed-forward-network-feedforward)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., d_model), the same small MLP at every position."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement FeedForward.forward in ch2/block.py (read docs/chapter02/2_3_block.md#the-position-wise-feed-forward-network-feedforward)"
        )


class EncoderBlock(nn.Module):
    """Self-attention then feed-forward, each wrapped in a residual connection and a LayerNorm.

    Submodules: ``self_attn`` (:class:`MultiHeadAttention`), ``ff`` (:class:`FeedForward`),
    ``norm1`` (around self-attention), ``norm2`` (around the feed-forward), both
    :class:`LayerNorm`. Dropout is applied to each sublayer's output before the residual add.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        norm_first: bool = False,
    ):
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement EncoderBlock.__init__ in ch2/block.py (read docs/chapter02/2_3_block.md#the-blocks-encoderblock-and-decoderblock)"
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``x`` of shape (B, S, d_model); returns (B, S, d_model).

        ``mask``: optional ``torch.bool``, broadcastable to (B, n_heads, S, S), ``True`` = may
        attend; usually the source padding mask of shape (B, 1, 1, S).
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement EncoderBlock.forward in ch2/block.py (read docs/chapter02/2_3_block.md#the-blocks-encoderblock-and-decoderblock)"
        )


class DecoderBlock(nn.Module):
    """Masked self-attention, cross-attention to the encoder's output, then feed-forward.

    Submodules: ``self_attn`` and ``cross_attn`` (:class:`MultiHeadAttention`), ``ff``
    (:class:`FeedForward`), and ``norm1``, ``norm2``, ``norm3`` (:class:`LayerNorm`) around them
    in that order. Dropout is applied to each sublayer's output before the residual add.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        norm_first: bool = False,
    ):
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement DecoderBlock.__init__ in ch2/block.py (read docs/chapter02/2_3_block.md#the-blocks-encoderblock-and-decoderblock)"
        )

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode ``x`` of shape (B, T, d_model) against ``memory`` (B, S, d_model).

        Args:
            x: the target so far, (B, T, d_model).
            memory: the encoder's output, (B, S, d_model).
            tgt_mask: ``torch.bool`` broadcastable to (B, n_heads, T, T) for self-attention,
                ``True`` = may attend; usually causal & target padding, (B, 1, T, T).
            memory_mask: ``torch.bool`` broadcastable to (B, n_heads, T, S) for
                cross-attention; usually the source padding mask, (B, 1, 1, S).

        Returns:
            (B, T, d_model).
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'block' not started: implement DecoderBlock.forward in ch2/block.py (read docs/chapter02/2_3_block.md#the-blocks-encoderblock-and-decoderblock)"
        )
