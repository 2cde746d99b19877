"""Stage ch4 'norm_rope': RMSNorm against torch.nn.RMSNorm, RoPE against its closed form (complex
rotations in float64) and its properties, Llama 3's frequency scaling against Meta's loop, and
SwiGLU against torch.nn.functional."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from grader.tree import load
from tests.ch4 import oracles
from tests.helpers import Mistake, check, check_close, check_equal, check_raises, check_shape

layers = load("ch4.layers")

NORM = "ch4/layers.py, RMSNorm.forward"
CACHE = "ch4/layers.py, rope_cache"
SCALE = "ch4/layers.py, llama3_scaled_frequencies"
APPLY = "ch4/layers.py, apply_rope"
SWIGLU = "ch4/layers.py, SwiGLU"
LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rms_mistakes(x: torch.Tensor, weight: torch.Tensor, eps: float) -> list[Mistake]:
    centred = x - x.mean(-1, keepdim=True)
    return [
        Mistake(
            "LayerNorm's normalisation (the mean subtracted first)",
            "RMSNorm does not centre: divide x itself by sqrt(mean(x ** 2) + eps)",
            weight * centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps),
        ),
        Mistake(
            "x divided by sqrt(mean(x) + eps), the mean of x instead of the mean of its squares",
            "square first: x.pow(2).mean(-1, keepdim=True)",
            weight * x / torch.sqrt(x.mean(-1, keepdim=True) + eps),
        ),
        Mistake(
            "x divided by sqrt(sum(x ** 2) + eps), a sum instead of a mean",
            "take the mean over the last dimension, not the sum",
            weight * x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps),
        ),
    ]


# -- RMSNorm --------------------------------------------------------------------------------------


def test_rmsnorm_parameters():
    """RMSNorm(dim, eps) has one parameter, weight, of shape (dim,) starting at ones."""
    norm = layers.RMSNorm(12, eps=1e-5)
    names = [name for name, _ in norm.named_parameters()]
    check_equal(names, ["weight"], "RMSNorm's parameters", "ch4/layers.py, RMSNorm.__init__")
    check_close(
        norm.weight.detach(),
        torch.ones(12),
        "RMSNorm.weight at init",
        "ch4/layers.py, RMSNorm.__init__",
    )
    check_equal(layers.RMSNorm(12).eps, 1e-6, "RMSNorm's default eps", "ch4/layers.py, RMSNorm")


def test_rmsnorm_matches_torch():
    """RMSNorm equals torch.nn.RMSNorm with the same weight and eps, in float32."""
    g = _gen(1)
    x = 2 * torch.randn(3, 5, 16, generator=g) + 0.5
    weight = 1 + 0.5 * torch.randn(16, generator=g)
    oracle = nn.RMSNorm(16, eps=1e-5)
    norm = layers.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        oracle.weight.copy_(weight)
        norm.weight.copy_(weight)
        check_close(
            norm(x),
            oracle(x),
            "RMSNorm's output",
            NORM,
            atol=1e-5,
            mistakes=_rms_mistakes(x, weight, 1e-5),
            hint="x / sqrt(mean(x ** 2 over the last dim) + eps) * weight",
        )


def test_rmsnorm_upcasts_half_precision():
    """In float16 the result equals the float32 computation cast back: x ** 2 must not overflow."""
    g = _gen(2)
    x32 = 300 * torch.randn(4, 16, generator=g)  # x ** 2 passes float16's largest value, 65504
    weight = 1 + 0.5 * torch.randn(16, generator=g)
    norm = layers.RMSNorm(16).half()
    with torch.no_grad():
        norm.weight.copy_(weight.half())
        got = norm(x32.half())
    check_equal(got.dtype, torch.float16, "RMSNorm's output dtype on float16 input", NORM)
    expected = weight.half() * oracles.rms_norm(x32.half(), torch.ones(16), 1e-6)
    x16 = x32.half()
    no_upcast = Mistake(
        "RMSNorm computed in float16 (x ** 2 overflows to inf and the output collapses)",
        "compute in float32 (x.float()) and cast the normalised x back with .to(x.dtype)",
        weight.half() * (x16 * torch.rsqrt(x16.pow(2).mean(-1, keepdim=True) + 1e-6)),
    )
    check_close(got, expected, "RMSNorm's float16 output", NORM, atol=1e-2, mistakes=[no_upcast])


# -- rope_cache -----------------------------------------------------------------------------------


def test_rope_cache_closed_form():
    """rope_cache gives cos/sin of p * theta^(-2i/head_dim), column i and i + head_dim/2 alike."""
    cos, sin = layers.rope_cache(8, 12, theta=100.0)
    check_shape(cos, (12, 8), "cos from rope_cache(8, 12)", CACHE)
    check_shape(sin, (12, 8), "sin from rope_cache(8, 12)", CACHE)
    check_equal(cos.dtype, torch.float32, "rope_cache's dtype", CACHE)
    expected_cos, expected_sin = oracles.rope_tables(8, 12, theta=100.0)
    angles = torch.outer(torch.arange(12.0), 100.0 ** (-torch.arange(4.0) / 8))  # i/d, not 2i/d
    interleaved, _ = oracles.rope_tables(8, 12, theta=100.0, interleaved=True)
    mistakes = [
        Mistake(
            "Meta's interleaved layout (columns 2i and 2i + 1 share an angle)",
            "this chapter uses Hugging Face's rotate-half layout: cat([angles, angles], dim=-1)",
            interleaved,
        ),
        Mistake(
            "frequencies theta^(-i/head_dim) instead of theta^(-2i/head_dim)",
            "use torch.arange(0, head_dim, 2) / head_dim as the exponents",
            torch.cat([angles, angles], -1).cos(),
        ),
    ]
    check_close(cos, expected_cos, "rope_cache's cos", CACHE, atol=1e-5, mistakes=mistakes)
    check_close(sin, expected_sin, "rope_cache's sin", CACHE, atol=1e-5)
    cos, _ = layers.rope_cache(64, 40)
    check_close(cos, oracles.rope_tables(64, 40)[0], "cos with the default theta", CACHE)


def test_rope_cache_rejects_odd_head_dim():
    """An odd head_dim cannot be split in pairs: ValueError."""
    with check_raises(ValueError, "rope_cache(7, 4)", CACHE):
        layers.rope_cache(7, 4)


def test_llama3_scaled_frequencies_closed_form():
    """llama3_scaled_frequencies equals Meta's loop: long wavelengths / factor, short kept, blend."""
    inv_freq = 500000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float32) / 64)
    got = layers.llama3_scaled_frequencies(inv_freq, 8.0, 1.0, 4.0, 64)
    expected = torch.tensor(
        oracles.llama3_frequencies(inv_freq.double().tolist(), 8.0, 1.0, 4.0, 64),
        dtype=torch.float32,
    )
    check_shape(got, (32,), "llama3_scaled_frequencies of 32 frequencies", SCALE)
    wavelength = 2 * math.pi / inv_freq
    mistakes = [
        Mistake(
            "every frequency divided by factor",
            "divide only the frequencies whose wavelength exceeds original_max_len / "
            "low_freq_factor, keep the short ones, blend in between",
            inv_freq / 8.0,
        ),
        Mistake(
            "the frequencies without the blend (divided by factor or kept, nothing in between)",
            "blend the medium ones: (1 - s) * f / factor + s * f",
            torch.where(wavelength > 64.0, inv_freq / 8.0, inv_freq),
        ),
    ]
    check_close(got, expected, "the scaled frequencies", SCALE, rtol=1e-5, mistakes=mistakes)


