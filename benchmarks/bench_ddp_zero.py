"""Chapter 6 on this machine: time per step and optimizer memory per rank, one process against
2 ranks with hand-written DDP, torch's DistributedDataParallel, and ZeRO-1.

    python benchmarks/bench_ddp_zero.py [--tree solutions|exercises|PATH] [--steps 30]

The model is the GPT chapter 3's end-to-end stage trains (grader/tasks/ch3.py: its vocabulary,
block size and shape), the global batch is that stage's (32 sequences), split in two halves for
2 ranks. Every rank runs on one thread (grader/ranks.py), and so does the one-process baseline
at ``--threads 1``, so the comparison is one core against two. Times are median milliseconds per
step after 3 warm-up steps; the state is the optimizer's tensors on one rank (AdamW's exp_avg and
exp_avg_sq; its step counters are left out), and the closed form of ZeRO-1 is
2 * 4 * ceil(numel / world_size) bytes.
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
import torch._dynamo  # noqa: E402, F401 -- DistributedDataParallel imports it: once, before forking
from torch.distributed.optim import ZeroRedundancyOptimizer  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from grader.ranks import run_ranks  # noqa: E402
from grader.tasks import ch3 as task  # noqa: E402
from grader.tree import ENV_VAR, load  # noqa: E402

WARMUP = 3


def build():
    gpt = load("ch3.gpt")
    vocab = len(set(task.corpus_text()))
    config = gpt.GPTConfig(vocab_size=vocab, block_size=task.BLOCK_SIZE, **task.MODEL)
    torch.manual_seed(0)
    return gpt.GPT(config)


def batch(world_size: int, rank: int):
    model_vocab = len(set(task.corpus_text()))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, model_vocab, (task.BATCH_SIZE, task.BLOCK_SIZE), generator=g)
    y = torch.randint(0, model_vocab, (task.BATCH_SIZE, task.BLOCK_SIZE), generator=g)
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for name, t in state.items()
        if name in ("exp_avg", "exp_avg_sq")
    )


def timed(step, steps: int) -> float:
    times = []
    for i in range(WARMUP + steps):
        start = time.perf_counter()
        step()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def one_process(steps: int) -> dict:
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batch(1, 0)

    def step():
        model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad()

    ms = timed(step, steps)
    return {"ms": ms, "state": state_bytes(optimizer), "numel": model.num_parameters()}


def ranked(rank: int, world_size: int, kind: str, steps: int) -> dict:
    ddp, zero = load("ch6.ddp"), load("ch6.zero")
    model = build()
    x, y = batch(world_size, rank)
    if kind == "ours":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ddp.broadcast_parameters(model)
        ms = timed(lambda: ddp.train_step(model, optimizer, x, y), steps)
        return {"ms": ms, "state": state_bytes(optimizer)}
    if kind == "zero":
        optimizer = zero.ShardedAdamW(model.parameters(), lr=1e-3)

        def step():
            model(x, y)[1].backward()
            optimizer.step()
            optimizer.zero_grad()

        return {"ms": timed(step, steps), "state": optimizer.state_bytes()}
    wrapped = DistributedDataParallel(model)
    if kind == "torch_zero":
        optimizer = ZeroRedundancyOptimizer(
            wrapped.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3
        )
    else:
        optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)

    def torch_step():
        wrapped(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad()

    ms = timed(torch_step, steps)
    inner = optimizer.optim if kind == "torch_zero" else optimizer
    return {"ms": ms, "state": state_bytes(inner)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default="solutions")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="of the one-process baseline")
    args = parser.parse_args(argv)
    os.environ[ENV_VAR] = args.tree
    torch.set_num_threads(args.threads)
    load_avg = (
        Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    )
    base = one_process(args.steps)
    numel = base["numel"]
    print(
        f"chapter 3's e2e GPT: {numel:,} parameters, global batch {task.BATCH_SIZE} x "
        f"{task.BLOCK_SIZE}; load average {' '.join(load_avg)}"
    )
    print(f"{'run':<44} {'ms/step':>8} {'optimizer state per rank':>26}")
    print(
        f"{f'1 process, AdamW ({args.threads} thread)':<44} {base['ms']:8.1f} {base['state']:>20,} B"
    )
    rows = (
        ("ours", "2 ranks, ch6 ddp.train_step + AdamW"),
        ("torch", "2 ranks, DistributedDataParallel + AdamW"),
        ("zero", "2 ranks, ch6 ShardedAdamW (ZeRO-1)"),
        ("torch_zero", "2 ranks, DDP + ZeroRedundancyOptimizer"),
    )
    for kind, label in rows:
        results = run_ranks(ranked, 2, kind, args.steps, timeout=600)
        ms = max(r["ms"] for r in results)
        states = ", ".join(f"{r['state']:,}" for r in results)
        print(f"{label:<44} {ms:8.1f} {states:>22} B")
    print(
        f"ZeRO-1 closed form: 2 * 4 * ceil({numel:,} / 2) = {2 * 4 * -(-numel // 2):,} B per rank"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
