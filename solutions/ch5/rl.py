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
    # BEGIN SOLUTION
    rewards = rewards.float()
    mean = rewards.mean(dim=-1, keepdim=True)  # (N, 1)
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)  # (N, 1)
    return (rewards - mean) / (std + eps)
    # END SOLUTION


def rollout_batch(
    sequences: torch.Tensor, prompt_len: int, end_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` for scoring sampled answers, from (B, L) int64 ``sequences``: a prompt of
    ``prompt_len`` tokens (the same in every row) followed by the sampled answer.

    ``x = sequences[:, :-1]`` and ``y = sequences[:, 1:]`` (the one shift), with ``y`` set to -1
    where its token belongs to the prompt and after the answer's first ``end_id`` (the end token
    itself stays: ending is part of the answer; whatever generation appended after it is not).
    """
    # BEGIN SOLUTION
    x, y = sequences[:, :-1], sequences[:, 1:].clone()
    answer = torch.arange(y.size(1), device=y.device) >= prompt_len - 1  # (L-1,)
    ended = (y == end_id) & answer  # (B, L-1)
    after_end = (ended.long().cumsum(dim=1) - ended.long()) > 0  # strictly after the first end
    y[:, ~answer] = IGNORE
    y[after_end] = IGNORE
    return x, y
    # END SOLUTION


def approx_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled tokens' log-probabilities (Schulman's
    k3): ``exp(ref_logp - logp) - (ref_logp - logp) - 1``, elementwise, >= 0, 0 where equal."""
    # BEGIN SOLUTION
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1
    # END SOLUTION


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
    # BEGIN SOLUTION
    mask = mask.float()
    A = advantages.unsqueeze(-1)  # (B, 1), the same for every token of an answer
    ratio = torch.exp(logp - old_logp.detach())  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    objective = torch.minimum(ratio * A, clipped * A)
    if kl_coef:
        objective = objective - kl_coef * approx_kl(logp, ref_logp)
    return -(objective * mask).sum() / mask.sum().clamp(min=1.0)
    # END SOLUTION
