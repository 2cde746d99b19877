"""Reinforcement learning on a verifiable reward, GRPO-style (Shao et al. 2024, DeepSeekMath,
arXiv:2402.03300).

For each prompt the policy samples a *group* of G answers; a program scores each (1 if the sum is
right, 0 if not). An answer's advantage is its reward compared with its own group's:
``(r - mean(group)) / (std(group) + eps)``, so no value network is needed, and a group whose
answers all score the same teaches nothing. The policy then maximises PPO's clipped objective
per answer token,

    min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A),   ratio = pi(token) / pi_old(token),

minus ``kl_coef`` times an estimate of the KL divergence from a frozen reference model, averaged
over every answer token of the batch. ``pi_old`` is the policy that sampled the answers: on the
first update after sampling the ratio is 1 and the objective's gradient is the plain policy
gradient ``A * grad log pi``; the clip stops later updates on the same samples from moving too far.
"""

from __future__ import annotations

import torch

IGNORE = -1  # a label that is not an answer token (the prompt, what follows the end)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, G) advantages from (N, G) rewards, G answers per prompt: each reward minus its row's
    mean, divided by its row's standard deviation (population: ``unbiased=False``) plus ``eps``.
    A row of equal rewards gives zeros."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'rl' not started: implement group_advantages in ch5/rl.py (read docs/chapter05/5_5_rl.md#advantages-group_advantages)"
    )


def rollout_batch(
    sequences: torch.Tensor, prompt_len: int, end_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` for scoring sampled answers, from (B, L) int64 ``sequences``: a prompt of
    ``prompt_len`` tokens (the same in every row) followed by the sampled answer.

    ``x = sequences[:, :-1]`` and ``y = sequences[:, 1:]`` (the one shift), with ``y`` set to -1
    where its token belongs to the prompt and after the answer's first ``end_id`` (the end token
    itself stays: ending is part of the answer; whatever generation appended after it is not).
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'rl' not started: implement rollout_batch in ch5/rl.py (read docs/chapter05/5_5_rl.md#which-tokens-are-scored-rollout_batch)"
    )


def approx_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled tokens' log-probabilities (Schulman's
    k3): ``exp(ref_logp - logp) - (ref_logp - logp) - 1``, elementwise, >= 0, 0 where equal."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'rl' not started: implement approx_kl in ch5/rl.py (read docs/chapter05/5_5_rl.md#staying-close-approx_kl)"
    )


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """The loss to minimise: minus the clipped objective, plus ``kl_coef`` times
    :func:`approx_kl`, averaged over the answer tokens of the whole batch.

    Args:
        logp: (B, T) log-probabilities of the sampled tokens under the policy (with gradients).
        old_logp: (B, T) the same under the policy that sampled them (no gradient).
        advantages: (B,) one advantage per answer, shared by all its tokens.
        mask: (B, T) bool, True on answer tokens (``y != -1``).
        clip_eps: the ratio is clipped to [1 - clip_eps, 1 + clip_eps].
        ref_logp: (B, T) under the frozen reference, needed when ``kl_coef`` > 0.

    Per token: ``ratio = exp(logp - old_logp)``, objective ``min(ratio * A, clip(ratio) * A) -
    kl_coef * approx_kl(logp, ref_logp)``; the loss is ``-sum(objective * mask) / sum(mask)``.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'rl' not started: implement grpo_loss in ch5/rl.py (read docs/chapter05/5_5_rl.md#the-clipped-objective-grpo_loss)"
    )
