"""Grouped-query attention (GQA) with rotary positions and a key-value cache.

GQA (Ainslie et al., 2023) gives the queries ``n_heads`` heads but the keys and values only
``n_kv_heads``: each group of ``n_heads // n_kv_heads`` consecutive query heads shares one
key-value head. ``n_kv_heads == n_heads`` is ordinary multi-head attention, ``n_kv_heads == 1``
multi-query attention. Fewer key-value heads mean a smaller cache, which is what limits how many
tokens a model can generate at once.

The KV cache: generating token ``t`` needs the keys and values of tokens ``0 .. t - 1``, which
never change (attention is causal), so they are computed once and kept, and each step feeds only
the new token. Positions and masks must then count from where the cache ends (``start_pos``),
not from 0: the bugs this chapter's tests look for.

Masks are boolean, True meaning "may attend", as in chapter 2.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import apply_rope


class KVCache:
    """The keys and values of every layer, preallocated for ``max_len`` positions.

    ``k[layer]`` and ``v[layer]`` are (batch_size, n_kv_heads, max_len, head_dim) tensors of
    zeros at first: the cache stores the ``n_kv_heads`` key-value heads as the projections make
    them, before they are repeated for the query heads.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.max_len = max_len
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'attention' not started: implement KVCache.__init__ in ch4/attention.py (read docs/chapter04/4_3_attention.md#the-kv-cache-kvcache-and-update)"
        )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values at positions ``start_pos .. start_pos + T - 1``.

        Args:
            layer: which layer's cache.
            k, v: (batch_size, n_kv_heads, T, head_dim), the new tokens' keys and values.
            start_pos: the position of the first new token (the number already cached).

        Returns:
            ``(keys, values)``, each (batch_size, n_kv_heads, start_pos + T, head_dim): every
            position cached so far, the new ones included (views of the cache, not copies).

        Raises:
            ValueError: if ``start_pos + T > max_len`` (the message gives both numbers), or if
                ``k``'s batch size, heads or head_dim are not the cache's.
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'attention' not started: implement KVCache.update in ch4/attention.py (read docs/chapter04/4_3_attention.md#the-kv-cache-kvcache-and-update)"
        )


def rope_positions(
    start_pos: int, T: int, pad_mask: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    """The positions of ``T`` new tokens whose first one sits at ``start_pos``, for RoPE.

    Without ``pad_mask``: (T,) ``start_pos, ..., start_pos + T - 1`` (int64). With ``pad_mask``
    (B, start_pos + T), True for real tokens and False for the padding on the left of shorter
    prompts: (B, T), each token's position counted among the real tokens of its row (a row's
    first real token is position 0); padding gets position 0.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch4 stage 'attention' not started: implement rope_positions in ch4/attention.py (read docs/chapter04/4_3_attention.md#positions-and-masks-with-a-cache-rope_positions-and-attention_mask)"
    )


def attention_mask(
    T: int, S: int, pad_mask: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    """Which keys each of ``T`` new queries may attend to, when there are ``S`` keys in all.

    The queries are the last ``T`` of the ``S`` positions: query ``i`` sits at position
    ``S - T + i`` and may attend to keys ``0 .. S - T + i`` (causal). Note that this is not
    ``F.scaled_dot_product_attention(..., is_causal=True)`` when ``T < S``: PyTorch aligns that
    mask to the top-left, so a query would see only keys ``0 .. i``.

    With ``pad_mask`` (B, S), True for real tokens: keys that are padding are hidden too, except
    that every query always sees its own position (a padding query would otherwise see nothing,
    and a softmax over nothing is NaN).

    Returns:
        bool, (1, 1, T, S) without ``pad_mask``, (B, 1, T, S) with it; True = may attend.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch4 stage 'attention' not started: implement attention_mask in ch4/attention.py (read docs/chapter04/4_3_attention.md#positions-and-masks-with-a-cache-rope_positions-and-attention_mask)"
    )


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``n_heads`` query heads sharing ``n_kv_heads`` key-value heads.

    ``head_dim = dim // n_heads``. Projections (``bias`` only on q, k and v, as in Qwen2; never
    on ``o_proj``): ``q_proj`` dim -> n_heads * head_dim, ``k_proj`` and ``v_proj`` dim ->
    n_kv_heads * head_dim, ``o_proj`` n_heads * head_dim -> dim. Query head ``h`` uses key-value
    head ``h // (n_heads // n_kv_heads)``: the kv heads are repeated with ``repeat_interleave``
    (head 0 0 1 1 ...), not tiled with ``repeat`` (0 1 0 1 ...).

    Raises:
        ValueError: if ``n_heads`` does not divide ``dim`` or ``n_kv_heads`` does not divide
            ``n_heads``.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, bias: bool = False) -> None:
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'attention' not started: implement GroupedQueryAttention.__init__ in ch4/attention.py (read docs/chapter04/4_3_attention.md#grouped-query-attention-groupedqueryattention)"
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        layer: int = 0,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from the ``T`` new tokens ``x`` to every token so far.

        Args:
            x: (B, T, dim), the new tokens, at positions ``start_pos .. start_pos + T - 1``.
            cos, sin: (max_len, head_dim) RoPE tables from ``rope_cache``.
            start_pos: the position of ``x``'s first token. With a cache it is the number of
                tokens already cached; without one the keys are ``x``'s own.
            cache: a :class:`KVCache` or None. With one, the new keys and values are written at
                ``start_pos`` (``cache.update(layer, k, v, start_pos)``) and the queries attend
                to all ``start_pos + T`` cached positions.
            layer: this layer's index in the cache.
            pad_mask: (B, start_pos + T) bool or None, True for real tokens, False for the left
                padding of shorter prompts: positions come from :func:`rope_positions` and the
                mask from :func:`attention_mask`.

        Returns:
            (B, T, dim). Queries and keys are rotated (``apply_rope``) at their real positions
            before the keys are cached; the scores are scaled by ``1 / sqrt(head_dim)``.
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'attention' not started: implement GroupedQueryAttention.forward in ch4/attention.py (read docs/chapter04/4_3_attention.md#grouped-query-attention-groupedqueryattention)"
        )
