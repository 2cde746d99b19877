"""Data parallelism by hand: the same model on every rank, a different slice of each batch.

Every rank holds a full copy of the model and of the optimizer. A step is: forward and backward
on the rank's own part of the global batch, then **average the gradients over the ranks**, then
the same optimizer step everywhere. Averaged gradients are the gradient of the whole batch's mean
loss (when the parts are the same size), so N ranks on a batch of B compute exactly what one
process computes on B, and the copies stay identical as long as they started identical: hence
:func:`broadcast_parameters` before the first step.

This is what ``torch.nn.parallel.DistributedDataParallel`` does (Li et al. 2020, *PyTorch
Distributed: Experiences on Accelerating Data Parallel Training*, arXiv:2006.15704), minus its
overlap of communication with the backward pass: it too packs gradients into ~25 MB buckets,
because one all-reduce of a large flat buffer costs far less than hundreds of small ones.
:class:`ShardedSampler` gives every rank its own part of each epoch, like
``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

MB = 2**20  # bytes in the bucket_mb of all_reduce_gradients


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``model``, in place
    (``dist.broadcast`` of each tensor, in ``model.parameters()`` then ``model.buffers()`` order,
    the same on every rank). Call it once, after building the model and before the first step:
    models initialised from different random states would otherwise train apart."""
    # BEGIN SOLUTION
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src)
    # END SOLUTION


def gradient_buckets(model: nn.Module, bucket_mb: float = 25.0) -> list[list[nn.Parameter]]:
    """The parameters of ``model`` that train (``requires_grad``), in ``model.parameters()``
    order (a tied weight once), cut into consecutive buckets: a bucket takes the next parameter
    while its parameters' bytes stay within ``bucket_mb`` MB (2**20 bytes); a parameter larger
    than that gets a bucket of its own. It depends on the model only, never on the gradients, so
    every rank gets the same buckets."""
    limit = bucket_mb * MB
    buckets: list[list[nn.Parameter]] = []
    size = 0.0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        nbytes = p.numel() * p.element_size()
        if not buckets or size + nbytes > limit:
            buckets.append([])
            size = 0.0
        buckets[-1].append(p)
        size += nbytes
    return buckets


def all_reduce_gradients(model: nn.Module, bucket_mb: float = 25.0) -> None:
    """Replace every gradient of ``model`` by its average over the ranks, one ``dist.all_reduce``
    per bucket of :func:`gradient_buckets`.

    For each bucket, make one flat buffer: every parameter's gradient flattened (zeros where this
    rank has ``grad is None``), then one number per parameter, 1.0 if this rank has its gradient
    and 0.0 if not. ``dist.all_reduce`` it (a sum), divide the gradient part by the world size,
    and copy each slice back into ``p.grad`` (viewed as the parameter's shape). A parameter
    whose flag sums to 0 had no gradient on any rank: it keeps ``grad = None``, so that the
    optimizer skips it as it would in one process. Every rank makes the same all_reduce calls,
    in the same order, whatever its gradients: a collective that one rank skips (an "empty"
    bucket, say) waits forever on the others.
    """
    # BEGIN SOLUTION
    world_size = dist.get_world_size()
    for bucket in gradient_buckets(model, bucket_mb):
        grads = [
            p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in bucket
        ]
        flags = torch.tensor(
            [float(p.grad is not None) for p in bucket],
            dtype=grads[0].dtype,
            device=grads[0].device,
        )
        flat = torch.cat([*grads, flags])
        dist.all_reduce(flat)
        offset = 0
        for p, had in zip(bucket, flat[-len(bucket) :].tolist(), strict=True):
            n = p.numel()
            if had > 0:
                average = flat[offset : offset + n].view_as(p) / world_size
                if p.grad is None:
                    p.grad = average.clone()
                else:
                    p.grad.copy_(average)
            offset += n
    # END SOLUTION


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    """One data-parallel step on this rank's part ``(x, y)`` of the global batch: forward (the
    model returns ``(logits, loss)``), backward, :func:`all_reduce_gradients`,
    ``optimizer.step()``, ``optimizer.zero_grad()``. Returns the loss averaged over the ranks
    (one more all_reduce, of one number), for logging: with equal parts, the global batch's
    loss."""
    # BEGIN SOLUTION
    _, loss = model(x, y)
    loss.backward()
    all_reduce_gradients(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total = loss.detach().clone().reshape(1)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()
    # END SOLUTION


class ShardedSampler:
    """The indices of a dataset of ``n`` items that rank ``rank`` of ``world_size`` reads in one
    epoch, with ``torch.utils.data.DistributedSampler``'s semantics (same arguments, same
    indices), and resumable in the middle of an epoch.

    An epoch's order is ``torch.randperm(n, generator=g)`` with ``g`` seeded by ``seed +
    epoch`` when ``shuffle``, else ``range(n)``. Every rank gets ``len(self)`` indices:
    ``ceil(n / world_size)``, the order padded at its end with its own first indices (repeated if
    needed) so that all ranks get as many; with ``drop_last``, ``n // world_size`` and the tail
    dropped instead. Rank r takes every ``world_size``-th index of that list, starting at r
    (``order[r::world_size]``), so the ranks' parts are disjoint and, together, the whole epoch.

    Call :meth:`set_epoch` at the start of every epoch: without it each epoch repeats the first
    one's order. ``state_dict()`` (plain numbers) records the epoch and how many indices this
    rank's iterator has handed out; a sampler given it with ``load_state_dict`` continues from
    there, so a resumed run reads exactly the rest of the epoch.

    Raises:
        ValueError: if ``n`` < 0, ``world_size`` < 1 or ``rank`` is not in ``[0, world_size)``.
    """

    def __init__(
        self,
        n: int,
        rank: int,
        world_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if n < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"ShardedSampler needs n >= 0 and 0 <= rank < world_size, got n={n}, "
                f"rank={rank}, world_size={world_size}"
            )
        self.n, self.rank, self.world_size = n, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.position = 0  # indices of this epoch already handed out
        # BEGIN SOLUTION
        if drop_last:
            self.num_samples = n // world_size
        else:
            self.num_samples = math.ceil(n / world_size)
        # END SOLUTION

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: its own order, read from the beginning."""
        # BEGIN SOLUTION
        self.epoch = epoch
        self.position = 0
        # END SOLUTION

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, all of them, in order."""
        # BEGIN SOLUTION
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.world_size
        if total > len(order) and order:
            repeats = math.ceil((total - len(order)) / len(order))
            order += (order * repeats)[: total - len(order)]
        order = order[:total]
        return order[self.rank : total : self.world_size]
        # END SOLUTION

    def __iter__(self) -> Iterator[int]:
        """This rank's indices from ``position`` on, counting each one handed out; a finished
        pass starts the same epoch from the beginning next time."""
        # BEGIN SOLUTION
        indices = self.indices()
        while self.position < len(indices):
            index = indices[self.position]
            self.position += 1
            yield index
        self.position = 0
        # END SOLUTION

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch": ..., "position": ...}``: where this rank is in its epoch."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: its epoch, at its position."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
