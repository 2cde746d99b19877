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
    # BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T_q, T_k)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(
                f"mask must be a torch.bool tensor (True = may attend), got dtype {mask.dtype}"
            )
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        # A row with every key masked is softmax(-inf, ..., -inf) = NaN; it attends to nothing.
        weights = weights.masked_fill(~mask, 0.0)
    output = F.dropout(weights, p=dropout_p) @ v  # (..., T_q, d_v)
    return output, weights
    # END SOLUTION


def causal_mask(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The decoder's "no peeking ahead" mask: query t may attend to keys 0..t.

    Returns:
        ``torch.bool`` tensor of shape (size, size), ``True`` on and below the diagonal.
    """
    # BEGIN SOLUTION
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()
    # END SOLUTION


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Hide padding keys: every query may attend to every key that is not ``pad_id``.

    Args:
        ids: token ids, integer tensor of shape (B, S).
        pad_id: the id used for padding.

    Returns:
        ``torch.bool`` tensor of shape (B, 1, 1, S), ``True`` where ``ids != pad_id``; it
        broadcasts over heads and queries against scores of shape (B, n_heads, T_q, S).
    """
    # BEGIN SOLUTION
    return (ids != pad_id)[:, None, None, :]  # (B, 1, 1, S)
    # END SOLUTION


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
        # BEGIN SOLUTION
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}: each head gets "
                "d_model / n_heads dimensions"
            )
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        # END SOLUTION

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
        # BEGIN SOLUTION
        B, T_q, _ = query.shape
        T_k = key.size(1)
        h, hs = self.n_heads, self.d_head
        # Project, then split d_model into (h, hs) and move the heads next to the batch.
        q = self.q_proj(query).view(B, T_q, h, hs).transpose(1, 2)  # (B, h, T_q, hs)
        k = self.k_proj(key).view(B, T_k, h, hs).transpose(1, 2)  # (B, h, T_k, hs)
        v = self.v_proj(value).view(B, T_k, h, hs).transpose(1, 2)  # (B, h, T_k, hs)
        dropout_p = self.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)  # (B, h, T_q, hs)
        # Put the heads back side by side: (B, h, T_q, hs) -> (B, T_q, h * hs).
        out = out.transpose(1, 2).reshape(B, T_q, self.d_model)
        return self.out_proj(out), weights
        # END SOLUTION
