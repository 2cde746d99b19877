"""ZeRO stage 1: AdamW whose state is split over the ranks (Rajbhandari et al. 2020, *ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models*, arXiv:1910.02054).

Under plain data parallelism every rank keeps the whole optimizer state: for AdamW two fp32
numbers per parameter (``exp_avg`` and ``exp_avg_sq``), twice the model itself. Yet every rank
computes the same update. ZeRO-1 has each of the N ranks update only a 1/N **shard** of the
(flattened) parameters, so it needs the state of that shard only, then shares the updated
shard with the others:

1. reduce-scatter the gradients: rank r receives the sum over the ranks of its shard only
   (half the traffic of an all-reduce), divided by N to average;
2. AdamW on the shard, with the shard's state;
3. all-gather the updated shards, so that every rank holds the whole new parameters.

Steps 1 and 3 together send what one all-reduce sends, so ZeRO-1 costs data parallelism nothing
in communication while it divides the optimizer's memory by N. ``torch.distributed.optim.
ZeroRedundancyOptimizer`` does the same with whole parameters (not a flat split) assigned to
ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


class ShardedAdamW:
    """AdamW (``torch.optim.AdamW``'s update, decoupled weight decay) with ZeRO-1 sharded state.

    The parameters that train (``requires_grad``; a tied one once) are viewed as one flat vector
    of ``numel`` numbers, in the given order, padded with zeros to ``shard_size * world_size``
    where ``shard_size = ceil(numel / world_size)``. Rank r owns the numbers
    ``[r * shard_size, (r + 1) * shard_size)`` of it and keeps ``exp_avg`` and ``exp_avg_sq``
    for them only: fp32 tensors of ``shard_size`` numbers each, created zero in ``__init__``.

    :meth:`step` reads each parameter's ``.grad`` (this rank's own gradient: do NOT all-reduce
    it first; a ``None`` gradient counts as zeros), and:

    1. flattens the gradients (padded) and reduce-scatters them (``dist.reduce_scatter`` of the
       ``world_size`` equal pieces, a sum), then divides the shard by ``world_size``: the
       average gradient of this rank's shard;
    2. applies AdamW to the shard of the parameters: ``p -= lr * weight_decay * p``, then the
       moments ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2`` and
       ``p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)`` at step t (from 1);
    3. all-gathers the updated shards (``dist.all_gather`` into the ``world_size`` pieces of a
       flat buffer) and copies them back into the parameters, so that every rank ends the step
       with the same, whole, updated parameters.

    Needs an initialized process group (world size 1 works, and then equals
    ``torch.optim.AdamW``). The state is this rank's only: :meth:`state_bytes`.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        unique: dict[int, nn.Parameter] = {}
        for p in params:
            if p.requires_grad:
                unique.setdefault(id(p), p)
        self.params = list(unique.values())
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.numel = sum(p.numel() for p in self.params)
        self.step_count = 0
        # BEGIN SOLUTION
        self.shard_size = math.ceil(self.numel / self.world_size)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.exp_avg = torch.zeros(self.shard_size, dtype=torch.float32, device=device)
        self.exp_avg_sq = torch.zeros(self.shard_size, dtype=torch.float32, device=device)
        # END SOLUTION

    def _flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """``tensors`` flattened into one fp32 vector, zero-padded to shard_size * world_size."""
        padding = self.shard_size * self.world_size - self.numel
        flat = [t.detach().reshape(-1).float() for t in tensors]
        return torch.cat([*flat, flat[0].new_zeros(padding)])

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW step, ZeRO-1 style: reduce-scatter, update of this rank's shard,
        all-gather (see the class docstring)."""
        if not self.params:
            return
        self.step_count += 1
        t = self.step_count
        beta1, beta2 = self.betas
        # BEGIN SOLUTION
        grads = self._flat(
            [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        )
        grad = torch.empty(self.shard_size, dtype=torch.float32, device=grads.device)
        dist.reduce_scatter(grad, list(grads.chunk(self.world_size)))
        grad /= self.world_size

        flat = self._flat(self.params)  # (shard_size * world_size,)
        start = self.rank * self.shard_size
        shard = flat[start : start + self.shard_size].clone()
        shard -= self.lr * self.weight_decay * shard
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = self.exp_avg / (1 - beta1**t)
        v_hat = self.exp_avg_sq / (1 - beta2**t)
        shard -= self.lr * m_hat / (v_hat.sqrt() + self.eps)

        dist.all_gather(list(flat.chunk(self.world_size)), shard)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
        # END SOLUTION

    def zero_grad(self) -> None:
        """Set every parameter's gradient to None (as ``optimizer.zero_grad()`` does)."""
        for p in self.params:
            p.grad = None

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds: its ``exp_avg`` and ``exp_avg_sq``, that is
        2 * 4 * ceil(numel / world_size) for fp32."""
        # BEGIN SOLUTION
        return sum(t.numel() * t.element_size() for t in (self.exp_avg, self.exp_avg_sq))
        # END SOLUTION
