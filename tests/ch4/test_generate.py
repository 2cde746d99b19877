"""Stage ch4 'generate': generation with the KV cache against the slow way (the whole sequence every
step, greedy by the test's own loop), one token per step after the prefill, left-padded batches
against one prompt at a time, and chapter 3's sampling rules with a seeded generator."""

from __future__ import annotations

import math

import torch

from grader.tree import load
from tests.ch4 import oracles
from tests.helpers import Mistake, check_close, check_equal, fail_if_mistake

gen = load("ch4.generate")
llama = load("ch4.llama")

WHERE = "ch4/generate.py, generate"
PAD = "ch4/generate.py, left_pad"
CONFIG = oracles.hf_config("LlamaForCausalLM", vocab_size=50, max_position_embeddings=96)


def make_model(seed: int = 0):
    """The tree's Llama with sharp (far from tied) oracle weights: logits scaled up by 3."""
    sd = oracles.hf_state_dict(CONFIG, seed)
    sd["lm_head.weight"] = 3 * sd["lm_head.weight"]
    return llama.Llama.from_hf(sd, CONFIG)


def prompts(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, CONFIG["vocab_size"], (n,), generator=g) for n in lengths]


@torch.no_grad()
def greedy_by_hand(model, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The slow way, written here: the whole sequence through the model for every token."""
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


class Spy:
    """Wraps a model's forward to record (tokens fed, start_pos, cache given) per call."""

    def __init__(self, model) -> None:
        self.calls: list[tuple[int, int, bool]] = []
        original = model.forward

        def forward(idx, targets=None, start_pos=0, cache=None, pad_mask=None):
            self.calls.append((idx.size(1), start_pos, cache is not None))
            return original(idx, targets, start_pos, cache, pad_mask)

        model.forward = forward


def test_left_pad():
    """left_pad stacks prompts against the right edge: (idx, pad_mask) with False on padding."""
    idx, pad_mask = gen.left_pad([[5, 6], [7, 8, 9, 10], [11]], pad_id=0)
    check_close(
        idx,
        torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]]),
        "left_pad's ids",
        PAD,
        hint="pad on the left, so that every prompt ends in the last column",
    )
    check_close(
        pad_mask,
        torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.bool),
        "left_pad's pad_mask",
        PAD,
    )


def test_cached_and_uncached_greedy_are_identical():
    """Greedy generation gives the same 40 tokens with the cache, without it, and by hand."""
    idx = torch.stack(prompts([6, 6], seed=2))
    model = make_model()
    expected = greedy_by_hand(model, idx, 40)
    cached = gen.generate(model, idx, 40, temperature=0.0)
    uncached = gen.generate(model, idx, 40, temperature=0.0, use_cache=False)
    check_equal(cached.tolist(), expected.tolist(), "the greedy tokens with the cache", WHERE)
    check_equal(uncached.tolist(), expected.tolist(), "the greedy tokens without the cache", WHERE)


def test_cache_feeds_one_token_per_step():
    """With the cache: one call on the prompt at start_pos 0, then one token per call at T, T+1, ..."""
    idx = torch.stack(prompts([5], seed=3))
    model = make_model()
    spy = Spy(model)
    gen.generate(model, idx, 4, temperature=0.0)
    expected = [(5, 0, True), (1, 5, True), (1, 6, True), (1, 7, True)]
    mistakes = [
        Mistake(
            "the whole sequence fed at every step (the cache brings no speed-up)",
            "after the prefill, feed only the newest token at start_pos = the tokens so far",
            [(5 + i, 0, True) for i in range(4)],
        ),
        Mistake(
            "generation that never uses the cache",
            "make one with model.new_cache(B, T + max_new_tokens) and pass cache= every call",
            [(5 + i, 0, False) for i in range(4)],
        ),
    ]
    what = "the model calls (tokens fed, start_pos, with a cache)"
    if spy.calls != expected:
        fail_if_mistake(spy.calls, mistakes, what, WHERE)
    check_equal(spy.calls, expected, what, WHERE)


