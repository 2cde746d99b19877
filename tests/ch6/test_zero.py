"""Stage 'zero': ShardedAdamW equals torch.optim.AdamW on one rank; on 2 ranks, each stepping
with the gradient of its half of a batch, it equals one process running AdamW on the whole batch
(after 1 step and after 3) and torch's ZeroRedundancyOptimizer(AdamW) under DDP, while each rank
keeps AdamW's state for half of the numbers: 2 * 4 * ceil(numel / world_size) bytes."""

from __future__ import annotations

import math

import torch
import torch._dynamo  # noqa: F401 -- DistributedDataParallel() imports it: once here, not per rank
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from grader.ranks import run_ranks
from grader.tree import load
from tests.ch6.toy import batch, flat, tiny_gpt
from tests.helpers import Mistake, check_close, check_equal, fail_if_mistake

zero = load("ch6.zero")

INIT = "ch6/zero.py, ShardedAdamW.__init__"
STEP = "ch6/zero.py, ShardedAdamW.step"
BYTES = "ch6/zero.py, ShardedAdamW.state_bytes"
RANK_LIMIT = 20.0  # seconds a rank may take here (run_ranks); the stage's test_timeout is 60
STEPS, WORLD = 3, 2
# eps larger than most gradients: AdamW's first step is then about lr * g / eps, so a gradient
# twice too large (summed over 2 ranks, not averaged) moves the parameters twice as far.
HYPER = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-3, "weight_decay": 0.1}


def train(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad()


def adamw_reference(x: torch.Tensor, y: torch.Tensor, steps: int, scale: float = 1.0):
    """One process, torch.optim.AdamW, the whole batch (its loss times ``scale``)."""
    model = tiny_gpt()
    optimizer = torch.optim.AdamW(model.parameters(), **HYPER)
    for _ in range(steps):
        (scale * model(x, y)[1]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return flat(model.parameters())


# -- in the ranks ------------------------------------------------------------------------------
def sharded(rank: int, world_size: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """ShardedAdamW on this rank's part of the batch: parameters after 1 step and after STEPS,
    its state bytes; with more than one rank, ZeroRedundancyOptimizer(AdamW) under DDP too."""
    xs, ys = x.chunk(world_size)[rank], y.chunk(world_size)[rank]
    out = {}
    for steps in (1, STEPS):
        model = tiny_gpt()
        optimizer = zero.ShardedAdamW(model.parameters(), **HYPER)
        train(model, optimizer, xs, ys, steps)
        out[steps] = flat(model.parameters())
    out["state_bytes"] = optimizer.state_bytes()
    if world_size > 1:
        theirs = DistributedDataParallel(tiny_gpt())
        optimizer = ZeroRedundancyOptimizer(
            theirs.parameters(), optimizer_class=torch.optim.AdamW, **HYPER
        )
        train(theirs, optimizer, xs, ys, STEPS)
        out["zero_redundancy"] = flat(theirs.module.parameters())
    return out


# -- in the test process ---------------------------------------------------------------------
def test_one_rank_equals_adamw():
    """On a group of one, ShardedAdamW is torch.optim.AdamW: the same parameters after 1 and 3
    steps, and the state of every number (2 * 4 bytes each)."""
    x, y = batch(4)
    (got,) = run_ranks(sharded, 1, x, y, timeout=RANK_LIMIT)
    for steps in (1, STEPS):
        check_close(
            got[steps],
            adamw_reference(x, y, steps),
            f"the parameters after {steps} ShardedAdamW step(s) on one rank, against AdamW",
            STEP,
            atol=1e-6,
            rtol=1e-5,
            hint="the update is AdamW's: decay p by lr * weight_decay first, then the bias-"
            "corrected moments, eps added to sqrt(v_hat)",
        )
    numel = sum(p.numel() for p in tiny_gpt().parameters())
    check_equal(got["state_bytes"], 2 * 4 * numel, "state_bytes() on one rank", BYTES)


def test_two_ranks_equal_adamw_on_the_whole_batch():
    """On 2 ranks, each with the gradient of its half of the batch, ShardedAdamW gives the
    parameters of one process running AdamW on the whole batch, after 1 step and after 3."""
    x, y = batch(4)
    results = run_ranks(sharded, WORLD, x, y, timeout=RANK_LIMIT)
    start = flat(tiny_gpt().parameters())
    one_step = adamw_reference(x, y, 1)
    numel = start.numel()
    shard_size = math.ceil(numel / WORLD)
    for rank, got in enumerate(results):
        only_mine = start.clone()
        mine = slice(rank * shard_size, min((rank + 1) * shard_size, numel))
        only_mine[mine] = one_step[mine]
        check_close(
            got[1],
            one_step,
            f"the parameters on rank {rank} after one ShardedAdamW step",
            STEP,
            atol=1e-6,
            rtol=1e-5,
            mistakes=[
                Mistake(
                    "the update of the gradients summed over the ranks, not averaged",
                    "divide the reduce-scattered gradient by world_size",
                    adamw_reference(x, y, 1, scale=WORLD),
                ),
                Mistake(
                    "parameters where only this rank's shard moved",
                    "all-gather the updated shards into every rank's parameters",
                    only_mine,
                ),
            ],
        )
        check_close(
            got[STEPS],
            adamw_reference(x, y, STEPS),
            f"the parameters on rank {rank} after {STEPS} ShardedAdamW steps",
            STEP,
            atol=1e-6,
            rtol=1e-5,
        )


def test_two_ranks_equal_zero_redundancy_optimizer_with_half_the_state():
    """On 2 ranks, ShardedAdamW's parameters after 3 steps are ZeroRedundancyOptimizer's (AdamW,
    under DDP), and each rank holds 2 * 4 * ceil(numel / 2) bytes of state."""
    x, y = batch(4)
    results = run_ranks(sharded, WORLD, x, y, timeout=RANK_LIMIT)
    numel = sum(p.numel() for p in tiny_gpt().parameters())
    for rank, got in enumerate(results):
        check_close(
            got[STEPS],
            got["zero_redundancy"],
            f"the parameters on rank {rank} after {STEPS} steps, against "
            f"ZeroRedundancyOptimizer(AdamW)",
            STEP,
            atol=1e-6,
            rtol=1e-5,
        )
        expected = 2 * 4 * math.ceil(numel / WORLD)
        if got["state_bytes"] != expected:
            fail_if_mistake(
                got["state_bytes"],
                [
                    Mistake(
                        "the state of every parameter (2 * 4 * numel bytes), not of this "
                        "rank's shard",
                        "keep exp_avg and exp_avg_sq for the ceil(numel / world_size) numbers of "
                        "this rank's shard only",
                        2 * 4 * numel,
                    )
                ],
                f"state_bytes() on rank {rank}",
                BYTES,
            )
        check_equal(got["state_bytes"], expected, f"state_bytes() on rank {rank} of 2", BYTES)
