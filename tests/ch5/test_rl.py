"""Stage 'rl': group-relative advantages, the bookkeeping of sampled answers (which tokens are
scored), the k3 KL estimate and the clipped objective, each against its closed form; at ratio 1
the gradient is the plain policy gradient."""

from __future__ import annotations

import torch

from grader.tree import load
from tests.helpers import Mistake, check_close, check_same

rl = load("ch5.rl")

ADV = "ch5/rl.py, group_advantages"
ROLL = "ch5/rl.py, rollout_batch"
KL = "ch5/rl.py, approx_kl"
LOSS = "ch5/rl.py, grpo_loss"
EPS = 1e-6


def test_group_advantages_are_relative_to_the_group():
    """(r - mean(row)) / (std(row, unbiased=False) + eps); a row of equal rewards gives zeros."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    mean = rewards.mean(-1, keepdim=True)
    expected = (rewards - mean) / (rewards.std(-1, keepdim=True, unbiased=False) + EPS)
    batch = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + EPS)
    check_close(
        rl.group_advantages(rewards, eps=EPS),
        expected,
        "the advantages",
        ADV,
        atol=1e-4,
        mistakes=[
            Mistake(
                "advantages normalised over the whole batch",
                "take the mean and std of each prompt's group (dim=-1, keepdim=True)",
                batch,
            ),
            Mistake(
                "rewards minus the group mean, not divided by the std",
                "divide by the group's std + eps",
                rewards - mean,
            ),
            Mistake(
                "advantages with the unbiased std",
                "use std(unbiased=False)",
                (rewards - mean) / (rewards.std(-1, keepdim=True) + EPS),
            ),
        ],
    )


def test_rollout_batch_scores_only_the_answer():
    """x = seq[:, :-1]; y = seq[:, 1:] with -1 on the prompt and after the first end token."""
    P, END = 3, 9
    seq = torch.tensor([[1, 2, 3, 4, 5, END, END, END], [1, 2, 3, 4, 5, 6, 7, 8]])
    x, y = rl.rollout_batch(seq, prompt_len=P, end_id=END)
    expected = torch.tensor([[-1, -1, 4, 5, END, -1, -1], [-1, -1, 4, 5, 6, 7, 8]])
    check_same(x, seq[:, :-1], f"x should be sequences[:, :-1], got {x.tolist()}. Look at {ROLL}.")
    check_close(
        y,
        expected,
        "the answer labels y",
        ROLL,
        mistakes=[
            Mistake(
                "labels that keep the tokens after the end",
                "set y to -1 after the first end token (generation pads with it)",
                torch.tensor([[-1, -1, 4, 5, END, END, END], [-1, -1, 4, 5, 6, 7, 8]]),
            ),
            Mistake(
                "labels with the end token masked too",
                "keep the first end token: stopping is part of the answer",
                torch.tensor([[-1, -1, 4, 5, -1, -1, -1], [-1, -1, 4, 5, 6, 7, 8]]),
            ),
            Mistake(
                "labels that count the prompt's last token",
                "mask y[:, : prompt_len - 1]",
                torch.tensor([[-1, 3, 4, 5, END, -1, -1], [-1, 3, 4, 5, 6, 7, 8]]),
            ),
        ],
    )


def test_approx_kl_is_k3():
    """exp(ref - logp) - (ref - logp) - 1, zero where the two agree."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -4.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.2], [-1.0, -0.1, -6.0]])
    delta = ref - logp
    check_close(
        rl.approx_kl(logp, ref),
        torch.exp(delta) - delta - 1,
        "the KL estimate",
        KL,
        mistakes=[
            Mistake(
                "the plain log-ratio logp - ref (k1)",
                "use exp(ref - logp) - (ref - logp) - 1, never negative",
                logp - ref,
            )
        ],
    )


def setup_batch():
    logp = torch.tensor([[-1.0, -0.5, -2.0, -9.0], [-0.7, -1.6, -0.2, -0.3]])
    old = torch.tensor([[-1.5, -0.4, -1.0, -9.0], [-0.7, -1.0, -0.9, -0.3]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    adv = torch.tensor([1.5, -0.8])
    return logp, old, adv, mask


def objective(logp, old, adv, eps, clip=True, use_max=False):
    ratio = torch.exp(logp - old)
    A = adv[:, None]
    if not clip:
        return ratio * A
    pick = torch.maximum if use_max else torch.minimum
    return pick(ratio * A, ratio.clamp(1 - eps, 1 + eps) * A)


def test_grpo_loss_is_the_clipped_objective():
    """-(sum of min(ratio A, clip(ratio) A) over answer tokens) / (number of answer tokens)."""
    logp, old, adv, mask = setup_batch()
    m = mask.float()
    got = rl.grpo_loss(logp, old, adv, mask, clip_eps=0.2)
    expected = -(objective(logp, old, adv, 0.2) * m).sum() / m.sum()
    check_close(
        got.detach(),
        expected,
        "the GRPO loss",
        LOSS,
        mistakes=[
            Mistake(
                "the loss without clipping",
                "take min(ratio * A, clamp(ratio, 1 - eps, 1 + eps) * A)",
                -(objective(logp, old, adv, 0.2, clip=False) * m).sum() / m.sum(),
            ),
            Mistake(
                "the loss with max instead of min",
                "the pessimistic bound is the min of the two terms",
                -(objective(logp, old, adv, 0.2, use_max=True) * m).sum() / m.sum(),
            ),
            Mistake(
                "the loss averaged over every position",
                "divide by the number of answer tokens (mask.sum())",
                -(objective(logp, old, adv, 0.2) * m).sum() / m.numel(),
            ),
        ],
    )


def test_grpo_loss_with_a_kl_penalty():
    """With kl_coef, the objective loses kl_coef * approx_kl(logp, ref) per token."""
    logp, old, adv, mask = setup_batch()
    ref = torch.tensor([[-1.2, -0.5, -1.5, -8.0], [-0.9, -1.2, -0.4, -0.3]])
    m = mask.float()
    delta = ref - logp
    per_token = objective(logp, old, adv, 0.2) - 0.3 * (torch.exp(delta) - delta - 1)
    got = rl.grpo_loss(logp, old, adv, mask, clip_eps=0.2, ref_logp=ref, kl_coef=0.3)
    check_close(
        got.detach(), -(per_token * m).sum() / m.sum(), "the GRPO loss with kl_coef=0.3", LOSS
    )


def test_gradient_at_ratio_one_is_the_policy_gradient():
    """Right after sampling (logp == old_logp) d loss / d logp = -A * mask / mask.sum()."""
    _, old, adv, mask = setup_batch()
    logp = old.clone().requires_grad_(True)
    rl.grpo_loss(logp, old, adv, mask, clip_eps=0.2).backward()
    m = mask.float()
    expected = -adv[:, None] * m / m.sum()
    check_close(
        logp.grad,
        expected,
        "d loss / d logp at ratio 1",
        LOSS,
        hint="old_logp is a constant (detach it); the gradient flows through ratio = exp(logp - old_logp)",
    )
