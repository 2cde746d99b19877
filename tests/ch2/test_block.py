"""Stage 'block': LayerNorm, sinusoidal positions, the feed-forward layer and the encoder and
decoder blocks, checked against nn.LayerNorm, the closed form of the sinusoid, and
nn.TransformerEncoderLayer / nn.TransformerDecoderLayer with copied weights (post-LN and pre-LN)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from grader.tree import load
from tests.ch2.oracles import (
    copy_attention,
    copy_weight_and_bias,
    key_padding,
    randomize_layernorm,
    submodule,
)
from tests.helpers import (
    Mistake,
    check,
    check_close,
    check_equal,
    check_raises,
    check_shape,
    fill_parameters,
)

block = load("ch2.block")
attention = load("ch2.attention")

LN = "ch2/block.py, LayerNorm"
PE = "ch2/block.py, sinusoidal_positional_encoding"
FF = "ch2/block.py, FeedForward"
ENC = "ch2/block.py, EncoderBlock.forward"
DEC = "ch2/block.py, DecoderBlock.forward"
STYLE = {False: "post-LN: norm(x + sublayer(x))", True: "pre-LN: x + sublayer(norm(x))"}


def layernorm_mistakes(x: torch.Tensor, norm: nn.Module, eps: float) -> list[Mistake]:
    """LayerNorm with the unbiased variance, and with eps outside the square root."""
    mean = x.mean(-1, keepdim=True)
    unbiased = x.var(-1, keepdim=True, correction=1)
    biased = x.var(-1, keepdim=True, correction=0)
    w, b = norm.weight.detach(), norm.bias.detach()
    return [
        Mistake(
            "LayerNorm with the unbiased variance (divided by d_model - 1)",
            "use x.var(dim=-1, unbiased=False), as nn.LayerNorm does",
            (x - mean) / torch.sqrt(unbiased + eps) * w + b,
        ),
        Mistake(
            "LayerNorm with eps added to the standard deviation, outside the square root",
            "divide by torch.sqrt(var + eps)",
            (x - mean) / (torch.sqrt(biased) + eps) * w + b,
        ),
    ]


def test_layernorm_matches_torch():
    """LayerNorm equals nn.LayerNorm (biased variance over the last dimension, then weight and bias)."""
    ours = block.LayerNorm(16)
    check_close(ours.weight, torch.ones(16), "LayerNorm.weight at initialisation", LN)
    check_close(ours.bias, torch.zeros(16), "LayerNorm.bias at initialisation", LN)
    fill_parameters(ours)  # non-trivial weight and bias, the same for every correct tree
    theirs = nn.LayerNorm(16)
    copy_weight_and_bias(ours, theirs)
    x = 3 * torch.randn(2, 5, 16) + 1
    check_close(
        ours(x),
        theirs(x),
        "LayerNorm's output",
        LN + ".forward",
        mistakes=layernorm_mistakes(x, theirs, 1e-5),
    )


def test_layernorm_uses_eps():
    """LayerNorm(d, eps) adds eps to the variance inside the square root, as nn.LayerNorm does."""
    x = 1e-2 * torch.randn(4, 8)  # variance ~1e-4, so eps=1e-2 matters a lot
    theirs = nn.LayerNorm(8, eps=1e-2)
    check_close(
        block.LayerNorm(8, eps=1e-2)(x),
        theirs(x),
        "LayerNorm(8, eps=1e-2)",
        LN,
        mistakes=layernorm_mistakes(x, theirs, 1e-2),
    )


def test_positional_encoding_closed_form():
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)) and PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    max_len, d = 50, 16
    pe = block.sinusoidal_positional_encoding(max_len, d)
    check_shape(pe, (max_len, d), f"sinusoidal_positional_encoding({max_len}, {d})", PE)
    check_equal(pe.dtype, torch.float32, "the positional encoding's dtype", PE)
    expected = torch.tensor(
        [
            [
                math.sin(pos / 10000 ** (j / d))
                if j % 2 == 0
                else math.cos(pos / 10000 ** ((j - 1) / d))
                for j in range(d)
            ]
            for pos in range(max_len)
        ],
        dtype=torch.float64,
    )
    check_close(pe, expected, "the positional encoding", PE, atol=1e-5, rtol=1e-5)


def test_positional_encoding_rejects_odd_d_model():
    """An odd d_model raises ValueError (sines and cosines come in pairs)."""
    with check_raises(
        ValueError,
        "sinusoidal_positional_encoding(10, 7)",
        "ch2/block.py, sinusoidal_positional_encoding",
    ):
        block.sinusoidal_positional_encoding(10, 7)


def test_feedforward():
    """FeedForward is linear2(relu(linear1(x))) with linear1: d_model -> d_ff, linear2: d_ff -> d_model."""
    ff = fill_parameters(block.FeedForward(8, 32))
    linear1, linear2 = submodule(ff, "linear1", FF), submodule(ff, "linear2", FF)
    check(
        isinstance(linear1, nn.Linear) and tuple(linear1.weight.shape) == (32, 8),
        f"FeedForward(8, 32).linear1 should be nn.Linear(8, 32), got {linear1}. Look at {FF}.",
    )
    check(
        isinstance(linear2, nn.Linear) and tuple(linear2.weight.shape) == (8, 32),
        f"FeedForward(8, 32).linear2 should be nn.Linear(32, 8), got {linear2}. Look at {FF}.",
    )
    x = torch.randn(2, 5, 8)
    expected = linear2(torch.relu(linear1(x)))
    check_close(ff(x), expected, "FeedForward's output", FF + ".forward")


def _torch_layer(
    ours: nn.Module, d_model: int, d_ff: int, norm_first: bool, *, decoder: bool
) -> nn.Module:
    """nn.TransformerEncoderLayer (or DecoderLayer) holding the tree's weights (4 heads, ReLU),
    in eval mode (dropout off). Randomise the LayerNorms of ``ours`` first (:func:`_randomize`),
    so that a swapped or skipped norm shows.
    """
    where = DEC if decoder else ENC
    layer = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    theirs = layer(
        d_model,
        nhead=4,
        dim_feedforward=d_ff,
        dropout=0.1,
        activation="relu",
        batch_first=True,
        norm_first=norm_first,
    )
    attentions = {"self_attn": "self_attn"} | ({"cross_attn": "multihead_attn"} if decoder else {})
    for name, torch_name in attentions.items():
        copy_attention(submodule(ours, name, where), getattr(theirs, torch_name), where)
    ff = submodule(ours, "ff", where)
    copy_weight_and_bias(submodule(ff, "linear1", FF), theirs.linear1)
    copy_weight_and_bias(submodule(ff, "linear2", FF), theirs.linear2)
    for name in _norms(decoder):
        copy_weight_and_bias(submodule(ours, name, where), getattr(theirs, name))
    return theirs.eval()


def _norms(decoder: bool) -> tuple[str, ...]:
    return ("norm1", "norm2", "norm3") if decoder else ("norm1", "norm2")


def _randomize(ours: nn.Module, decoder: bool) -> None:
    for name in _norms(decoder):
        randomize_layernorm(submodule(ours, name, DEC if decoder else ENC))


def _swapped(norm_first: bool, output: torch.Tensor) -> Mistake:
    """The block computed in the other LayerNorm style: ``output`` is torch's layer of that style."""
    want, got = STYLE[norm_first].split(": "), STYLE[not norm_first].split(": ")
    return Mistake(
        f"the {got[0]} block, {got[1]}",
        f"norm_first={norm_first} asks for {want[0]}, {want[1]}",
        output,
    )


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_encoder_block_matches_torch(norm_first):
    """EncoderBlock equals nn.TransformerEncoderLayer with the same weights, with source padding."""
    ours = fill_parameters(block.EncoderBlock(16, 4, 32, dropout=0.1, norm_first=norm_first))
    _randomize(ours, decoder=False)
    theirs = _torch_layer(ours, 16, 32, norm_first, decoder=False)
    other = _torch_layer(ours, 16, 32, not norm_first, decoder=False)
    ours.eval()  # dropout=0.1 in both: eval mode must switch it off
    x = torch.randn(3, 7, 16)
    keep = key_padding([7, 5, 2], 7)
    out = ours(x, keep[:, None, None, :])
    expected = theirs(x, src_key_padding_mask=~keep)  # PyTorch: True = padding
    swapped = other(x, src_key_padding_mask=~keep)
    check_close(
        out,
        expected,
        f"EncoderBlock(norm_first={norm_first})'s output",
        ENC,
        atol=1e-5,
        mistakes=[_swapped(norm_first, swapped)],
        hint=f"it should be {STYLE[norm_first]}",
    )


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_decoder_block_matches_torch(norm_first):
    """DecoderBlock equals nn.TransformerDecoderLayer with the same weights, causal and padding masks."""
    ours = fill_parameters(block.DecoderBlock(16, 4, 32, dropout=0.1, norm_first=norm_first))
    _randomize(ours, decoder=True)
    theirs = _torch_layer(ours, 16, 32, norm_first, decoder=True)
    other = _torch_layer(ours, 16, 32, not norm_first, decoder=True)
    ours.eval()  # dropout=0.1 in both: eval mode must switch it off
    x, memory = torch.randn(3, 6, 16), torch.randn(3, 7, 16)
    tgt_keep, src_keep = key_padding([6, 4, 3], 6), key_padding([7, 2, 5], 7)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out = ours(
        x,
        memory,
        tgt_mask=causal & tgt_keep[:, None, None, :],
        memory_mask=src_keep[:, None, None, :],
    )
    torch_masks = dict(  # PyTorch's boolean masks: True = NOT allowed
        tgt_mask=~causal, tgt_key_padding_mask=~tgt_keep, memory_key_padding_mask=~src_keep
    )
    expected = theirs(x, memory, **torch_masks)
    swapped = other(x, memory, **torch_masks)
    check_close(
        out,
        expected,
        f"DecoderBlock(norm_first={norm_first})'s output",
        DEC,
        atol=1e-5,
        mistakes=[_swapped(norm_first, swapped)],
        hint=f"it should be {STYLE[norm_first]}: self-attention, then cross-attention to memory, "
        "then feed-forward",
    )


def test_decoder_block_is_causal():
    """With a causal tgt_mask, the decoder block's output at t ignores target inputs after t."""
    dec = fill_parameters(block.DecoderBlock(16, 4, 32).eval())
    x, memory = torch.randn(2, 6, 16), torch.randn(2, 4, 16)
    changed = x.clone()
    changed[:, 3:] = torch.randn(2, 3, 16)
    mask = attention.causal_mask(6)
    out, out_changed = dec(x, memory, tgt_mask=mask), dec(changed, memory, tgt_mask=mask)
    check_close(
        out_changed[:, :3], out[:, :3], "positions 0..2 after changing targets at 3..5", DEC
    )