def test_rope_cache_with_llama3_scaling():
    """rope_cache(..., scaling=...) uses the Llama 3 frequencies (config's rope_scaling keys)."""
    cos, sin = layers.rope_cache(32, 48, theta=500000.0, scaling=LLAMA3)
    expected_cos, expected_sin = oracles.rope_tables(32, 48, 500000.0, LLAMA3)
    unscaled = Mistake(
        "RoPE without the Llama 3 scaling",
        "pass the frequencies through llama3_scaled_frequencies when scaling is given",
        oracles.rope_tables(32, 48, 500000.0)[0],
    )
    check_close(cos, expected_cos, "the scaled cos", CACHE, atol=1e-5, mistakes=[unscaled])
    check_close(sin, expected_sin, "the scaled sin", CACHE, atol=1e-5)


# -- apply_rope -----------------------------------------------------------------------------------


def _apply_mistakes(x, positions, head_dim) -> list[Mistake]:
    angles = oracles.rope_angles(positions, head_dim)
    return [
        Mistake(
            "RoPE on neighbouring pairs (x[2i], x[2i+1]), Meta's interleaved layout",
            "rotate (x[i], x[i + head_dim/2]): rotated = cat([-x2, x1]) with x1, x2 the halves",
            oracles.rotate(x, angles, interleaved=True),
        ),
        Mistake(
            "a rotation the wrong way round (cat([x2, -x1]) instead of cat([-x2, x1]))",
            "rotate_half(x) is cat([-x2, x1], dim=-1)",
            oracles.rotate(x, -angles),
        ),
        Mistake(
            "RoPE at positions 0..T-1 instead of the positions given",
            "index cos and sin with the positions argument",
            oracles.rotate(x, oracles.rope_angles(torch.arange(x.size(-2)), head_dim)),
        ),
    ]


def test_apply_rope_closed_form():
    """apply_rope turns each pair (x[i], x[i + hd/2]) by position * inv_freq[i] (complex oracle)."""
    x = torch.randn(2, 3, 6, 16, generator=_gen(3))
    cos, sin = oracles.rope_tables(16, 32)
    positions = torch.tensor([4, 5, 6, 7, 8, 9])
    got = layers.apply_rope(x, cos, sin, positions)
    expected = oracles.rotate(x, oracles.rope_angles(positions, 16))
    check_close(
        got, expected, "apply_rope's output", APPLY, mistakes=_apply_mistakes(x, positions, 16)
    )
    half = layers.apply_rope(x.to(torch.bfloat16), cos, sin, positions)
    check_equal(half.dtype, torch.bfloat16, "apply_rope's dtype on bfloat16 input", APPLY)


