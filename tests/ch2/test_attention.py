"""Stage 'attention': scaled dot-product attention, the causal and padding masks, and
multi-head attention, checked against torch.nn.functional and nn.MultiheadAttention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from grader.tree import load
from tests.ch2.oracles import (
    attention_weights,
    copy_attention,
    key_padding,
    multi_head_by_hand,
    sdpa_mistakes,
    submodule,
    unpack_attention,
)
from tests.helpers import (
    Mistake,
    check,
    check_close,
    check_equal,
    check_raises,
    check_same,
    check_shape,
    fill_parameters,
)

attention = load("ch2.attention")

SDPA = "ch2/attention.py, scaled_dot_product_attention"
MHA = "ch2/attention.py, MultiHeadAttention"
MHA_FWD = "ch2/attention.py, MultiHeadAttention.forward"


def _sdpa(q, k, v, mask=None):
    return unpack_attention(attention.scaled_dot_product_attention(q, k, v, mask), SDPA)


def _mha(module, query, key, value, mask=None):
    return unpack_attention(module(query, key, value, mask), MHA_FWD)


HEADS_SPLIT = (
    "heads split without a transpose (the projection viewed straight as (B, h, T, d_k), which "
    "mixes positions and heads)"
)
SPLIT_FIX = "view it as (B, T, h, d_k), then .transpose(1, 2) to (B, h, T, d_k)"


def _mha_mistakes(module, n_heads, query, key, value, mask=None):
    """``(mistakes in the weights, mistakes in the output)`` of MultiHeadAttention, here."""
    _, split_weights = multi_head_by_hand(
        module, n_heads, query, key, value, mask, transpose_split=False
    )
    merged_output, _ = multi_head_by_hand(
        module, n_heads, query, key, value, mask, transpose_merge=False
    )
    merge = Mistake(
        "heads put back without a transpose ((B, h, T, d_k) reshaped straight to "
        "(B, T, d_model), which mixes positions and heads)",
        "out.transpose(1, 2) to (B, T, h, d_k) first, then reshape to (B, T, d_model)",
        merged_output,
    )
    return [Mistake(HEADS_SPLIT, SPLIT_FIX, split_weights)], [merge]


def _check_deterministic_in_eval(module, query, key, value, mask, first_output):
    again, _ = _mha(module, query, key, value, mask)
    check_same(
        again,
        first_output,
        f"two calls in eval mode gave different outputs: dropout must be off in eval "
        f"(dropout_p = self.dropout if self.training else 0.0). Look at {MHA_FWD}.",
    )


def test_sdpa_matches_torch():
    """scaled_dot_product_attention matches F.scaled_dot_product_attention and softmax(QK^T/sqrt(d))."""
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 6)
    out, weights = _sdpa(q, k, v)
    expected_weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    check_close(
        weights, expected_weights, "the attention weights", SDPA, mistakes=sdpa_mistakes(q, k)
    )
    check_close(out, F.scaled_dot_product_attention(q, k, v), "the attention output", SDPA)


def test_sdpa_mask_matches_torch():
    """With a boolean mask (True = may attend), masked keys get weight 0 and the output matches torch."""
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.rand(2, 1, 5, 7) < 0.6
    mask[..., 0], mask[..., 1] = True, False  # every query keeps some keys and loses some
    out, weights = _sdpa(q, k, v, mask)
    check_close(
        weights,
        attention_weights(q, k, mask),
        "the masked attention weights",
        SDPA,
        mistakes=sdpa_mistakes(q, k, mask),
    )
    masked = weights.masked_select(~mask.expand_as(weights))
    check(
        bool((masked == 0).all()),
        f"keys where the mask is False should get weight exactly 0, but some got up to "
        f"{float(masked.abs().max()):.3g} (True means 'may attend'). Look at {SDPA}.",
    )
    check_close(
        weights.sum(-1),
        torch.ones(2, 3, 5),
        "each query's weights summed over the keys it may attend to",
        SDPA,
        hint="mask True means 'may attend', and a softmax over those keys sums to 1",
    )
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    check_close(out, expected, "the masked attention output", SDPA)


def test_sdpa_fully_masked_query_gives_zeros():
    """A query whose keys are all masked gets zero weights and a zero output, never NaN."""
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.ones(2, 4, 6, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of batch 0 may attend to nothing
    out, weights = _sdpa(q, k, v, mask)
    check_close(
        weights[0, 1],
        torch.zeros(6),
        "the weights of a query with every key masked",
        SDPA,
        hint="softmax over scores that are all -inf gives NaN: set the weights where the mask "
        "is False to 0 after the softmax",
    )
    check_close(out[0, 1], torch.zeros(8), "the output of a query with every key masked", SDPA)
    expected = F.scaled_dot_product_attention(q[1], k[1], v[1])
    check_close(out[1], expected, "the output of the unmasked batch element", SDPA)


def test_sdpa_rejects_non_boolean_mask():
    """A float or integer mask is an error (TypeError), not silently reinterpreted."""
    q = torch.randn(1, 3, 4)
    where = "ch2/attention.py, scaled_dot_product_attention"
    with check_raises(TypeError, "a float mask", where):
        attention.scaled_dot_product_attention(q, q, q, torch.ones(3, 3))
    with check_raises(TypeError, "an integer mask", where):
        attention.scaled_dot_product_attention(q, q, q, torch.ones(3, 3, dtype=torch.long))


def test_causal_mask():
    """causal_mask(n) is a bool (n, n) tensor, True on and below the diagonal."""
    where = "ch2/attention.py, causal_mask"
    mask = attention.causal_mask(5, device="cpu")
    check_shape(mask, (5, 5), "causal_mask(5)", where)
    check_equal(mask.dtype, torch.bool, "causal_mask's dtype", where)
    expected = torch.tensor([[j <= i for j in range(5)] for i in range(5)])
    check_same(
        mask,
        expected,
        f"causal_mask(5) should let query i see keys 0..i (True on and below the diagonal), "
        f"got\n{mask.int()}. Look at {where}.",
    )


def test_padding_mask():
    """padding_mask(ids, pad_id) is a bool (B, 1, 1, S) tensor, False exactly at padding."""
    where = "ch2/attention.py, padding_mask"
    ids = torch.tensor([[5, 6, 7, 0, 0], [3, 0, 4, 9, 0]])
    mask = attention.padding_mask(ids, pad_id=0)
    check_shape(mask, (2, 1, 1, 5), "padding_mask of (2, 5) ids", where)
    check_equal(mask.dtype, torch.bool, "padding_mask's dtype", where)
    check_same(
        mask[:, 0, 0],
        ids != 0,
        f"padding_mask should be True where ids != pad_id, got {mask[:, 0, 0].int().tolist()} "
        f"for ids {ids.tolist()}. Look at {where}.",
    )
    check_same(
        attention.padding_mask(ids, pad_id=5)[:, 0, 0],
        ids != 5,
        f"padding_mask should use its pad_id argument, not a fixed id. Look at {where}.",
    )


def test_mha_rejects_heads_that_do_not_divide_d_model():
    """MultiHeadAttention(d_model=10, n_heads=4) raises ValueError."""
    with check_raises(
        ValueError, "MultiHeadAttention(10, 4)", "ch2/attention.py, MultiHeadAttention.__init__"
    ):
        attention.MultiHeadAttention(10, 4)


def test_mha_projections():
    """q_proj, k_proj, v_proj and out_proj are nn.Linear(d_model, d_model), without bias if bias=False."""
    mha = attention.MultiHeadAttention(16, 4)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer = submodule(mha, name, MHA + ".__init__")
        check(
            isinstance(layer, nn.Linear) and tuple(layer.weight.shape) == (16, 16),
            f"MultiHeadAttention(16, 4).{name} should be nn.Linear(16, 16), got {layer}. "
            f"Look at {MHA}.__init__.",
        )
        check(layer.bias is not None, f"{name} should have a bias by default. Look at {MHA}.")
    no_bias = attention.MultiHeadAttention(16, 4, bias=False)
    check(
        all(getattr(no_bias, n).bias is None for n in ("q_proj", "k_proj", "v_proj", "out_proj")),
        f"MultiHeadAttention(..., bias=False) should build its four nn.Linear without bias. "
        f"Look at {MHA}.__init__.",
    )


@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_torch_self_attention(bias):
    """Self-attention with a causal mask and key padding equals nn.MultiheadAttention with the same weights."""
    ours = fill_parameters(attention.MultiHeadAttention(16, 4, dropout=0.2, bias=bias).eval())
    theirs = nn.MultiheadAttention(16, 4, dropout=0.2, bias=bias, batch_first=True).eval()
    copy_attention(ours, theirs, MHA)
    x = torch.randn(3, 6, 16)
    keep = key_padding([6, 4, 2], 6)  # (B, T), True = real token
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    mask = causal & keep[:, None, None, :]
    out, weights = _mha(ours, x, x, x, mask)
    # PyTorch's boolean masks mean the opposite: True = NOT allowed.
    expected, expected_weights = theirs(
        x, x, x, attn_mask=~causal, key_padding_mask=~keep, average_attn_weights=False
    )
    weight_mistakes, output_mistakes = _mha_mistakes(ours, 4, x, x, x, mask)
    check_close(
        weights,
        expected_weights,
        "the per-head attention weights (B, h, T, T)",
        MHA_FWD,
        mistakes=weight_mistakes,
    )
    _check_deterministic_in_eval(ours, x, x, x, mask, out)
    check_close(out, expected, "the multi-head attention output", MHA_FWD, mistakes=output_mistakes)


def test_mha_matches_torch_cross_attention():
    """Cross-attention (queries and keys of different lengths) equals nn.MultiheadAttention."""
    ours = fill_parameters(attention.MultiHeadAttention(24, 3))
    theirs = nn.MultiheadAttention(24, 3, batch_first=True)
    copy_attention(ours, theirs, MHA)
    query, memory = torch.randn(2, 5, 24), torch.randn(2, 7, 24)
    keep = key_padding([7, 3], 7)
    mask = keep[:, None, None, :]
    out, weights = _mha(ours, query, memory, memory, mask)
    expected, expected_weights = theirs(
        query, memory, memory, key_padding_mask=~keep, average_attn_weights=False
    )
    weight_mistakes, output_mistakes = _mha_mistakes(ours, 3, query, memory, memory, mask)
    check_shape(weights, (2, 3, 5, 7), "the attention weights of 3 heads", MHA_FWD)
    check_close(
        weights, expected_weights, "the cross-attention weights", MHA_FWD, mistakes=weight_mistakes
    )
    check_close(out, expected, "the cross-attention output", MHA_FWD, mistakes=output_mistakes)


def test_mha_fully_masked_query_is_not_nan():
    """A query with every key masked gives zero weights and finite outputs and gradients."""
    mha = fill_parameters(attention.MultiHeadAttention(16, 4))
    x = torch.randn(2, 5, 16, requires_grad=True)
    keep = key_padding([5, 0], 5)  # batch element 1 is all padding
    out, weights = _mha(mha, x, x, x, keep[:, None, None, :])
    check_close(weights[1], torch.zeros(4, 5, 5), "the weights of fully masked queries", MHA_FWD)
    check_close(
        out[1],
        mha.out_proj.bias.expand(5, 16),
        "the output of fully masked queries",
        MHA_FWD,
        hint="zero attention gives out_proj's bias alone",
    )
    out.sum().backward()
    check(
        bool(torch.isfinite(x.grad).all()),
        f"the gradient through a fully masked query contains NaN or inf; replace the NaN of "
        f"softmax(-inf, ..., -inf) with 0 in a way that is not differentiated through. "
        f"Look at {SDPA}.",
    )


def test_mha_padded_keys_change_nothing():
    """Appending padded keys (masked out) leaves the output exactly as it was."""
    mha = fill_parameters(attention.MultiHeadAttention(16, 4))
    query, memory = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    padded = torch.cat([memory, 100 * torch.randn(2, 3, 16)], dim=1)  # 3 junk keys
    out, _ = _mha(mha, query, memory, memory)
    out_padded, _ = _mha(mha, query, padded, padded, key_padding([5, 5], 8)[:, None, None, :])
    check_close(out_padded, out, "the output with 3 masked padding keys appended", MHA_FWD)


def test_mha_causal_outputs_ignore_the_future():
    """With a causal mask, the output at position t does not change when inputs after t change."""
    mha = fill_parameters(attention.MultiHeadAttention(16, 2))
    x = torch.randn(1, 8, 16)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 16)
    mask = attention.causal_mask(8)
    out, _ = _mha(mha, x, x, x, mask)
    out_changed, _ = _mha(mha, changed, changed, changed, mask)
    check_close(
        out_changed[:, :5], out[:, :5], "positions 0..4 after changing the inputs at 5..7", MHA_FWD
    )


class _CountCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_mha_computes_all_heads_at_once():
    """The number of tensor operations does not grow with n_heads (no Python loop over heads)."""
    x = torch.randn(2, 5, 32)
    counts = {}
    for n_heads in (1, 8):
        mha = attention.MultiHeadAttention(32, n_heads)
        with _CountCalls() as counter:
            _mha(mha, x, x, x, attention.causal_mask(5))
        counts[n_heads] = counter.calls
    check(
        counts[8] <= counts[1],
        f"forward ran {counts[1]} torch operations with 1 head but {counts[8]} with 8 heads: the "
        f"heads should be one batch dimension (B, h, T, hs), not a Python loop. Look at {MHA_FWD}.",
    )
