"""Train chapter 3's GPT on several processes with torchrun: data parallel (this tree's
``ddp.py``) or fully sharded (``--fsdp``, this tree's ``fsdp.py``). Given, not written by you.

    # one machine, 2 processes (CPU: gloo; one GPU each: NCCL)
    torchrun --nproc_per_node 2 -m solutions.ch6.train --out out/ch6
    torchrun --nproc_per_node 2 -m solutions.ch6.train --out out/ch6 --fsdp
    # two machines, 4 GPUs each: the same command on both, --node_rank 0 and 1
    torchrun --nnodes 2 --nproc_per_node 4 --node_rank 0 --master_addr HOST0 --master_port 29500 \\
        -m solutions.ch6.train --out out/ch6
    # then sample from the checkpoint, as from any chapter 3 checkpoint
    python -m solutions.ch3 sample --checkpoint out/ch6 --prompt "the cat"

``exercises.ch6.train`` runs your own code. ``--batch-size`` is the GLOBAL batch: each of the N
ranks reads ``batch_size / N`` windows of it (its own part, :class:`.ddp.ShardedSampler`), so N
processes compute what one process computes on the whole batch, and the losses match a
one-process run with the same settings. Rank 0 writes ``checkpoint.pt`` in chapter 3's format
(atomically: a temporary file, then a rename), which chapter 3's ``sample`` command reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..ch3 import corpus
from ..ch3.cli import CONFIGS, default_threads, load_trained, report_errors, sample_text
from ..ch3.data import TokenWindowDataset, split_tokens
from ..ch3.gpt import GPT, GPTConfig
from ..ch3.tokenizer import SimpleTokenizer
from ..ch3.trainer import configure_optimizer
from . import ddp
from .dist_utils import cleanup, setup


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m solutions.ch6.train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("out/ch6"), help="checkpoint folder")
    parser.add_argument("--fsdp", action="store_true", help="FSDP instead of DDP")
    parser.add_argument("--text", type=Path, help="UTF-8 text file (default: the built-in corpus)")
    parser.add_argument("--sentences", type=int, default=5000, help="built-in corpus size")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small", help="model shape")
    parser.add_argument("--block-size", type=int, help="override the config's context length")
    parser.add_argument("--max-steps", type=int, default=500, help="optimizer steps")
    parser.add_argument("--warmup-steps", type=int, help="None means max_steps // 10")
    parser.add_argument("--batch-size", type=int, default=16, help="GLOBAL batch (all ranks)")
    parser.add_argument("--learning-rate", "--lr", type=float, default=1e-3, help="peak lr")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's, on matrices")
    parser.add_argument("--eval-batches", type=int, default=20, help="validation batches")
    parser.add_argument("--log-interval", type=int, default=50, help="print every this many")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model and the data order")
    parser.add_argument("--threads", type=int, help="CPU threads per process (default: shared)")
    parser.add_argument("--sample-tokens", type=int, default=100, help="0: no sample at the end")
    parser.add_argument("--quiet", action="store_true", help="print only the final lines")
    return parser


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``peak``, then cosine down to ``peak / 10`` (chapter 3's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    r = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak / 10 + 0.5 * (1.0 + math.cos(math.pi * r)) * (peak - peak / 10)


class Batches:
    """This rank's training batches, epoch after epoch (``set_epoch`` before each one)."""

    def __init__(self, dataset, rank: int, world_size: int, local_batch: int, seed: int) -> None:
        self.sampler = ddp.ShardedSampler(len(dataset), rank, world_size, seed=seed, drop_last=True)
        self.loader = DataLoader(
            dataset, batch_size=local_batch, sampler=self.sampler, drop_last=True
        )
        self.epoch, self.batch_in_epoch = 0, 0
        self._it = None

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                x, y = next(self._it)
            except StopIteration:
                self.epoch, self.batch_in_epoch, self._it = self.epoch + 1, 0, None
                continue
            self.batch_in_epoch += 1
            return x.to(device), y.to(device)


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone().reshape(1)
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


@torch.no_grad()
def evaluate(model, dataset, batch_size: int, batches: int, device: torch.device) -> float:
    """Mean loss over the first ``batches`` validation batches. Every rank runs it (FSDP's
    forward needs all of them); they all get the same number."""
    model.eval()
    losses = []
    for i, (x, y) in enumerate(DataLoader(dataset, batch_size=batch_size)):
        if i == batches:
            break
        losses.append(model(x.to(device), y.to(device))[1].item())
    model.train()
    return sum(losses) / max(1, len(losses))


