"""Stage ch3 'sampling': temperature, top-k and top-p distributions (checked statistically over
many draws), greedy, context cropping, EOS, seeds and argument checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from grader.tree import load
from tests.helpers import Mistake, check, check_equal, check_matches, check_raises, check_same, fail

sampling = load("ch3.sampling")
generate = sampling.generate

WHERE = "ch3/sampling.py, generate"
N = 20_000  # draws per distribution test


@dataclass
class Config:
    block_size: int
    vocab_size: int


class FixedLogits(nn.Module):
    """A fake model whose last-position logits are always ``logits``, whatever the input."""

    def __init__(self, logits, block_size: int = 16) -> None:
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))
        self.config = Config(block_size, len(self.logits))
        self.modes: list[bool] = []

    def forward(self, idx, targets=None):
        self.modes.append(self.training)
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"context of {T} tokens is longer than block_size")
        return self.logits.expand(B, T, -1).clone(), None


class TableModel(nn.Module):
    """A fake model: the next-token logits are ``table[token]`` of the FIRST token of the context
    (``first=True``) or of the LAST one, so cropping the context changes the output."""

    def __init__(self, table, block_size: int, first: bool = False) -> None:
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))
        self.config = Config(block_size, self.table.shape[1])
        self.first = first

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"context of {T} tokens is longer than block_size")
        key = idx[:, :1] if self.first else idx
        logits = self.table[key]  # (B, T or 1, V)
        return logits.expand(B, T, -1).clone(), None


def draw(model, n: int = N, seed: int = 0, **kw) -> torch.Tensor:
    """Counts of the first sampled token over n independent rows."""
    idx = torch.zeros(n, 1, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    out = generate(model, idx, 1, generator=g, **kw)
    check_matches(
        tuple(out.shape),
        (n, 2),
        f"generate(idx of shape ({n}, 1), max_new_tokens=1) should return shape ({n}, 2), got "
        f"{tuple(out.shape)}. Look at {WHERE}.",
    )
    return torch.bincount(out[:, 1], minlength=model.config.vocab_size).double()


def misfit(counts: torch.Tensor, probs: torch.Tensor) -> str | None:
    """Why ``counts`` were not drawn from ``probs``, or None: tokens of probability 0 never
    appear, and the others pass a chi-square test at a level that a correct sampler fails with
    probability far below one in a million."""
    probs = probs.double()
    n = counts.sum()
    banned = (probs == 0) & (counts > 0)
    if banned.any():
        token = int(banned.nonzero()[0])
        return (
            f"token {token} should never be sampled, but it came {int(counts[token])} times in "
            f"{int(n)} draws"
        )
    keep = probs > 0
    expected = probs[keep] * n
    chi2 = float(((counts[keep] - expected) ** 2 / expected).sum())
    df = int(keep.sum()) - 1
    bound = df + 8 * math.sqrt(2 * max(df, 1)) + 10
    if chi2 > bound:
        freq = (counts / n).tolist()
        return (
            f"the sampled frequencies {[round(f, 3) for f in freq]} do not follow the expected "
            f"probabilities {[round(p, 3) for p in probs.tolist()]} (chi-square {chi2:.0f} over "
            f"the bound {bound:.0f})"
        )
    return None


def check_distribution(
    counts: torch.Tensor,
    probs: torch.Tensor,
    what: str,
    where: str = WHERE,
    mistakes: tuple[Mistake, ...] = (),
) -> None:
    """``counts`` were drawn from ``probs``, or a failure that names the mistake they fit."""
    problem = misfit(counts, probs)
    if problem is None:
        return
    for mistake in mistakes:
        if misfit(counts, mistake.value) is None:
            fail(
                f"{what}: the sampled tokens came out as {mistake.name}: {mistake.fix}. "
                f"Look at {where}."
            )
    fail(f"{what}: {problem}. Look at {where}.")


LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_sampling_follows_the_softmax(temperature):
    """Samples follow softmax(logits / temperature), checked over 20,000 draws."""
    counts = draw(FixedLogits(LOGITS), temperature=temperature)
    check_distribution(
        counts, torch.softmax(LOGITS / temperature, -1), f"with temperature={temperature}"
    )


def test_top_k_keeps_the_k_most_likely_renormalised():
    """top_k=3: only the three most likely tokens appear, in proportion to their probabilities."""
    logits = torch.tensor([0.5, 2.0, -1.0, 1.5, 1.2, 0.0])
    probs = torch.zeros(6)
    probs[[1, 3, 4]] = torch.softmax(logits[[1, 3, 4]], -1)
    check_distribution(draw(FixedLogits(logits), top_k=3), probs, "with top_k=3")
    counts = draw(FixedLogits(logits), top_k=100)
    check_distribution(counts, torch.softmax(logits, -1), "with top_k larger than the vocabulary")


def test_top_p_keeps_the_smallest_nucleus():
    """top_p=0.75 keeps the smallest set of most likely tokens whose probability reaches 0.75."""
    probs = torch.tensor([0.06, 0.42, 0.02, 0.14, 0.23, 0.09, 0.04])
    # Sorted: 0.42, 0.23, 0.14 (sum 0.79 >= 0.75) -> tokens 1, 4, 3; the rest never.
    want = torch.zeros(7)
    want[[1, 4, 3]] = probs[[1, 4, 3]] / probs[[1, 4, 3]].sum()
    check_distribution(draw(FixedLogits(probs.log()), top_p=0.75), want, "with top_p=0.75")
    only_best = torch.zeros(7)
    only_best[1] = 1.0
    counts = draw(FixedLogits(probs.log()), n=500, top_p=0.01)
    check_distribution(counts, only_best, "with top_p=0.01 (only the most likely token)")
    check_distribution(
        draw(FixedLogits(probs.log()), top_p=1.0), probs, "with top_p=1.0 (every token)"
    )


def filtered_probs(logits: torch.Tensor, top_k: int, top_p: float, order: str) -> torch.Tensor:
    """The sampling distribution after top-k and top-p applied in ``order`` ("kp" or "pk")."""
    logits = logits.clone()
    for step in order:
        if step == "k":
            logits[logits < logits.topk(top_k).values[-1]] = -math.inf
        else:
            sorted_logits, sorted_ids = logits.sort(descending=True)
            probs = sorted_logits.softmax(-1)
            before = probs.cumsum(0) - probs  # mass of the more likely tokens
            logits[sorted_ids[before >= top_p]] = -math.inf
    return logits.softmax(-1)


def test_temperature_then_top_k_then_top_p():
    """Temperature, then top-k, then top-p on what is left (the documented order)."""
    logits = torch.tensor([1.0, 0.2, 2.2, -0.3, 1.6, 0.7, -1.5])
    t, k, p = 2.0, 4, 0.7  # each wrong order below keeps a different set of tokens
    mistakes = (
        Mistake(
            "top-p applied before top-k",
            "apply the temperature, then top-k, then top-p to the probabilities of the tokens "
            "top-k kept",
            filtered_probs(logits / t, k, p, "pk"),
        ),
        Mistake(
            "the temperature applied after top-k and top-p",
            "divide the logits by the temperature first, then filter",
            filtered_probs(logits, k, p, "kp").log().div(t).softmax(-1),
        ),
    )
    counts = draw(FixedLogits(logits), temperature=t, top_k=k, top_p=p)
    check_distribution(
        counts,
        filtered_probs(logits / t, k, p, "kp"),
        f"with temperature={t}, top_k={k}, top_p={p}",
        mistakes=mistakes,
    )


def test_filter_logits_masks_with_minus_infinity():
    """filter_logits sets the logits of excluded tokens to -inf and leaves the others alone."""
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.5], [3.0, 0.0, 1.0, 2.0]])
    got = sampling.filter_logits(logits, top_k=2)
    want = torch.tensor([[-math.inf, 2.0, -math.inf, 1.5], [3.0, -math.inf, -math.inf, 2.0]])
    check_same(
        got,
        want,
        f"filter_logits(top_k=2) should give {want.tolist()}, got {got.tolist()}. Look at "
        f"ch3/sampling.py, filter_logits.",
    )
    check_same(
        logits[0],
        torch.tensor([0.5, 2.0, -1.0, 1.5]),
        "filter_logits changed its input in place; return a new tensor. Look at "
        "ch3/sampling.py, filter_logits.",
    )


def greedy_reference(table, prompt, steps, block_size, first):
    seq = list(prompt)
    for _ in range(steps):
        context = seq[-block_size:]
        key = context[0] if first else context[-1]
        seq.append(int(torch.as_tensor(table)[key].argmax()))
    return seq


def bigram_table(v: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(v, v, generator=torch.Generator().manual_seed(seed))


def test_temperature_zero_is_greedy():
    """temperature=0 takes the argmax at every step (no division by zero, no randomness)."""
    table = bigram_table()
    model = TableModel(table, block_size=32)
    prompt = torch.tensor([[3, 1], [7, 7]])
    out = generate(model, prompt, 12, temperature=0.0)
    for row in range(2):
        want = greedy_reference(table, prompt[row].tolist(), 12, 32, first=False)
        check_equal(out[row].tolist(), want, f"greedy output of row {row}", WHERE)
    again = generate(model, prompt, 12, temperature=0.0, top_k=3, top_p=0.5)
    check_same(
        again,
        out,
        f"greedy decoding should not depend on top_k/top_p. Look at {WHERE}.",
    )


def test_context_is_cropped_to_block_size():
    """Each step feeds the model only the last block_size tokens."""
    table = bigram_table(seed=1)
    model = TableModel(table, block_size=4, first=True)  # raises on contexts longer than 4
    prompt = [2, 5, 1, 8, 6, 0]  # already longer than block_size
    try:
        out = generate(model, torch.tensor([prompt]), 10, temperature=0.0)
    except ValueError as e:
        fail(
            f"the model (block_size=4) was given a longer context ({e}): crop idx to its last "
            f"block_size tokens before each forward. Look at {WHERE}."
        )
    want = greedy_reference(table, prompt, 10, 4, first=True)
    check_equal(
        out[0].tolist(), want, "the output when the model reads its context's first token", WHERE
    )


def test_stops_at_eos():
    """A row ends at eos_id (kept, then padded with eos_id); generation stops when all ended."""
    v, eos = 6, 5
    table = torch.full((v, v), -10.0)
    for a, b in [(0, 1), (1, 2), (2, eos), (3, 4), (4, 0), (eos, 0)]:
        table[a, b] = 10.0  # 0 -> 1 -> 2 -> EOS, 3 -> 4 -> 0 -> 1 -> 2 -> EOS
    model = TableModel(table, block_size=8)
    out = generate(model, torch.tensor([[0]]), 20, temperature=0.0, eos_id=eos)
    check_equal(out.tolist(), [[0, 1, 2, eos]], "a row that reaches eos_id", WHERE)
    out = generate(model, torch.tensor([[0], [3]]), 20, temperature=0.0, eos_id=eos)
    want = [[0, 1, 2, eos, eos, eos], [3, 4, 0, 1, 2, eos]]
    check_equal(
        out.tolist(), want, "two rows where the first ends earlier (padded with eos_id)", WHERE
    )
    out = generate(model, torch.tensor([[3]]), 3, temperature=0.0, eos_id=eos)
    check_equal(out.tolist(), [[3, 4, 0, 1]], "a row that does not reach eos in time", WHERE)


def test_seeded_runs_repeat_exactly():
    """The same seeded generator gives the same tokens; another seed gives others."""
    model = FixedLogits(torch.zeros(50))
    idx = torch.zeros(2, 3, dtype=torch.long)

    def run(seed, **kw):
        return generate(model, idx, 30, generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = run(7), run(7), run(8)
    check_same(a, b, f"two runs with the same seed gave different tokens. Look at {WHERE}.")
    check(not torch.equal(a, c), f"seeds 7 and 8 gave the same 60 tokens. Look at {WHERE}.")
    check_same(
        run(7, top_k=10, top_p=0.9),
        run(7, top_k=10, top_p=0.9),
        f"seeded runs with top_k and top_p should repeat. Look at {WHERE}.",
    )
    check_equal(tuple(a.shape), (2, 33), "the output shape for idx (2, 3) and 30 new tokens", WHERE)
    check_matches(
        a.dtype, torch.long, f"the output should be int64, got {a.dtype}. Look at {WHERE}."
    )
    check_same(a[:, :3], idx, f"the output should start with the prompt. Look at {WHERE}.")


def test_eval_mode_while_generating():
    """The model runs in eval mode (no dropout) and gets its previous mode back."""
    model = FixedLogits(LOGITS)
    model.train()
    generate(model, torch.zeros(1, 1, dtype=torch.long), 3)
    check(
        model.modes and not any(model.modes),
        f"the model should be in eval mode while generating (its modes were {model.modes}). "
        f"Look at {WHERE}.",
    )
    check(model.training, f"generate should give the model back in train mode. Look at {WHERE}.")


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"temperature": -1.0}, "temperature=-1"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"top_k": 0}, "top_k=0"),
        ({"top_p": 0.0}, "top_p=0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"max_new_tokens": -1}, "max_new_tokens=-1"),
        ({"idx": torch.tensor([1, 2])}, "a 1-D idx"),
        ({"idx": torch.zeros(1, 2)}, "a float idx"),
        ({"idx": torch.zeros(1, 0, dtype=torch.long)}, "an empty prompt"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, what):
    """Arguments out of range raise ValueError instead of sampling garbage."""
    args = {"idx": torch.zeros(1, 1, dtype=torch.long), "max_new_tokens": 2}
    args.update(kwargs)
    with check_raises(ValueError, f"generate with {what}", WHERE):
        generate(FixedLogits(LOGITS), **args)


@pytest.mark.hidden
def test_top_p_nucleus_is_chosen_row_by_row():
    """Hidden (instructor's run): top_p picks each row's own nucleus in a batch of different rows."""
    a = torch.tensor([0.50, 0.30, 0.12, 0.05, 0.03])
    b = a.flip(0)  # the same probabilities, most likely token last
    model = TableModel(torch.stack([a, b]).log(), block_size=4)
    idx = (torch.arange(N) % 2).unsqueeze(1)  # rows alternate between the two distributions
    out = generate(model, idx, 1, top_p=0.75, generator=torch.Generator().manual_seed(0))
    for row, probs in ((0, a), (1, b)):
        kept = probs >= 0.30  # 0.50 + 0.30 reaches 0.75: a two-token nucleus in each row
        want = torch.where(kept, probs, torch.zeros_like(probs))
        counts = torch.bincount(out[row::2, 1], minlength=5).double()
        check_distribution(
            counts,
            want / want.sum(),
            f"with top_p=0.75 on the rows that start with token {row}",
            f"{WHERE} (sort, cumulative sum and mask each row separately, then scatter back)",
        )


class Boom(Exception):
    """An error only the fake model below raises."""


def test_train_mode_comes_back_when_the_model_raises():
    """A model that raises mid-generation is still put back in training mode."""

    class Exploding(FixedLogits):
        def forward(self, idx, targets=None):
            raise Boom("the model failed")

    model = Exploding(LOGITS).train()
    with check_raises(Boom, "generate with a model that raises", WHERE):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 3)
    check(
        model.training,
        f"generate left the model in eval mode after the model raised: restore its mode in a "
        f"try/finally. Look at {WHERE}.",
    )
