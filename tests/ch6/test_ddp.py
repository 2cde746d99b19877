"""Stage 'ddp': broadcast_parameters gives every rank rank 0's weights and buffers (the ranks
start from different ones), all_reduce_gradients averages (not sums) the gradients of chapter 3's
GPT with its tied weights, in one all_reduce per bucket, and keeps a parameter that no rank used
without a gradient; 2 ranks training on halves of a batch end with the parameters of one process
on the whole batch and of torch's DistributedDataParallel; ShardedSampler gives the indices of
torch's DistributedSampler, a new order per epoch, and resumes mid-epoch."""

from __future__ import annotations

import torch
import torch._dynamo  # noqa: F401 -- DistributedDataParallel() imports it: once here, not per rank
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from grader.ranks import run_ranks
from grader.tree import load
from tests.ch6.toy import batch, flat, tiny_gpt
from tests.helpers import (
    Mistake,
    check_close,
    check_equal,
    check_raises,
    fail_if_mistake,
    fill_parameters,
)

ddp = load("ch6.ddp")

BROADCAST = "ch6/ddp.py, broadcast_parameters"
REDUCE = "ch6/ddp.py, all_reduce_gradients"
STEP = "ch6/ddp.py, train_step"
SAMPLER = "ch6/ddp.py, ShardedSampler"
RANK_LIMIT = 20.0  # seconds a rank may take here (run_ranks); the stage's test_timeout is 60
TINY = 1e-9  # bucket_mb so small that every parameter gets a bucket of its own
STEPS, LR = 3, 1e-3
WORLD = 2


