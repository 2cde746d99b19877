"""A sparse mixture of experts (MoE) feed-forward layer, as in Mixtral (Jiang et al., 2024).

Instead of one SwiGLU, ``n_experts`` of them; a router (``gate``, a Linear without bias) scores
the experts for each token, the ``top_k`` best run, and their outputs are added with weights
``softmax`` over the chosen experts' router logits. A token pays for ``top_k`` experts while the
model holds ``n_experts`` of them: more parameters for the same compute per token.

Left alone, a router sends most tokens to a few experts, which then learn everything while the
rest idle. The Switch Transformer's load-balancing loss (Fedus et al., 2021) pushes back:
``n_experts * sum_e f_e * P_e``, with ``f_e`` the fraction of the routed (token, slot) pairs that
went to expert ``e`` and ``P_e`` the router's mean probability (a softmax over all experts) for
``e``. It is 1 for a perfectly balanced router and grows as routing concentrates.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import SwiGLU


class MoE(nn.Module):
    """Mixtral's sparse MoE: router ``gate`` = ``nn.Linear(dim, n_experts, bias=False)``,
    ``experts`` = an ``nn.ModuleList`` of ``n_experts`` ``SwiGLU(dim, hidden_dim)``.

    Raises:
        ValueError: unless ``1 <= top_k <= n_experts``.
    """

    def __init__(self, dim: int, hidden_dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and n_experts={n_experts}")
        self.n_experts = n_experts
        self.top_k = top_k
        # BEGIN SOLUTION
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList([SwiGLU(dim, hidden_dim) for _ in range(n_experts)])
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Route every token of ``x`` to its ``top_k`` experts.

        Args:
            x: (..., dim), for example (B, T, dim).

        Returns:
            ``(y, aux_loss)``: y of ``x``'s shape, ``y = sum over the token's top_k experts e of
            w_e * expert_e(x)`` with ``w = softmax`` of the chosen experts' router logits; and
            the load-balancing loss, a 0-d float32 tensor (module docstring). The experts run
            on all their tokens at once: a loop over experts is fine, a loop over tokens is not.
        """
        # BEGIN SOLUTION
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, dim)
        logits = self.gate(tokens)  # (N, E)
        top_logits, chosen = logits.topk(self.top_k, dim=-1)  # (N, k) each
        weights = F.softmax(top_logits.float(), dim=-1).to(x.dtype)  # (N, k)
        y = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # the tokens that chose e, and in which slot
            if token.numel() > 0:
                y.index_add_(0, token, expert(tokens[token]) * weights[token, slot, None])
        # Load balancing (Switch Transformer): E * sum_e f_e * P_e.
        routed = F.one_hot(chosen, self.n_experts).float().sum(dim=1)  # (N, E): 1 where chosen
        fraction = routed.mean(dim=0) / self.top_k  # (E,) f_e, sums to 1
        mean_prob = F.softmax(logits.float(), dim=-1).mean(dim=0)  # (E,) P_e
        aux_loss = self.n_experts * (fraction * mean_prob).sum()
        return y.reshape(shape), aux_loss
        # END SOLUTION
