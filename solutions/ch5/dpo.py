"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290).

From pairs of a chosen and a rejected answer to one prompt, DPO trains the policy so that

    loss = -log sigmoid(beta * [(log pi(chosen) - log ref(chosen))
                                - (log pi(rejected) - log ref(rejected))])

where log pi(answer) is the sum of the answer tokens' log-probabilities under the policy being
trained, and ref is a frozen copy of the model before DPO. ``beta * (log pi - log ref)`` is the
policy's *implicit reward* for an answer; the loss pushes the chosen answer's reward above the
rejected one's, and the reference keeps the policy from drifting where the data says nothing.
Equal policy and reference give the loss log 2.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -1  # a label the log-probabilities skip (the prompt, the padding)


def token_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probability of each target under ``model``, 0 where ``y`` is -1.

    ``x`` and ``y`` are a batch from :func:`ch5.sft.collate` (``y[t]`` the token after
    ``x[t]``, -1 for the prompt and the padding); ``model(x)`` returns ``(logits, loss)``.
    Entry (b, t) is ``log_softmax(logits[b, t])[y[b, t]]``, computed in float32.
    """
    # BEGIN SOLUTION
    logits, _ = model(x)
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked * (y != IGNORE)
    # END SOLUTION


def sequence_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) the log-probability of each row's response: the **sum** of :func:`token_logprobs`
    over the labelled positions (a sum, not a mean: it is log p(whole answer))."""
    # BEGIN SOLUTION
    return token_logprobs(model, x, y).sum(dim=-1)
    # END SOLUTION


def frozen_reference(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter's requires_grad False: the
    reference of DPO (and of RL's KL penalty), which must not change while the policy trains."""
    # BEGIN SOLUTION
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference
    # END SOLUTION


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, chosen_rewards, rejected_rewards)`` from (B,) sequence log-probabilities.

    chosen_rewards = beta * (policy_chosen - ref_chosen), rejected_rewards likewise (both (B,),
    detached: they are for logging); loss = mean over the batch of
    ``-log sigmoid(chosen_rewards - rejected_rewards)`` with gradients, computed with
    ``F.logsigmoid`` (stable for large margins).
    """
    # BEGIN SOLUTION
    chosen = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected = beta * (policy_rejected - ref_rejected)  # (B,)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()
    # END SOLUTION
