"""Stage 'transformer': the encoder-decoder, its masks, greedy decoding and beam search.

Properties instead of an oracle for the whole model: the embedding is scaled and positioned as
in the paper, padding changes nothing, decoding one token at a time gives the teacher-forced
logits, beam size 1 is greedy, and beam search beats greedy where greedy is myopic."""

from __future__ import annotations

import math

import torch

from grader.tree import load
from tests.ch2.oracles import submodule
from tests.helpers import (
    Mistake,
    check,
    check_close,
    check_equal,
    check_matches,
    check_raises,
    check_shape,
    fail,
    fill_parameters,
)

transformer = load("ch2.transformer")
attention = load("ch2.attention")
block = load("ch2.block")

MODEL = "ch2/transformer.py, Transformer"
ENCODE = "ch2/transformer.py, Transformer.encode"
DECODE = "ch2/transformer.py, Transformer.decode"
GREEDY = "ch2/transformer.py, Transformer.greedy_decode"
BEAM = "ch2/transformer.py, Transformer.beam_search"

PAD, BOS, EOS = 0, 1, 2
SRC_V, TGT_V = 11, 13


def small_model(n_layers: int = 2, max_len: int = 12) -> torch.nn.Module:
    """A small Transformer in eval mode (dropout would be off anyway), its weights filled by
    name (``fill_parameters``) so that every correct tree expects the same values."""
    model = transformer.Transformer(
        SRC_V,
        TGT_V,
        d_model=32,
        n_heads=4,
        n_layers=n_layers,
        d_ff=64,
        max_len=max_len,
        dropout=0.1,
        pad_id=PAD,
    ).eval()
    return fill_parameters(model)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Padded source (3, 7) and target (3, 6) ids; targets start with BOS."""
    src = torch.randint(3, SRC_V, (3, 7))
    src[1, 4:] = PAD
    src[2, 2:] = PAD
    tgt = torch.randint(3, TGT_V, (3, 6))
    tgt[:, 0] = BOS
    tgt[2, 4:] = PAD
    return src, tgt


def test_rejects_heads_that_do_not_divide_d_model():
    """Transformer(d_model=30, n_heads=4) raises ValueError."""
    with check_raises(
        ValueError,
        "Transformer(d_model=30, n_heads=4)",
        "ch2/transformer.py, Transformer.__init__ (and the MultiHeadAttention it builds)",
    ):
        transformer.Transformer(SRC_V, TGT_V, 30, 4, 1, 64, 12)


def test_forward_shape():
    """forward(src, tgt) gives float logits of shape (B, T, tgt_vocab_size)."""
    src, tgt = batch()
    logits = small_model()(src, tgt)
    check_shape(logits, (3, 6, TGT_V), "forward(src (3, 7), tgt (3, 6))", MODEL + ".forward")
    check_matches(
        logits.dtype, torch.float32, f"logits should be float32. Look at {MODEL}.forward."
    )


def test_embedding_is_scaled_and_positioned():
    """With no layers, encode(src) is src_embed(src) * sqrt(d_model) + PE[:S], as in the paper."""
    model = small_model(n_layers=0)
    src, _ = batch()
    embed = submodule(model, "src_embed", MODEL + ".__init__")
    pe = block.sinusoidal_positional_encoding(12, 32)
    expected = embed(src) * math.sqrt(32) + pe[:7]
    check_close(
        model.encode(src),
        expected,
        "encode(src) of a model with n_layers=0",
        ENCODE,
        hint="it should be src_embed(src) * sqrt(d_model) + the sinusoidal positions",
    )


def test_embeddings_start_at_the_scale_of_the_positions():
    """src_embed and tgt_embed start with std 1/sqrt(d_model), so sqrt(d_model) scaling gives std 1."""
    model = transformer.Transformer(200, 300, 64, 4, 1, 64, 8)
    for name in ("src_embed", "tgt_embed"):
        weight = submodule(model, name, MODEL + ".__init__").weight
        std, target = float(weight.detach().std()), 64**-0.5
        check(
            0.8 * target < std < 1.25 * target,
            f"{name}.weight should start with std 1/sqrt(d_model) = {target:.3f} for d_model=64 "
            f"(then embedding * sqrt(d_model) has std 1, like the positional encoding), got std "
            f"{std:.3f}; initialise it with nn.init.normal_(..., std=d_model ** -0.5). "
            f"Look at {MODEL}.__init__.",
        )


def test_encode_runs_the_encoder_stack_with_padding_mask():
    """encode(src) applies encoder_layers in order, each with padding_mask(src, pad_id)."""
    model = small_model()
    src, _ = batch()
    layers = submodule(model, "encoder_layers", MODEL + ".__init__")
    embed = submodule(model, "src_embed", MODEL + ".__init__")
    x = embed(src) * math.sqrt(32) + block.sinusoidal_positional_encoding(12, 32)[:7]
    for layer in layers:
        x = layer(x, attention.padding_mask(src, PAD))
    check_close(model.encode(src), x, "encode(src)", ENCODE)


@torch.no_grad()
def decode_by_hand(model, tgt, memory, memory_mask, tgt_mask):
    """The decoder stack run here with the tree's own layers (``tgt`` has no padding)."""
    layers = submodule(model, "decoder_layers", MODEL + ".__init__")
    x = model.embed(tgt, submodule(model, "tgt_embed", MODEL + ".__init__"))
    for layer in layers:
        x = layer(x, memory, tgt_mask, memory_mask)
    return submodule(model, "lm_head", MODEL + ".__init__")(x)