def test_batched_prompts_equal_one_at_a_time():
    """Left-padded prompts of lengths 3, 8 and 5 give, row by row, the tokens of each alone."""
    batch = prompts([3, 8, 5], seed=4)
    model = make_model(seed=5)
    alone = [gen.generate(model, p[None], 12, temperature=0.0)[0, len(p) :] for p in batch]
    idx, pad_mask = gen.left_pad(batch)
    for use_cache in (True, False):
        out = gen.generate(model, idx, 12, temperature=0.0, use_cache=use_cache, pad_mask=pad_mask)
        for row, expected in enumerate(alone):
            check_equal(
                out[row, idx.size(1) :].tolist(),
                expected.tolist(),
                f"the new tokens of prompt {row} (length {len(batch[row])}) in a left-padded "
                f"batch, use_cache={use_cache}",
                f"{WHERE} (pass pad_mask to every model call, one True more per new token)",
            )


def test_eos_ends_a_row():
    """A row that produced eos_id is padded with it; generation stops when every row has ended."""
    idx = torch.stack(prompts([4, 4], seed=6))
    model = make_model(seed=7)
    free = greedy_by_hand(model, idx, 10)
    eos = int(free[0, 6])  # the third token row 0 generates
    expected = free.clone()
    for row in range(2):
        hits = (free[row, 4:] == eos).nonzero()
        if len(hits):
            expected[row, 4 + int(hits[0]) :] = eos
    out = gen.generate(model, idx, 10, temperature=0.0, eos_id=eos)
    ended = bool((expected[:, 4:] == eos).any(dim=1).all())
    if ended:  # every row ends: generation stops after the last row's eos
        last = max(4 + int((expected[r, 4:] == eos).nonzero()[0]) for r in range(2))
        expected = expected[:, : last + 1]
    check_equal(out.tolist(), expected.tolist(), "the tokens with eos_id", WHERE)


def test_sampling_follows_chapter_3():
    """Seeded sampling equals chapter 3's rule by hand: temperature, top-k, top-p, multinomial."""
    idx = torch.stack(prompts([5, 5], seed=8))
    model = make_model(seed=9)
    out = gen.generate(
        model, idx, 8, temperature=0.8, top_k=10, top_p=0.9,
        generator=torch.Generator().manual_seed(10),
    )  # fmt: skip
    g = torch.Generator().manual_seed(10)
    expected = idx
    with torch.no_grad():
        for _ in range(8):  # chapter 3's rule, written out
            logits = model(expected)[0][:, -1].float() / 0.8
            kth = logits.topk(10, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            drop = (probs.cumsum(-1) - probs) >= 0.9  # the more likely tokens already reach p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -math.inf)
            probs = torch.softmax(logits, dim=-1)
            expected = torch.cat([expected, torch.multinomial(probs, 1, generator=g)], dim=1)
    check_equal(
        out.tolist(),
        expected.tolist(),
        "the sampled tokens (temperature 0.8, top_k 10, top_p 0.9, seeded generator)",
        f"{WHERE} (chapter 3's filter_logits(logits / temperature, top_k, top_p), softmax, "
        "one torch.multinomial(probs, 1, generator=generator) per step)",
    )


def test_seeded_sampling_repeats():
    """The same seeded generator gives the same tokens, with and without the cache."""
    idx = torch.stack(prompts([4], seed=11))
    model = make_model(seed=12)
    runs = [
        gen.generate(model, idx, 15, generator=torch.Generator().manual_seed(13), use_cache=c)
        for c in (True, True, False)
    ]
    check_equal(runs[1].tolist(), runs[0].tolist(), "a second run with the same seed", WHERE)
    check_equal(runs[2].tolist(), runs[0].tolist(), "the same seed without the cache", WHERE)
