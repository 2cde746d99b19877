"""Chapter 6's three ways to train on 2 ranks, side by side: what each rank stores (parameter,
gradient and AdamW-state bytes) and the time per step, against one process.

    python benchmarks/bench_ch6.py [--tree solutions|exercises|PATH] [--steps 20] [--world-size 2]

The model is the GPT of chapter 3's end-to-end stage (grader/tasks/ch3.py: its vocabulary, block
size and shape; 103,936 parameters), the global batch that stage's 32 sequences, split evenly over
the ranks. DDP is the tree's ``ddp.train_step`` with ``torch.optim.AdamW``; ZeRO-1 the tree's
``zero.ShardedAdamW`` (the averaged gradient is reduce-scattered, the parameters all-gathered);
FSDP the tree's ``fsdp.shard_model`` with AdamW on the sharded parameters. Every rank runs on one
thread (grader/ranks.py), so is the one-process baseline, so on this 2-core machine 2 ranks are 2
cores against 1. Times: median milliseconds per step after 3 warm-up steps. Bytes: this rank's
tensors after a step (``to_local()`` of a sharded one), AdamW's ``exp_avg`` and ``exp_avg_sq``
(not its step counters).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401 -- an optimizer's first use imports it: once, before forking
import torch.distributed as dist  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from grader.ranks import run_ranks  # noqa: E402
from grader.tasks import ch3 as task  # noqa: E402
from grader.tree import ENV_VAR, load  # noqa: E402

WARMUP = 3
STRATEGIES = ("one process", "DDP", "ZeRO-1", "FSDP")


def build() -> torch.nn.Module:
    gpt = load("ch3.gpt")
    config = gpt.GPTConfig(
        vocab_size=len(set(task.corpus_text())), block_size=task.BLOCK_SIZE, **task.MODEL
    )
    torch.manual_seed(0)
    return gpt.GPT(config)


def batch(rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = len(set(task.corpus_text()))
    g = torch.Generator().manual_seed(1)
    shape = (task.BATCH_SIZE, task.BLOCK_SIZE)
    x, y = torch.randint(vocab, shape, generator=g), torch.randint(vocab, shape, generator=g)
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def adamw_state(optimizer: torch.optim.Optimizer) -> int:
    return local_bytes(
        t for s in optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")
    )


def run(rank: int, world_size: int, strategy: str, steps: int) -> dict:
    ddp, zero, fsdp = load("ch6.ddp"), load("ch6.zero"), load("ch6.fsdp")
    model = build()
    x, y = batch(rank, world_size)
    if strategy == "FSDP":
        fsdp.shard_model(model)
    if strategy == "ZeRO-1":
        optimizer = zero.ShardedAdamW(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        if strategy == "DDP":
            _, loss = model(x, y)
            loss.backward()
            ddp.all_reduce_gradients(model)
            optimizer.step()  # zero_grad after measuring the gradients' bytes
        else:  # one process, ZeRO-1 (reduce-scatter in step) and FSDP (in backward)
            _, loss = model(x, y)
            loss.backward()
            optimizer.step()

    times = []
    for i in range(WARMUP + steps):
        optimizer.zero_grad()  # ShardedAdamW's sets the gradients to None too
        if world_size > 1:
            dist.barrier()
        start = time.perf_counter()
        step()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    state = optimizer.state_bytes() if strategy == "ZeRO-1" else adamw_state(optimizer)
    return {
        "ms": 1000 * statistics.median(times),
        "parameters": local_bytes(model.parameters()),
        "gradients": local_bytes(p.grad for p in model.parameters() if p.grad is not None),
        "optimizer": state,
    }


def measure(world_size: int, steps: int) -> dict[str, dict]:
    results = {"one process": run_ranks(run, 1, "one process", steps, timeout=600)[0]}
    for strategy in STRATEGIES[1:]:
        results[strategy] = run_ranks(run, world_size, strategy, steps, timeout=600)[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default="solutions", help="solutions, exercises or a path")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per strategy")
    parser.add_argument("--world-size", type=int, default=2, help="ranks (on CPU: gloo)")
    args = parser.parse_args()
    os.environ[ENV_VAR] = args.tree
    n = sum(p.numel() for p in build().parameters())
    print(
        f"GPT of {n:,} parameters, global batch {task.BATCH_SIZE} x {task.BLOCK_SIZE}, "
        f"{args.world_size} ranks, 1 thread each; load average {open('/proc/loadavg').read()[:14]}"
    )
    results = measure(args.world_size, args.steps)
    print(
        f"{'':12} {'params B':>10} {'grads B':>10} {'AdamW B':>10} {'total B':>10} {'ms/step':>8}"
    )
    for name, r in results.items():
        total = r["parameters"] + r["gradients"] + r["optimizer"]
        print(
            f"{name:12} {r['parameters']:>10,} {r['gradients']:>10,} {r['optimizer']:>10,} "
            f"{total:>10,} {r['ms']:>8.1f}"
        )


if __name__ == "__main__":
    main()