def with_buffers(seed: int) -> nn.Module:
    """A Linear and a BatchNorm, whose running statistics are buffers, not parameters."""
    model = fill_parameters(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    model[1].running_mean.copy_(torch.randn(4, generator=generator))
    model[1].running_var.copy_(torch.rand(4, generator=generator) + 0.5)
    return model


class Branchy(nn.Module):
    """``a`` always trains, ``b`` only where the caller says so, ``unused`` never."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.unused = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        y = self.a(x) + (self.b(x) if use_b else 0.0)
        return y.pow(2).mean()


def my_half(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.chunk(WORLD)[rank]


def grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def counting_all_reduce(calls: list[int]):
    """dist.all_reduce, counting its calls in ``calls``."""
    original = dist.all_reduce

    def all_reduce(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    return original, all_reduce


# -- in the ranks ------------------------------------------------------------------------------
def broadcasts(rank: int, world_size: int) -> dict:
    """Rank r starts from weights of seed r: after broadcast_parameters, everyone has rank 0's."""
    model, other = tiny_gpt(seed=rank), with_buffers(seed=rank)
    ddp.broadcast_parameters(model)
    ddp.broadcast_parameters(other)
    return {
        "gpt": flat(model.parameters()),
        "parameters": flat(other.parameters()),
        "buffers": flat(other.buffers()),
    }


def averages(rank: int, world_size: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The GPT's gradients on this rank's half, averaged with one bucket per parameter and with
    the default buckets, the all_reduce calls counted; and Branchy, b used on rank 0 only."""
    out: dict = {}
    for name, bucket_mb in (("tiny", TINY), ("default", 25.0)):
        model = tiny_gpt(seed=0)
        model(my_half(x, rank), my_half(y, rank))[1].backward()
        calls: list[int] = []
        original, counted = counting_all_reduce(calls)
        dist.all_reduce = counted
        try:
            ddp.all_reduce_gradients(model, bucket_mb=bucket_mb)
        finally:
            dist.all_reduce = original
        out[name] = grads(model)
        out[f"{name}_calls"] = len(calls)
    branchy = fill_parameters(Branchy())
    branchy(torch.full((5, 3), float(rank + 1)), use_b=rank == 0).backward()
    ddp.all_reduce_gradients(branchy, bucket_mb=TINY)
    out["branchy"] = grads(branchy)
    return out


def trains(rank: int, world_size: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """STEPS train_steps from rank-specific weights after broadcast_parameters; then the same
    with torch's DistributedDataParallel (the oracle, on the same halves)."""
    model = tiny_gpt(seed=rank)
    ddp.broadcast_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    xs, ys = my_half(x, rank), my_half(y, rank)
    losses = [ddp.train_step(model, optimizer, xs, ys) for _ in range(STEPS)]
    theirs = DistributedDataParallel(tiny_gpt(seed=0))
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=LR, weight_decay=0.1)
    for _ in range(STEPS):
        theirs(xs, ys)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    return {
        "losses": torch.tensor(losses, dtype=torch.float64),
        "parameters": flat(model.parameters()),
        "ddp": flat(theirs.module.parameters()),
    }


# -- in the test process ---------------------------------------------------------------------
def test_broadcast_parameters_synchronises_the_initial_model():
    """Ranks that built their model from different random states all hold rank 0's parameters
    and buffers after broadcast_parameters."""
    results = run_ranks(broadcasts, WORLD, timeout=RANK_LIMIT)
    expected_gpt = flat(tiny_gpt(seed=0).parameters())
    reference = with_buffers(seed=0)
    for rank, got in enumerate(results):
        own = flat(tiny_gpt(seed=rank).parameters())
        check_close(
            got["gpt"],
            expected_gpt,
            f"the GPT's parameters on rank {rank} after broadcast_parameters",
            BROADCAST,
            mistakes=[
                Mistake(
                    f"rank {rank}'s own initial parameters (an unsynchronised initial model)",
                    "dist.broadcast every parameter from src to every rank, in place",
                    own,
                )
            ],
        )
        check_close(
            got["parameters"],
            flat(reference.parameters()),
            f"a Linear+BatchNorm's parameters on rank {rank}",
            BROADCAST,
        )
        check_close(
            got["buffers"],
            flat(reference.buffers()),
            f"the BatchNorm's buffers (running statistics) on rank {rank}",
            BROADCAST,
            mistakes=[
                Mistake(
                    f"rank {rank}'s own buffers",
                    "broadcast model.buffers() too, not only the parameters",
                    flat(with_buffers(seed=rank).buffers()),
                )
            ],
        )


def test_all_reduce_gradients_averages_in_buckets():
    """After backward on each rank's half of a batch, all_reduce_gradients leaves the gradient
    of the whole batch (the average, not the sum) in every parameter of the GPT (its tied wte and
    lm_head once), with one all_reduce per bucket: one per parameter for a tiny bucket_mb, one in
    all with the default 25 MB."""
    x, y = batch(3)
    results = run_ranks(averages, WORLD, x, y, timeout=RANK_LIMIT)
    model = tiny_gpt(seed=0)
    model(x, y)[1].backward()
    expected = flat(grads(model))
    halves = []
    for rank in range(WORLD):
        half = tiny_gpt(seed=0)
        half(my_half(x, rank), my_half(y, rank))[1].backward()
        halves.append(flat(grads(half)))
    n_params = len(list(model.parameters()))
    for rank, got in enumerate(results):
        for name in ("tiny", "default"):
            if any(g is None for g in got[name]):
                check_equal(
                    [g is None for g in got[name]],
                    [False] * n_params,
                    f"which GPT parameters lack a gradient on rank {rank}",
                    REDUCE,
                )
            check_close(
                flat(got[name]),
                expected,
                f"the gradients on rank {rank} after all_reduce_gradients (bucket_mb="
                f"{TINY if name == 'tiny' else 25.0:g})",
                REDUCE,
                atol=1e-6,
                mistakes=[
                    Mistake(
                        "the sum over the ranks, not the average",
                        "divide the all-reduced buffer by the world size",
                        WORLD * expected,
                    ),
                    Mistake(
                        "this rank's own gradients",
                        "all_reduce every bucket and copy it back into p.grad",
                        halves[rank],
                    ),
                ],
            )
        calls = {"tiny": got["tiny_calls"], "default": got["default_calls"]}
        if calls != {"tiny": n_params, "default": 1}:
            fail_if_mistake(
                calls,
                [
                    Mistake(
                        "one all_reduce per parameter whatever the bucket size",
                        "flatten the gradients of a whole bucket into one buffer",
                        {"tiny": n_params, "default": n_params},
                    ),
                    Mistake(
                        "the tied wte and lm_head weight reduced twice",
                        "take model.parameters(), which yields a shared parameter once",
                        {"tiny": n_params + 1, "default": 1},
                    ),
                ],
                f"the number of all_reduce calls on rank {rank}",
                REDUCE,
            )
        check_equal(
            calls,
            {"tiny": n_params, "default": 1},
            f"the number of dist.all_reduce calls on rank {rank} (gradient_buckets gives "
            f"{n_params} buckets for a tiny bucket_mb, 1 for 25 MB)",
            REDUCE,
        )


def test_a_parameter_used_on_one_rank_only():
    """A parameter with a gradient on rank 0 only gets half of it everywhere; one that no rank
    used keeps grad None; both ranks make the same all_reduce calls."""
    results = run_ranks(averages, WORLD, *batch(3), timeout=RANK_LIMIT)
    expected: list[torch.Tensor | None] = []
    for rank in range(WORLD):
        branchy = fill_parameters(Branchy())
        branchy(torch.full((5, 3), float(rank + 1)), use_b=rank == 0).backward()
        mine = grads(branchy)
        expected = (
            mine
            if not expected
            else [
                None
                if a is None and b is None
                else (0 if a is None else a) + (0 if b is None else b)
                for a, b in zip(expected, mine, strict=True)
            ]
        )
    expected = [None if g is None else g / WORLD for g in expected]
    names = [name for name, _ in Branchy().named_parameters()]
    for rank, got in enumerate(results):
        check_equal(
            [g is None for g in got["branchy"]],
            [g is None for g in expected],
            f"which parameters of {names} have grad None on rank {rank} (only 'unused' should)",
            REDUCE,
        )
        check_close(
            flat(g for g in got["branchy"] if g is not None),
            flat(g for g in expected if g is not None),
            f"the averaged gradients on rank {rank} when b has a gradient on rank 0 only",
            REDUCE,
            atol=1e-6,
            hint="a rank without a gradient for a parameter contributes zeros to the average",
        )


def test_training_on_halves_equals_one_process_and_ddp():
    """2 ranks that start from different weights, broadcast, and take 3 train_steps (AdamW) on
    halves of a batch end with the parameters of one process on the whole batch and of
    DistributedDataParallel, to 1e-6; train_step returns the whole batch's loss."""
    x, y = batch(3)
    results = run_ranks(trains, WORLD, x, y, timeout=RANK_LIMIT)
    model = tiny_gpt(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    losses = []
    for _ in range(STEPS):
        _, loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    expected = flat(model.parameters())
    for rank, got in enumerate(results):
        check_close(
            got["losses"],
            torch.tensor(losses, dtype=torch.float64),
            f"the losses train_step returned on rank {rank} (the average over the ranks)",
            STEP,
            atol=1e-6,
        )
        check_close(
            got["parameters"],
            expected,
            f"the GPT's parameters on rank {rank} after {STEPS} train_steps",
            STEP,
            atol=1e-6,
            rtol=1e-5,
        )
        check_close(
            got["parameters"],
            got["ddp"],
            f"the GPT's parameters on rank {rank} against DistributedDataParallel's",
            STEP,
            atol=1e-6,
            rtol=1e-5,
        )


def _torch_indices(n, rank, world_size, epoch, **options) -> list[int]:
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, **options)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_gives_distributed_samplers_indices():
    """ShardedSampler yields torch's DistributedSampler's indices (shuffled or not, padded or
    drop_last, n dividing or not), its length too; each epoch's parts are disjoint (but for the
    padding) and together the whole epoch."""
    for n, world_size in ((10, 2), (11, 3), (7, 4), (3, 5)):
        for shuffle in (True, False):
            for drop_last in (False, True):
                options = {"shuffle": shuffle, "seed": 5, "drop_last": drop_last}
                parts = []
                for rank in range(world_size):
                    sampler = ddp.ShardedSampler(n, rank, world_size, **options)
                    got = list(sampler)
                    expected = _torch_indices(n, rank, world_size, 0, **options)
                    what = (
                        f"ShardedSampler(n={n}, rank={rank}, world_size={world_size}, "
                        f"shuffle={shuffle}, drop_last={drop_last})'s indices"
                    )
                    check_equal(got, expected, what, SAMPLER)
                    check_equal(len(sampler), len(expected), f"len({what[:-10]})", SAMPLER)
                    parts.append(got)
                everything = sorted(i for part in parts for i in part)
                if not drop_last:
                    everything = sorted(set(everything))
                check_equal(
                    everything == list(range(n)) or drop_last,
                    True,
                    f"the ranks' parts together (n={n}, world_size={world_size}) cover the epoch",
                    SAMPLER,
                )
    with check_raises(ValueError, "ShardedSampler(10, rank=2, world_size=2)", SAMPLER):
        ddp.ShardedSampler(10, 2, 2)


def test_set_epoch_changes_the_order():
    """Each epoch has its own order (seed + epoch), the one DistributedSampler gives."""
    sampler = ddp.ShardedSampler(20, 1, 2, seed=3)
    first = list(sampler)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        got = list(sampler)
        expected = _torch_indices(20, 1, 2, epoch, seed=3)
        if got != expected:
            fail_if_mistake(
                got,
                [
                    Mistake(
                        "epoch 0's order again (a sampler without set_epoch)",
                        "store the epoch in set_epoch and seed the shuffle with seed + epoch",
                        first,
                    )
                ],
                f"the order of epoch {epoch}",
                SAMPLER,
            )
        check_equal(got, expected, f"rank 1's indices in epoch {epoch}", SAMPLER)


def test_sampler_resumes_mid_epoch():
    """A sampler given another's state_dict after 4 indices of epoch 2 yields the other 6: the
    two runs together read the epoch exactly once."""
    sampler = ddp.ShardedSampler(20, 0, 2, seed=1)
    sampler.set_epoch(2)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(4)]
    state = sampler.state_dict()
    resumed = ddp.ShardedSampler(20, 0, 2, seed=1)
    resumed.load_state_dict(state)
    tail = list(resumed)
    expected = _torch_indices(20, 0, 2, 2, seed=1)
    check_equal(head + tail, expected, "the indices read before and after resuming", SAMPLER)
    check_equal(list(resumed), expected, "a full pass of the resumed sampler afterwards", SAMPLER)