def test_decoding_one_token_at_a_time_equals_teacher_forcing():
    """decode on the prefix tgt[:, :t+1] gives the same last logits as forward(src, tgt)[:, t]."""
    model = small_model()
    src, tgt = batch()
    tgt[2, 4:] = torch.tensor([5, 6])  # no padding: every position is a real prediction
    full = model(src, tgt)
    memory = model.encode(src)
    memory_mask = attention.padding_mask(src, PAD)
    unmasked = decode_by_hand(model, tgt, memory, memory_mask, tgt_mask=None)
    no_causal_mask = Mistake(
        "a decoder whose self-attention has no causal mask (position t sees the later tokens)",
        "mask the self-attention with causal_mask(T) & padding_mask(tgt, pad_id)",
        unmasked,
    )
    check_close(
        full,
        decode_by_hand(model, tgt, memory, memory_mask, attention.causal_mask(tgt.size(1))),
        "the teacher-forced logits forward(src, tgt)",
        DECODE,
        atol=1e-5,
        mistakes=[no_causal_mask],
    )
    for t in range(tgt.size(1)):
        step = model.decode(tgt[:, : t + 1], memory, memory_mask)[:, -1]
        check_close(
            step,
            full[:, t],
            f"the logits at position {t} decoded from the first {t + 1} tokens",
            DECODE,
            atol=1e-5,
            hint="they should equal the teacher-forced forward pass at position t",
        )


def test_source_padding_changes_nothing():
    """Extra padding on the source, or batching with longer sentences, leaves the logits unchanged."""
    model = small_model()
    src, tgt = batch()
    logits = model(src, tgt)
    more_padding = torch.cat([src, torch.full((3, 3), PAD)], dim=1)
    check_close(
        model(more_padding, tgt),
        logits,
        "the logits after 3 more PAD columns on the source",
        MODEL,
        atol=1e-5,
        hint="padding must be masked in the encoder and in cross-attention",
    )
    alone = model(src[2:, :2], tgt[2:])  # the short sentence on its own, without any padding
    check_close(
        logits[2:],
        alone,
        "the logits of a short source padded inside a batch",
        MODEL,
        atol=1e-5,
        hint="they should equal its logits on its own, without padding",
    )


