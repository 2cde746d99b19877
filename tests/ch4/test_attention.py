"""Stage ch4 'attention': grouped-query attention against F.scaled_dot_product_attention on key-value
heads repeated with repeat_interleave, the masks and positions against their closed forms, the KV
cache's contract, and the cache property: a prefill then one token at a time gives the full
pass's outputs to 1e-5."""

from __future__ import annotations

import torch
import torch.nn as nn

from grader.tree import load
from tests.ch4 import oracles
from tests.helpers import Mistake, check, check_close, check_equal, check_raises, check_shape

attention = load("ch4.attention")

GQA = "ch4/attention.py, GroupedQueryAttention"
FWD = "ch4/attention.py, GroupedQueryAttention.forward"
MASK = "ch4/attention.py, attention_mask"
POS = "ch4/attention.py, rope_positions"
UPDATE = "ch4/attention.py, KVCache.update"
CACHE = "ch4/attention.py, KVCache"

DIM, HEADS, KV_HEADS = 32, 8, 2  # head_dim 4: four query heads per key-value head
COS, SIN = oracles.rope_tables(DIM // HEADS, 64)

TOP_LEFT = (
    "attention whose causal mask is aligned to the top-left (F.scaled_dot_product_attention's "
    "is_causal=True, or a causal mask cut as mask[:T, :S], with fewer queries than keys), so "
    "a new token sees only the first keys"
)
TOP_LEFT_FIX = (
    "the T new queries are the last T of the S positions: query i may attend to keys "
    "0 .. S - T + i (build that mask, see attention_mask)"
)
POSITION_ZERO = "keys and queries rotated at positions 0..T-1 in every call, not at start_pos"
POSITION_FIX = "rotate the new tokens at start_pos .. start_pos + T - 1 (rope_positions)"
TILED = "key-value heads tiled with repeat (0 1 0 1 ...) instead of repeat_interleave (0 0 1 1 ...)"
TILED_FIX = "use k.repeat_interleave(n_heads // n_kv_heads, dim=1), and the same for v"


def weights(
    dim: int = DIM, heads: int = HEADS, kv_heads: int = KV_HEADS, bias=False, seed=0
) -> dict[str, torch.Tensor]:
    """Oracle weights of one attention layer, drawn from their own generator."""
    g = torch.Generator().manual_seed(seed)
    hd = dim // heads
    shapes = {"q_proj": heads * hd, "k_proj": kv_heads * hd, "v_proj": kv_heads * hd}
    sd = {f"{n}.weight": torch.randn(out, dim, generator=g) / dim**0.5 for n, out in shapes.items()}
    if bias:
        sd |= {f"{n}.bias": 0.5 * torch.randn(out, generator=g) for n, out in shapes.items()}
    sd["o_proj.weight"] = torch.randn(dim, heads * hd, generator=g) / dim**0.5
    return sd


def build(sd: dict[str, torch.Tensor], heads: int = HEADS, kv_heads: int = KV_HEADS):
    """The tree's GroupedQueryAttention holding the oracle weights ``sd``."""
    dim = sd["o_proj.weight"].shape[0]
    module = attention.GroupedQueryAttention(dim, heads, kv_heads, bias="q_proj.bias" in sd)
    own = module.state_dict()
    check_equal(
        sorted(own),
        sorted(sd),
        f"the parameters of GroupedQueryAttention(bias={'q_proj.bias' in sd})",
        f"{GQA}.__init__ (q_proj, k_proj, v_proj with the bias flag, o_proj never)",
    )
    with torch.no_grad():
        for name, value in sd.items():
            check_shape(own[name], value.shape, name, f"{GQA}.__init__")
            own[name].copy_(value)
    return module.eval()


def reference(x, sd, heads=HEADS, kv_heads=KV_HEADS, *, mask=None, positions=None, tile=False):
    """The full pass (B, S, C) of the oracle on x at positions 0..S-1 (or ``positions``)."""
    S = x.size(1)
    positions = torch.arange(S) if positions is None else positions
    angles = oracles.rope_angles(positions, x.size(-1) // heads)
    mask = oracles.causal(S) if mask is None else mask
    return oracles.attention(x, sd, "", heads, kv_heads, angles, mask, tile_kv=tile)


def run_with_cache(module, x, chunks: list[int], n_kv_heads=KV_HEADS, layer=0):
    """Feed ``x`` (B, S, C) through ``module`` in chunks of the given sizes with one KVCache."""
    B, S, C = x.shape
    cache = attention.KVCache(2, B, n_kv_heads, S + 3, C // HEADS)
    outputs, start = [], 0
    with torch.no_grad():
        for size in chunks:
            out = module(x[:, start : start + size], COS, SIN, start, cache, layer)
            check_shape(out, (B, size, C), f"the output for {size} new token(s)", FWD)
            outputs.append(out)
            start += size
    return torch.cat(outputs, dim=1), cache


def schedule_mistakes(x, sd, chunks: list[int]) -> list[Mistake]:
    """What the cached run gives with the two classic decode bugs, on this chunk schedule."""
    S = x.size(1)
    top_left = torch.zeros(S, S, dtype=torch.bool)
    positions = torch.zeros(S, dtype=torch.long)
    start = 0
    for size in chunks:
        for i in range(size):  # query start + i sees keys 0..i only (top-left alignment)
            top_left[start + i, : i + 1] = True
            positions[start + i] = i
        start += size
    return [
        Mistake(TOP_LEFT, TOP_LEFT_FIX, reference(x, sd, mask=top_left)),
        Mistake(POSITION_ZERO, POSITION_FIX, reference(x, sd, positions=positions)),
    ]


# -- construction ---------------------------------------------------------------------------------


def test_projections_have_grouped_query_shapes():
    """q_proj maps to n_heads heads, k_proj and v_proj to n_kv_heads heads; bias on q, k, v only."""
    module = attention.GroupedQueryAttention(DIM, HEADS, KV_HEADS)
    hd = DIM // HEADS
    expected = {"q_proj": (HEADS * hd, DIM), "k_proj": (KV_HEADS * hd, DIM)}
    expected |= {"v_proj": (KV_HEADS * hd, DIM), "o_proj": (DIM, HEADS * hd)}
    for name, shape in expected.items():
        layer = getattr(module, name, None)
        check(
            isinstance(layer, nn.Linear) and tuple(layer.weight.shape) == shape,
            f"GroupedQueryAttention({DIM}, {HEADS}, {KV_HEADS}).{name} should be an nn.Linear "
            f"with weight {shape}, got {layer}. Look at {GQA}.__init__.",
        )
        check(layer.bias is None, f"{name} should have no bias by default. Look at {GQA}.")
    biased = attention.GroupedQueryAttention(DIM, HEADS, KV_HEADS, bias=True)
    check(
        all(getattr(biased, n).bias is not None for n in ("q_proj", "k_proj", "v_proj"))
        and biased.o_proj.bias is None,
        f"with bias=True q_proj, k_proj and v_proj have a bias and o_proj none (Qwen2's layout). "
        f"Look at {GQA}.__init__.",
    )


def test_rejects_kv_heads_that_do_not_divide_heads():
    """n_kv_heads must divide n_heads: GroupedQueryAttention(32, 8, 3) raises ValueError."""
    with check_raises(ValueError, "GroupedQueryAttention(32, 8, 3)", f"{GQA}.__init__"):
        attention.GroupedQueryAttention(32, 8, 3)


# -- masks and positions --------------------------------------------------------------------------


def test_attention_mask_closed_form():
    """Query i of T new ones sees keys 0..S-T+i; for T = S that is the causal mask."""
    for T, S in ((5, 5), (3, 7), (1, 6)):
        mask = attention.attention_mask(T, S)
        check_shape(mask, (1, 1, T, S), f"attention_mask({T}, {S})", MASK)
        check_equal(mask.dtype, torch.bool, "attention_mask's dtype", MASK)
        expected = torch.tensor([[j <= S - T + i for j in range(S)] for i in range(T)])
        top_left = Mistake(TOP_LEFT, TOP_LEFT_FIX, oracles.causal(S)[:T])
        check_close(
            mask[0, 0],
            expected,
            f"attention_mask({T}, {S})",
            MASK,
            mistakes=[top_left] if T < S else [],
        )


def test_attention_mask_with_padding():
    """With pad_mask, padding keys are hidden (B, 1, T, S), but a query always sees itself."""
    pad_mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    mask = attention.attention_mask(2, 5, pad_mask)
    check_shape(mask, (2, 1, 2, 5), "attention_mask(2, 5, pad_mask)", MASK)
    expected = torch.tensor(
        [
            [[False, False, True, True, False], [False, False, True, True, True]],
            [[True, True, True, True, False], [True, True, True, True, True]],
        ]
    )
    check_close(mask[:, 0], expected, "the mask with left padding", MASK)
    pad_query = attention.attention_mask(5, 5, pad_mask)[0, 0]
    check(
        bool(pad_query.any(dim=-1).all()),
        f"every query must see at least itself, also a padding query (or the softmax of a row "
        f"of -inf is NaN), got rows {pad_query.int().tolist()}. Look at {MASK}.",
    )


def test_rope_positions():
    """rope_positions counts from start_pos, or per row among the real tokens with pad_mask."""
    got = attention.rope_positions(4, 3)
    check_close(got, torch.tensor([4, 5, 6]), "rope_positions(4, 3)", POS)
    pad_mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    got = attention.rope_positions(3, 2, pad_mask)
    check_close(
        got,
        torch.tensor([[1, 2], [3, 4]]),
        "rope_positions(3, 2, pad_mask) with two padding tokens in row 0",
        POS,
        hint="a row's first real token is position 0: cumsum of pad_mask minus 1",
    )


# -- the attention itself -------------------------------------------------------------------------


def test_matches_sdpa_with_repeated_heads():
    """GQA (8 query heads, 2 kv heads) with biases equals SDPA on repeat_interleave'd kv heads."""
    sd = weights(bias=True)
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(1))
    module = build(sd)
    with torch.no_grad():
        got = module(x, COS, SIN)
    mistakes = [
        Mistake(TILED, TILED_FIX, reference(x, sd, tile=True)),
        Mistake(
            "attention without RoPE (queries and keys not rotated)",
            "apply_rope to q and k after the projections, before the scores",
            oracles.attention(
                x,
                sd,
                "",
                HEADS,
                KV_HEADS,
                torch.zeros(9, 2, dtype=torch.float64),
                oracles.causal(9),
            ),
        ),
        Mistake(
            "attention without the causal mask",
            "mask the keys after each query (attention_mask(T, S))",
            reference(x, sd, mask=torch.ones(9, 9, dtype=torch.bool)),
        ),
    ]
    check_close(
        got,
        reference(x, sd),
        "grouped-query attention's output",
        FWD,
        mistakes=mistakes,
        hint="project, split heads as (B, T, heads, head_dim).transpose(1, 2), rotate q and k, "
        "repeat_interleave the kv heads, causal softmax(q k^T / sqrt(head_dim)) v, o_proj",
    )


def test_multi_head_and_multi_query_are_special_cases():
    """n_kv_heads == n_heads is multi-head attention, n_kv_heads == 1 multi-query attention."""
    x = torch.randn(1, 6, DIM, generator=torch.Generator().manual_seed(2))
    for kv_heads in (HEADS, 1):
        sd = weights(kv_heads=kv_heads, seed=kv_heads)
        module = build(sd, kv_heads=kv_heads)
        with torch.no_grad():
            got = module(x, COS, SIN)
        check_close(
            got,
            reference(x, sd, kv_heads=kv_heads),
            f"the output with n_kv_heads={kv_heads} (n_heads={HEADS})",
            FWD,
        )


# -- the KV cache ---------------------------------------------------------------------------------


def test_kv_cache_update():
    """update writes at start_pos and returns every position so far; the cache starts at zeros."""
    cache = attention.KVCache(n_layers=2, batch_size=2, n_kv_heads=3, max_len=10, head_dim=4)
    for store in ("k", "v"):
        tensors = getattr(cache, store, None)
        check(
            isinstance(tensors, list | tuple) and len(tensors) == 2,
            f"KVCache.{store} should hold one tensor per layer (2), got {type(tensors).__name__}. "
            f"Look at {CACHE}.__init__.",
        )
        check_close(tensors[1], torch.zeros(2, 3, 10, 4), f"KVCache.{store}[1] at first", CACHE)
    g = torch.Generator().manual_seed(3)
    k1, v1 = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    k2, v2 = torch.randn(2, 3, 1, 4, generator=g), torch.randn(2, 3, 1, 4, generator=g)
    keys, values = cache.update(1, k1, v1, 0)
    check_close(keys, k1, "the keys returned after writing 4 positions", UPDATE)
    keys, values = cache.update(1, k2, v2, 4)
    check_shape(keys, (2, 3, 5, 4), "the keys returned after writing 1 more at start_pos=4", UPDATE)
    check_close(keys, torch.cat([k1, k2], 2), "the keys of positions 0..4", UPDATE)
    check_close(values, torch.cat([v1, v2], 2), "the values of positions 0..4", UPDATE)
    check_close(
        cache.k[0], torch.zeros(2, 3, 10, 4), "layer 0's keys after writing layer 1's", UPDATE
    )
    check_close(cache.v[1][:, :, :5], torch.cat([v1, v2], 2), "KVCache.v[1]'s first 5", UPDATE)


def test_kv_cache_overflow_is_an_error():
    """Writing past max_len raises a ValueError instead of silently dropping keys."""
    cache = attention.KVCache(1, 1, 2, max_len=6, head_dim=4)
    cache.update(0, torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    with check_raises(ValueError, "writing 2 positions at start_pos=5 into max_len=6", UPDATE):
        cache.update(0, torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4), 5)


def test_cache_stores_kv_heads_before_repeating():
    """After a prefill the cache holds the n_kv_heads rotated keys, not the repeated ones."""
    sd = weights()
    x = torch.randn(1, 5, DIM, generator=torch.Generator().manual_seed(4))
    module = build(sd)
    _, cache = run_with_cache(module, x, [5], layer=1)
    hd = DIM // HEADS
    k = torch.nn.functional.linear(x, sd["k_proj.weight"]).view(1, 5, KV_HEADS, hd).transpose(1, 2)
    expected = oracles.rotate(k, oracles.rope_angles(torch.arange(5), hd))
    check_close(
        cache.k[1][:, :, :5],
        expected,
        "the cached keys of layer 1 (B, n_kv_heads, T, head_dim)",
        FWD,
        hint="cache the keys after apply_rope and before repeat_interleave, with "
        "cache.update(layer, k, v, start_pos)",
    )


def test_decode_with_cache_equals_full_pass():
    """Prefill 5 tokens, then one token at a time: the outputs equal the full pass to 1e-5."""
    sd = weights()
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(5))
    chunks = [5, 1, 1, 1, 1]
    module = build(sd)
    got, _ = run_with_cache(module, x, chunks)
    check_close(
        got,
        reference(x, sd),
        "the outputs of a prefill and 4 one-token steps with the cache",
        FWD,
        atol=1e-5,
        mistakes=schedule_mistakes(x, sd, chunks),
        hint="the new keys go into the cache at start_pos, the queries attend to all cached "
        "keys, and the new tokens are rotated at their real positions",
    )


def test_chunked_prefill_equals_full_pass():
    """Chunks of 4, 3 and 2 tokens through the cache give the full pass (queries shorter than keys)."""
    sd = weights(bias=True, seed=6)
    x = torch.randn(1, 9, DIM, generator=torch.Generator().manual_seed(6))
    chunks = [4, 3, 2]
    module = build(sd)
    got, _ = run_with_cache(module, x, chunks)
    expected = reference(x, sd)
    check_close(
        got,
        expected,
        "the outputs of chunks of 4, 3 and 2 tokens with the cache",
        FWD,
        atol=1e-5,
        mistakes=schedule_mistakes(x, sd, chunks),
    )


def test_left_padding_changes_nothing():
    """A sequence left-padded with pad_mask gives, at its real tokens, its outputs alone."""
    sd = weights(seed=7)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 6, DIM, generator=g)
    padded = torch.cat([100 * torch.randn(1, 3, DIM, generator=g), x], dim=1)  # 3 junk tokens
    pad_mask = torch.tensor([[False] * 3 + [True] * 6])
    module = build(sd)
    with torch.no_grad():
        got = module(padded, COS, SIN, pad_mask=pad_mask)
        alone = module(x, COS, SIN)
    check_close(
        got[:, 3:],
        alone,
        "the real tokens' outputs with 3 padding tokens on the left",
        FWD,
        hint="with pad_mask, take the positions from rope_positions and the mask from "
        "attention_mask, both given pad_mask",
    )
    check(
        bool(torch.isfinite(got).all()),
        f"the outputs at padding positions should be finite (a padding query sees itself), "
        f"not NaN. Look at {MASK}.",
    )
    cache = attention.KVCache(1, 1, KV_HEADS, 12, DIM // HEADS)
    with torch.no_grad():
        first = module(padded[:, :7], COS, SIN, 0, cache, 0, pad_mask[:, :7])
        rest = module(padded[:, 7:], COS, SIN, 7, cache, 0, pad_mask)
    check_close(
        torch.cat([first, rest], 1)[:, 3:],
        alone,
        "the padded sequence fed through the cache in chunks of 7 and 2",
        FWD,
        atol=1e-5,
    )