def test_apply_rope_preserves_norms():
    """A rotation keeps the length of every head vector."""
    x = torch.randn(1, 2, 10, 32, generator=_gen(4))
    cos, sin = oracles.rope_tables(32, 64)
    got = layers.apply_rope(x, cos, sin, torch.arange(50, 60))
    check_close(
        got.norm(dim=-1),
        x.norm(dim=-1),
        "the norms of the rotated vectors",
        APPLY,
        hint="each pair (x1[i], x2[i]) becomes (x1 cos - x2 sin, x2 cos + x1 sin)",
    )


def test_rope_scores_depend_only_on_the_distance():
    """q at m and k at n give the score of q at m + s and k at n + s (relative positions)."""
    g = _gen(5)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    cos, sin = oracles.rope_tables(16, 64)
    scores = []
    for shift in (0, 7, 30):
        qm = layers.apply_rope(q, cos, sin, torch.tensor([9 + shift]))
        kn = layers.apply_rope(k, cos, sin, torch.tensor([2 + shift]))
        scores.append((qm * kn).sum())
    check_close(
        torch.stack(scores),
        scores[0].expand(3),
        "q.k with both positions shifted by 0, 7 and 30",
        APPLY,
        atol=1e-4,
        hint="both vectors must turn by the same angles per position for the difference to "
        "cancel: the same cos/sin columns for q and k",
    )


def test_apply_rope_honours_positions():
    """A token rotated alone at position p equals row p of rotating the whole sequence."""
    x = torch.randn(2, 4, 12, 8, generator=_gen(6))
    cos, sin = oracles.rope_tables(8, 16)
    full = layers.apply_rope(x, cos, sin, torch.arange(12))
    for p in (0, 5, 11):
        one = layers.apply_rope(x[:, :, p : p + 1], cos, sin, torch.tensor([p]))
        check_close(
            one,
            full[:, :, p : p + 1],
            f"the token at position {p} rotated alone",
            APPLY,
            mistakes=_apply_mistakes(x[:, :, p : p + 1], torch.tensor([p]), 8),
            hint="index cos and sin with positions, never with arange(T)",
        )


def test_apply_rope_per_row_positions():
    """positions of shape (B, T) rotate each sequence of the batch at its own positions."""
    x = torch.randn(2, 3, 4, 8, generator=_gen(7))
    cos, sin = oracles.rope_tables(8, 16)
    positions = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6]])
    got = layers.apply_rope(x, cos, sin, positions)
    check_shape(got, (2, 3, 4, 8), "apply_rope with (B, T) positions", APPLY)
    expected = oracles.rotate(x, oracles.rope_angles(positions, 8))
    check_close(
        got,
        expected,
        "apply_rope with a row of positions per sequence",
        APPLY,
        hint="cos[positions] is (B, T, head_dim): unsqueeze(1) so it broadcasts over the heads",
    )


# -- SwiGLU ---------------------------------------------------------------------------------------


def test_swiglu_layers():
    """SwiGLU(dim, hidden) has gate_proj and up_proj (dim -> hidden), down_proj back, no bias."""
    mlp = layers.SwiGLU(12, 20)
    for name, shape in (("gate_proj", (20, 12)), ("up_proj", (20, 12)), ("down_proj", (12, 20))):
        layer = getattr(mlp, name, None)
        check(
            isinstance(layer, nn.Linear) and tuple(layer.weight.shape) == shape,
            f"SwiGLU(12, 20).{name} should be an nn.Linear with weight of shape {shape}, got "
            f"{layer}. Look at {SWIGLU}.__init__.",
        )
        check(layer.bias is None, f"SwiGLU.{name} should have no bias. Look at {SWIGLU}.__init__.")


def test_swiglu_matches_functional():
    """SwiGLU equals down(silu(gate(x)) * up(x)) with the same weights."""
    g = _gen(8)
    x = torch.randn(2, 5, 12, generator=g)
    gate, up = torch.randn(20, 12, generator=g) / 3, torch.randn(20, 12, generator=g) / 3
    down = torch.randn(12, 20, generator=g) / 4
    mlp = layers.SwiGLU(12, 20)
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(gate)
        mlp.up_proj.weight.copy_(up)
        mlp.down_proj.weight.copy_(down)
        got = mlp(x)
    mistakes = [
        Mistake(
            "silu applied to up_proj's output instead of gate_proj's",
            "down_proj(silu(gate_proj(x)) * up_proj(x))",
            oracles.swiglu(x, up, gate, down),
        ),
        Mistake(
            "GELU instead of SiLU",
            "use F.silu (x * sigmoid(x))",
            F.linear(F.gelu(F.linear(x, gate)) * F.linear(x, up), down),
        ),
        Mistake(
            "an MLP without the gate (down_proj(silu(up_proj(x))))",
            "multiply silu(gate_proj(x)) by up_proj(x)",
            F.linear(F.silu(F.linear(x, up)), down),
        ),
    ]
    check_close(
        got, oracles.swiglu(x, gate, up, down), "SwiGLU's output", SWIGLU, mistakes=mistakes
    )