def test_too_long_sequences_raise():
    """A source or target longer than max_len, or decoding past it, raises ValueError."""
    model = small_model(max_len=8)
    ok = torch.randint(3, SRC_V, (2, 8))
    too_long = torch.randint(3, SRC_V, (2, 9))
    model(ok, ok)  # exactly max_len is fine
    for what, call in [
        ("a source of 9 tokens", lambda: model(too_long, ok)),
        ("a target of 9 tokens", lambda: model(ok, too_long)),
        ("greedy_decode(max_len=9)", lambda: model.greedy_decode(ok, BOS, EOS, max_len=9)),
        ("beam_search(max_len=9)", lambda: model.beam_search(ok, BOS, EOS, 2, max_len=9)),
    ]:
        try:
            call()
        except ValueError:
            continue
        except Exception as error:  # any other error breaks the contract
            fail(
                f"{what} with max_len=8 should raise ValueError (there is no position for it), "
                f"got {type(error).__name__}: {error}. Look at {MODEL}."
            )
        fail(
            f"{what} with max_len=8 should raise ValueError, but nothing was raised. Look at {MODEL}."
        )


# --- Decoding with a scripted model -------------------------------------------------------------
# To test the search itself, encode and decode are replaced by scripts with known probabilities.
# The decoding methods must call self.encode and self.decode, as their docstrings say.

A, B = 3, 4  # two ordinary target tokens


def scripted_lengths(model: torch.nn.Module) -> None:
    """Row b emits token A, n_b times, then EOS, where n_b = src[b, 0] - 3."""

    def encode(src):
        return src[:, :, None].float()  # (B, S, 1): carries n_b to decode

    def decode(tgt, memory, memory_mask=None):
        n = memory[:, 0, 0].long() - 3  # (B,)
        position = torch.arange(tgt.size(1))[None, :]  # (1, T)
        next_is_eos = position >= n[:, None]  # (B, T): after n tokens of A, EOS
        logits = torch.full((tgt.size(0), tgt.size(1), TGT_V), -5.0)
        logits[..., A] = torch.where(next_is_eos, 0.0, 5.0)
        logits[..., EOS] = torch.where(next_is_eos, 5.0, 0.0)
        return logits

    model.encode, model.decode = encode, decode


def scripted_table(model: torch.nn.Module, table: dict[int, dict[int, float]]) -> None:
    """The next token's probabilities depend only on the last token: table[last][next]."""
    logp = torch.full((TGT_V, TGT_V), -30.0)
    for last, probs in table.items():
        for nxt, p in probs.items():
            logp[last, nxt] = math.log(p)
    model.encode = lambda src: torch.zeros(src.size(0), src.size(1), 1)
    model.decode = lambda tgt, memory, memory_mask=None: logp[tgt]  # (B, T, V)


def test_greedy_decode_stops_each_sequence_at_eos():
    """greedy_decode is batched: BOS first, EOS ends a row, PAD after it, and it stops when all are done."""
    model = small_model()
    scripted_lengths(model)
    src = torch.tensor([[3], [5], [20]])  # 0, 2 and 17 tokens of A before EOS
    got = model.greedy_decode(src, bos_id=BOS, eos_id=EOS, max_len=6)
    expected = torch.tensor(
        [[BOS, EOS, PAD, PAD, PAD, PAD], [BOS, A, A, EOS, PAD, PAD], [BOS, A, A, A, A, A]]
    )
    check(
        isinstance(got, torch.Tensor)
        and got.shape == expected.shape
        and torch.equal(got, expected),
        f"greedy_decode(max_len=6) on a scripted model should give\n{expected.tolist()}\n"
        f"(BOS first, EOS included, PAD after EOS, at most max_len tokens), got\n"
        f"{got.tolist() if isinstance(got, torch.Tensor) else got}. Look at {GREEDY}.",
    )
    got = model.greedy_decode(src[:2], bos_id=BOS, eos_id=EOS, max_len=6)
    expected = expected[:2, :4]
    check(
        got.shape == expected.shape and torch.equal(got, expected),
        f"greedy_decode should stop as soon as every sequence has produced EOS: expected "
        f"{expected.tolist()}, got {got.tolist()}. Look at {GREEDY}.",
    )


