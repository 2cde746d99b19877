"""Stage 'dpo': sequence log-probabilities against log_softmax by hand (a sum over the response
only), the DPO loss against its closed form, log 2 when policy and reference agree, the
gradient's sign, and a frozen reference in eval mode."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from grader.tree import load
from tests.ch5.toy import ToyLM
from tests.helpers import (
    Mistake,
    check_close,
    check_equal,
    check_same,
    fill_parameters,
)

dpo = load("ch5.dpo")

TOKENS = "ch5/dpo.py, token_logprobs"
SEQ = "ch5/dpo.py, sequence_logprobs"
LOSS = "ch5/dpo.py, dpo_loss"
REF = "ch5/dpo.py, frozen_reference"
BETA = 0.5


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows: a prompt (labels -1), a response, padding (labels -1)."""
    x = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]])
    y = torch.tensor([[-1, -1, 4, 5, 6, 3], [-1, 9, 10, 2, -1, -1]])
    return x, y


def by_hand(model, x, y) -> torch.Tensor:
    logp = F.log_softmax(model(x)[0].detach().double(), dim=-1)
    out = torch.zeros(y.shape, dtype=torch.float64)
    for b in range(y.size(0)):
        for t in range(y.size(1)):
            if y[b, t] != -1:
                out[b, t] = logp[b, t, y[b, t]]
    return out


def test_token_logprobs_are_the_targets_log_softmax():
    """Entry (b, t) is log_softmax(logits[b, t])[y[b, t]], and 0 where y is -1."""
    model = fill_parameters(ToyLM())
    x, y = batch()
    expected = by_hand(model, x, y)
    raw = model(x)[0].detach().double().gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    check_close(
        dpo.token_logprobs(model, x, y).detach(),
        expected.float(),
        "the token log-probabilities",
        TOKENS,
        mistakes=[
            Mistake(
                "raw logits instead of log-probabilities",
                "apply F.log_softmax over the vocabulary first",
                (raw * (y != -1)).float(),
            ),
            Mistake(
                "log-probabilities on the masked positions too",
                "multiply by (y != -1): the prompt and padding are not the response",
                by_hand(model, x, y.clamp(min=0)).float(),
            ),
        ],
    )


def test_sequence_logprobs_sum_the_response_tokens():
    """sequence_logprobs is the sum over the labelled tokens (not their mean)."""
    model = fill_parameters(ToyLM())
    x, y = batch()
    per_token = by_hand(model, x, y)
    counts = (y != -1).sum(-1)
    check_close(
        dpo.sequence_logprobs(model, x, y).detach(),
        per_token.sum(-1).float(),
        "the sequence log-probabilities",
        SEQ,
        mistakes=[
            Mistake(
                "the mean over the response tokens",
                "sum them: log p(answer) is the sum of its tokens' log-probabilities",
                (per_token.sum(-1) / counts).float(),
            )
        ],
    )


def test_dpo_loss_matches_the_closed_form():
    """loss = mean(-log sigmoid(beta (pc - rc) - beta (pr - rr))), rewards beta (p - r)."""
    pc, pr = torch.tensor([-3.0, -7.5, -1.0]), torch.tensor([-4.0, -6.0, -9.0])
    rc, rr = torch.tensor([-3.5, -7.0, -2.0]), torch.tensor([-3.0, -6.5, -8.0])
    chosen, rejected = BETA * (pc - rc), BETA * (pr - rr)
    expected = -torch.log(torch.sigmoid(chosen - rejected)).mean()
    loss, got_chosen, got_rejected = dpo.dpo_loss(pc, pr, rc, rr, beta=BETA)
    no_beta = -torch.log(torch.sigmoid((pc - rc) - (pr - rr))).mean()
    no_ref = -torch.log(torch.sigmoid(BETA * (pc - pr))).mean()
    flipped = -torch.log(torch.sigmoid(rejected - chosen)).mean()
    check_close(
        loss.detach(),
        expected,
        "the DPO loss",
        LOSS,
        mistakes=[
            Mistake("the loss without beta", "multiply both log-ratios by beta", no_beta),
            Mistake(
                "the loss without the reference model",
                "subtract the reference's log-probabilities",
                no_ref,
            ),
            Mistake(
                "the loss with chosen and rejected swapped",
                "the margin is chosen reward minus rejected reward",
                flipped,
            ),
        ],
    )
    check_close(got_chosen, chosen, "the chosen rewards", LOSS)
    check_close(got_rejected, rejected, "the rejected rewards", LOSS)


def test_equal_policy_and_reference_give_log_2():
    """With the policy equal to the reference every reward is 0 and the loss is log 2."""
    logps = torch.tensor([-3.0, -12.0])
    loss, chosen, rejected = dpo.dpo_loss(logps, logps - 1, logps, logps - 1, beta=BETA)
    check_close(
        loss.detach(), torch.tensor(math.log(2)), "the DPO loss with policy == reference", LOSS
    )
    check_same(
        chosen,
        torch.zeros(2),
        f"the chosen rewards should be 0 when policy == reference. Look at {LOSS}.",
    )


def test_gradient_raises_chosen_and_lowers_rejected():
    """The gradient descends towards a higher chosen and a lower rejected log-probability, with
    d loss / d pc = -beta (1 - sigmoid(margin)) / B."""
    pc = torch.tensor([-3.0, -5.0], requires_grad=True)
    pr = torch.tensor([-4.0, -2.0], requires_grad=True)
    rc, rr = torch.tensor([-3.0, -4.0]), torch.tensor([-3.0, -3.0])
    loss, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=BETA)
    loss.backward()
    margin = BETA * ((pc - rc) - (pr - rr)).detach()
    expected = -BETA * (1 - torch.sigmoid(margin)) / 2
    check_close(
        pc.grad,
        expected,
        "d loss / d policy_chosen",
        LOSS,
        hint="the loss must be a mean over the batch with gradients through the policy terms; only the rewards are detached",
    )
    check_close(pr.grad, -expected, "d loss / d policy_rejected", LOSS)


def test_reference_is_a_frozen_copy_in_eval_mode():
    """frozen_reference copies the weights, is in eval mode, needs no gradients, and does not
    move when the policy trains."""
    policy = fill_parameters(ToyLM()).train()
    reference = dpo.frozen_reference(policy)
    check_equal(reference.training, False, "reference.training", REF)
    check_equal(
        any(p.requires_grad for p in reference.parameters()),
        False,
        "whether a reference parameter requires grad",
        REF,
    )
    check_equal(
        policy.training,
        True,
        "the policy's training flag after frozen_reference (it must stay in train mode)",
        REF,
    )
    before = reference.wte.weight.detach().clone()
    with torch.no_grad():
        policy.wte.weight.add_(1.0)
    check_same(
        reference.wte.weight.detach(),
        before,
        f"the reference must be a copy: it changed when the policy's weights did. Look at {REF}.",
    )