def full_states(model, optimizer, sharded: bool) -> tuple[dict, dict]:
    """The whole model's and optimizer's state dicts (every rank calls this; under FSDP only
    rank 0 gets them, gathered to its CPU)."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """``state`` to ``path/checkpoint.pt`` through a temporary file and an atomic rename."""
    path.mkdir(parents=True, exist_ok=True)
    file = path / "checkpoint.pt"
    tmp = file.with_name(file.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, file)
    return file


def train(args: argparse.Namespace) -> dict[str, Any]:
    """One rank's run: join the group, train, and (rank 0) write the checkpoint. Returns the
    history ``{"train": [{"step", "loss", "lr"}...], "val": [{"step", "loss"}]}``."""
    rank, world_size, device = setup()
    try:
        return _train(args, rank, world_size, device)
    finally:
        cleanup()


def _train(
    args: argparse.Namespace, rank: int, world_size: int, device: torch.device
) -> dict[str, Any]:
    torch.set_num_threads(args.threads or default_threads())  # torchrun sets OMP_NUM_THREADS=1
    if args.batch_size % world_size != 0:
        raise ValueError(
            f"--batch-size {args.batch_size} is the global batch: it must be divisible by the "
            f"{world_size} processes"
        )
    say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)

    if args.text is None:
        text, source = corpus.generate_corpus(args.sentences, seed=args.seed), "the built-in corpus"
    else:
        text, source = args.text.read_text(encoding="utf-8"), str(args.text)
    tokenizer = SimpleTokenizer(text)
    shape = dict(CONFIGS[args.config])
    if args.block_size:
        shape["block_size"] = args.block_size
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    k = split_tokens(len(ids), 0.9)
    train_set = TokenWindowDataset(ids[:k], shape["block_size"])
    val_set = TokenWindowDataset(ids[k:], shape["block_size"], stride=shape["block_size"])
    batches = Batches(train_set, rank, world_size, args.batch_size // world_size, args.seed)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    config = GPTConfig(vocab_size=tokenizer.vocab_size, dropout=0.0, **shape)
    model = GPT(config).to(device)
    if args.fsdp:
        from . import fsdp  # imported only when used: torch's FSDP and DCP take ~1.5 s to load

        fsdp.shard_model(model)
    else:
        ddp.broadcast_parameters(model)
    optimizer = configure_optimizer(model, args.learning_rate, args.weight_decay, (0.9, 0.95))
    strategy = "FSDP" if args.fsdp else "DDP"
    say(
        f"training a {config.n_layer}-layer GPT ({args.config}) with {strategy} on {world_size} "
        f"process(es) ({device.type}), {args.batch_size} windows of {shape['block_size']} "
        f"tokens per step ({args.batch_size // world_size} per process), on {source}"
    )

    warmup = args.max_steps // 10 if args.warmup_steps is None else args.warmup_steps
    history: dict[str, list[dict[str, float]]] = {"train": [], "val": []}
    for step in range(args.max_steps):
        lr = lr_at(step, args.learning_rate, warmup, args.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batches.next(device)
        if args.fsdp:
            _, loss_t = model(x, y)
            loss_t.backward()  # FSDP reduce-scatters (averages) the gradients here
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = mean_over_ranks(loss_t)
        else:
            loss = ddp.train_step(model, optimizer, x, y)
        history["train"].append({"step": step, "loss": loss, "lr": lr})
        if not args.quiet and (step % args.log_interval == 0 or step == args.max_steps - 1):
            say(f"step {step}: loss {loss:.4f}, lr {lr:.2e}")
    val = evaluate(model, val_set, args.batch_size, args.eval_batches, device)
    history["val"].append({"step": args.max_steps, "loss": val})
    say(f"step {args.max_steps}: validation loss {val:.4f}")

    model_state, optimizer_state = full_states(model, optimizer, args.fsdp)
    if rank == 0:
        file = save_checkpoint(
            args.out,
            {
                "model": model_state,
                "optimizer": optimizer_state,
                "step": args.max_steps,
                "config": dataclasses.asdict(config),
                "tokenizer": json.dumps(tokenizer.to_dict(), ensure_ascii=False),
                "rng": {"torch": torch.get_rng_state()},
                "data": {"epoch": batches.epoch, "batch_in_epoch": batches.batch_in_epoch},
                "history": history,
                "world_size": world_size,
                "strategy": strategy,
            },
        )
        say(f"checkpoint: {file}")
        if args.sample_tokens:
            trained, tok = load_trained(args.out)  # what chapter 3's sample command reads
            prompt = text[:16]
            say("sample:", prompt + sample_text(trained, tok, prompt, args.sample_tokens))
    return history


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        train(args)
        return 0

    return report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
