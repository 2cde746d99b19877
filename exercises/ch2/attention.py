"""Attention: scaled dot-product attention, the two masks, and multi-head attention.

Mask convention (used everywhere in this chapter): a mask is a ``torch.bool`` tensor broadcastable
to the attention scores ``(..., T_q, T_k)``, and ``True`` means "this query may attend to this key".
Combine masks with ``&``: ``causal_mask(T) & padding_mask(ids, pad_id)`` has shape (B, 1, T, T).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.

    Args:
        q: queries, float tensor of shape (..., T_q, d_k).
        k: keys, float tensor of shape (..., T_k, d_k).
        v: values, float tensor of shape (..., T_k, d_v).
        mask: optional ``torch.bool`` tensor broadcastable to (..., T_q, T_k); ``True`` = the query
            may attend to the key. Masked keys get exactly zero weight.
        dropout_p: probability of dropping an attention weight (applied to the weights used for
            the output, not to the weights returned). Pass 0.0 in eval mode.

    Returns:
        ``(output, weights)``: ``output`` of shape (..., T_q, d_v) and ``weights`` of shape
        (..., T_q, T_k), the softmax over the keys before dropout. A query whose keys are all
        masked gets all-zero weights and a zero output, never NaN.

    Raises:
        TypeError: if ``mask`` is not a boolean tensor.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch2 stage 'attention' not started: implement scaled_dot_product_attention in ch2/attention.py (read docs/chapter02/2_2_attention.md#scaled-dot-product-attention)"
    )


def causal_mask(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The decoder's "no peeking ahead" mask: query t may attend to keys 0..t.

    Returns:
        ``torch.bool`` tensor of shape (size, size), ``True`` on and below the diagonal.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch2 stage 'attention' not started: implement causal_mask in ch2/attention.py (read docs/chapter02/2_2_attention.md#masks-causal_mask-and-padding_mask)"
    )


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Hide padding keys: every query may attend to every key that is not ``pad_id``.

    Args:
        ids: token ids, integer tensor of shape (B, S).
        pad_id: the id used for padding.

    Returns:
        ``torch.bool`` tensor of shape (B, 1, 1, S), ``True`` where ``ids != pad_id``; it
        broadcasts over heads and queries against scores of shape (B, n_heads, T_q, S).
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch2 stage 'attention' not started: implement padding_mask in ch2/attention.py (read docs/chapter02/2_2_attention.md#masks-causal_mask-and-padding_mask)"
    )


class MultiHeadAttention(nn.Module):
    """Multi-head attention: ``n_heads`` attentions of size d_model / n_heads, side by side.

    Submodules (``nn.Linear(d_model, d_model, bias=bias)`` each): ``q_proj``, ``k_proj``,
    ``v_proj`` project the inputs, ``out_proj`` mixes the concatenated heads. All heads are
    computed in one batched call, with no Python loop over heads.

    Raises:
        ValueError: if ``d_model`` is not divisible by ``n_heads``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'attention' not started: implement MultiHeadAttention.__init__ in ch2/attention.py (read docs/chapter02/2_2_attention.md#multi-head-attention)"
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query: (B, T_q, d_model).
            key: (B, T_k, d_model).
            value: (B, T_k, d_model).
            mask: optional ``torch.bool`` tensor broadcastable to (B, n_heads, T_q, T_k), ``True``
                = may attend: (T_q, T_k) for a causal mask, (B, 1, 1, T_k) for padding.

        Returns:
            ``(output, weights)``: ``output`` of shape (B, T_q, d_model) and the attention
            weights of every head, shape (B, n_heads, T_q, T_k), before dropout. A query whose
            keys are all masked gets zero weights (its output is ``out_proj``'s bias), never NaN.
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'attention' not started: implement MultiHeadAttention.forward in ch2/attention.py (read docs/chapter02/2_2_attention.md#multi-head-attention)"
        )
