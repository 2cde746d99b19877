"""Where a training step's time goes, ours and nanoGPT's side by side, in one process.

    python benchmarks/profile_vs_nanogpt.py --nanogpt PATH/TO/nanoGPT [--steps 30] [--threads 1]
        [--bias]

The same configuration as ``bench_vs_nanogpt.py`` (nanoGPT's CPU shakespeare_char run: batch 12,
block 64, 4 layers, 4 heads, 128 wide, vocabulary 65, dropout 0, no biases as nanoGPT's
``train.py`` default ``bias=False``; ``--bias`` gives ours GPT-2's), random token batches (the
data costs nothing next to a step: 0.3 ms). nanoGPT's ``model.py`` is imported from the checkout given, not copied.

Each side takes ``--steps`` training steps (forward, backward, clipping, its own AdamW:
nanoGPT's per-tensor AdamW on a CPU, ours fused), the sides alternating in three rounds so that
load hits both alike, each phase timed with ``time.perf_counter``. Then as many steps run
under ``torch.profiler`` (alternating too), and every operator of the forward and backward passes goes in a
bucket by its own time:

- matmul: the linear layers' products (``mm``, ``addmm``, ``bmm``);
- attention: ``scaled_dot_product_attention``'s kernels;
- GELU, LayerNorm, embedding + loss: their kernels;
- other: everything else (copies, adds, views, autograd's bookkeeping, Python between ops).

The last line gives the bound this puts on any speed-up that keeps the model's computation: if
everything but the products and attention cost nothing, a step would take only their time (their
share of the profiled passes times the timed passes: the profiler adds its own cost to every
operator, more to many small ones, so its milliseconds are compared with each other only).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import profile, record_function

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH, BLOCK, VOCAB = 12, 64, 65
BUCKETS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("scaled_dot_product",),
    "GELU": ("gelu",),
    "LayerNorm": ("layer_norm",),
    "embedding + loss": ("embedding", "nll_loss", "log_softmax", "cross_entropy"),
}


def bucket(name: str) -> str:
    for label, needles in BUCKETS.items():
        if any(n in name for n in needles):
            return label
    return "other"


def nanogpt_side(peer: Path):
    """nanoGPT's model and optimizer, from its own model.py."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", peer / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.GPTConfig(
        block_size=BLOCK, vocab_size=VOCAB, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
        bias=False,
    )  # fmt: skip
    model = module.GPT(config)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    return model, optimizer


def our_side(bias: bool):
    from solutions.ch3.gpt import GPT, GPTConfig
    from solutions.ch3.trainer import configure_optimizer

    model = GPT(GPTConfig(VOCAB, BLOCK, n_layer=4, n_head=4, n_embd=128, bias=bias))
    return model, configure_optimizer(model, 1e-3, 0.1, (0.9, 0.99))


PHASES = ("forward", "backward", "clip", "optimizer")


def step(model, optimizer, x, y, seconds: dict[str, float]) -> None:
    """One training step as both trainers take it, each phase timed into ``seconds`` and named
    for the profiler."""
    marks = [time.perf_counter()]
    with record_function("forward"):
        _, loss = model(x, y)  # each model's own cross-entropy
    marks.append(time.perf_counter())
    with record_function("backward"):
        loss.backward()
    marks.append(time.perf_counter())
    with record_function("clip"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    marks.append(time.perf_counter())
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())
    for phase, start, end in zip(PHASES, marks, marks[1:], strict=False):
        seconds[phase] += end - start


def phase_of(event) -> str | None:
    """The phase (``record_function`` range) an operator ran in."""
    while event is not None:
        if event.name in PHASES:
            return event.name
        event = event.cpu_parent
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of nanoGPT")
    parser.add_argument("--steps", type=int, default=30, help="steps per side, timed and profiled")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bias", action="store_true", help="ours with GPT-2's biases")
    args = parser.parse_args(argv)
    if not (args.nanogpt / "model.py").is_file():
        parser.error(f"--nanogpt {args.nanogpt}: no model.py there")
    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    sides = {"nanoGPT": nanogpt_side(args.nanogpt), "ours": our_side(args.bias)}
    x = torch.randint(VOCAB, (BATCH, BLOCK))
    y = torch.randint(VOCAB, (BATCH, BLOCK))
    seconds = {name: defaultdict(float) for name in sides}
    for model, optimizer in sides.values():
        for _ in range(5):  # warm-up: allocations, lazy imports
            step(model, optimizer, x, y, defaultdict(float))

    rounds, per_round = 3, max(1, args.steps // 3)
    for _ in range(rounds):  # timed without the profiler, the sides alternating
        for name, (model, optimizer) in sides.items():
            for _ in range(per_round):
                step(model, optimizer, x, y, seconds[name])
    kernels = {name: defaultdict(float) for name in sides}
    for _ in range(rounds):  # then where forward and backward go, alternating again
        for name, (model, optimizer) in sides.items():
            with profile() as prof:
                for _ in range(per_round):
                    step(model, optimizer, x, y, defaultdict(float))
            for event in prof.events():
                if phase_of(event) in ("forward", "backward"):
                    kernels[name][bucket(event.name)] += event.self_cpu_time_total / 1000

    n = rounds * per_round
    ms = {name: {k: v * 1000 / n for k, v in seconds[name].items()} for name in sides}
    total = {name: sum(ms[name].values()) for name in sides}
    print(f"ms per step, {n} steps each, {args.threads} thread(s), load {uptime()}:")
    print(f"{'':28}" + "".join(f"{name:>10}" for name in sides))
    for phase in PHASES:
        print(f"{phase:28}" + "".join(f"{ms[name][phase]:10.1f}" for name in sides))
    print(f"{'step':28}" + "".join(f"{total[name]:10.1f}" for name in sides))
    print(f"forward + backward by kernel, under the profiler ({n} steps each):")
    for label in [*BUCKETS, "other"]:
        print(f"  {label:26}" + "".join(f"{kernels[name][label] / n:10.1f}" for name in sides))
    # The profiler slows every operator, so take the products' and attention's SHARE of the
    # profiled passes and apply it to the timed ones.
    floor = {}
    for name in sides:
        share = (kernels[name]["matmul"] + kernels[name]["attention"]) / sum(kernels[name].values())
        floor[name] = share * (ms[name]["forward"] + ms[name]["backward"])
    print(
        f"ours / nanoGPT tokens/s: {total['nanoGPT'] / total['ours']:.2f}x. Products and "
        f"attention are {floor['nanoGPT']:.1f} ms of nanoGPT's step and {floor['ours']:.1f} ms "
        f"of ours: if nothing else cost anything, ours would run at "
        f"{total['nanoGPT'] / floor['ours']:.2f}x nanoGPT's tokens/s"
    )
    return 0


def uptime() -> str:
    loadavg = Path("/proc/loadavg")
    return " ".join(loadavg.read_text().split()[:3]) if loadavg.exists() else "n/a"


if __name__ == "__main__":
    sys.exit(main())