def test_greedy_decode_follows_the_argmax():
    """On a real model, greedy_decode appends the argmax of forward(src, prefix)[:, -1] each step."""
    model = small_model()
    src, _ = batch()
    got = model.greedy_decode(src, bos_id=BOS, eos_id=EOS, max_len=8)
    for b in range(3):
        ys = torch.tensor([[BOS]])
        while ys.size(1) < 8 and ys[0, -1] != EOS:
            next_id = model(src[b : b + 1], ys)[:, -1].argmax(-1, keepdim=True)
            ys = torch.cat([ys, next_id], dim=1)
        check_equal(
            got[b, : ys.size(1)].tolist(),
            ys[0].tolist(),
            f"greedy_decode's row {b} (the argmax of the last position's logits at each step)",
            GREEDY,
        )


def test_beam_size_one_equals_greedy():
    """beam_search with beam_size=1 returns exactly what greedy_decode returns."""
    model = small_model()
    src, _ = batch()
    for eos in (EOS, 7):  # a rare EOS, and a token a random model does produce
        greedy = model.greedy_decode(src, bos_id=BOS, eos_id=eos, max_len=8)
        beam = model.beam_search(src, BOS, eos, beam_size=1, max_len=8, length_penalty=1.0)
        check(
            isinstance(beam, torch.Tensor) and torch.equal(beam, greedy),
            f"beam_search(beam_size=1) should equal greedy_decode: expected {greedy.tolist()}, got "
            f"{beam.tolist() if isinstance(beam, torch.Tensor) else beam}. Look at {BEAM}.",
        )


def test_beam_search_beats_myopic_greedy():
    """Where the best first token leads nowhere, beam search finds the more likely sequence."""
    model = small_model()
    # After BOS: A 0.6, B 0.4. After A: EOS 0.4 (total 0.24). After B: EOS 0.9 (total 0.36).
    scripted_table(
        model,
        {BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.4, A: 0.3, B: 0.3}, B: {EOS: 0.9, A: 0.05, B: 0.05}},
    )
    src = torch.full((2, 3), 5)
    greedy = model.greedy_decode(src, bos_id=BOS, eos_id=EOS, max_len=6)
    check_matches(
        greedy[0].tolist(),
        [BOS, A, EOS],
        f"greedy_decode on the scripted table should take A (0.6) then EOS, got "
        f"{greedy[0].tolist()}. Look at {GREEDY}.",
    )
    beam = model.beam_search(src, BOS, EOS, beam_size=2, max_len=6, length_penalty=1.0)
    check_matches(
        beam.tolist(),
        [[BOS, B, EOS]] * 2,
        f"beam_search(beam_size=2) should find [BOS, B, EOS] (probability 0.4 * 0.9 = 0.36) "
        f"rather than greedy's [BOS, A, EOS] (0.6 * 0.4 = 0.24), got {beam.tolist()}. Keep the "
        f"beam_size best extensions by total log-probability. Look at {BEAM}.",
    )


def test_beam_search_length_penalty():
    """The answer maximises sum(log p) / n ** length_penalty over finished hypotheses."""
    model = small_model()
    # [BOS, EOS]: 0.5 in 1 token. [BOS, A, B, EOS]: 0.5 * 0.95 * 0.95 = 0.45 in 3 tokens, so a
    # lower total but a higher log-probability per token.
    scripted_table(
        model, {BOS: {EOS: 0.5, A: 0.5}, A: {B: 0.95, EOS: 0.05}, B: {EOS: 0.95, A: 0.05}}
    )
    src = torch.full((1, 2), 5)
    raw = model.beam_search(src, BOS, EOS, beam_size=3, max_len=5, length_penalty=0.0)
    check_matches(
        raw.tolist(),
        [[BOS, EOS]],
        f"with length_penalty=0 beam_search should pick the most probable sequence [BOS, EOS] "
        f"(0.5), got {raw.tolist()}. Look at {BEAM}.",
    )
    normalised = model.beam_search(src, BOS, EOS, beam_size=3, max_len=5, length_penalty=1.0)
    check_matches(
        normalised.tolist(),
        [[BOS, A, B, EOS]],
        f"with length_penalty=1 beam_search should pick the best log-probability per token, "
        f"[BOS, A, B, EOS] (0.45 over 3 tokens beats 0.5 over 1), got {normalised.tolist()}. "
        f"Look at {BEAM}.",
    )
