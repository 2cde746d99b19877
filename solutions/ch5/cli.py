"""The chapter's command line: fine-tune a chapter 3 or 4 checkpoint by SFT, DPO or RL.

    python -m solutions.ch5 pretrain --out runs/base          # a small chat-ready base model
    python -m solutions.ch5 pretrain --llama --out runs/llama # ... a chapter 4 Llama
    python -m solutions.ch5 sft --checkpoint runs/base --out runs/sft [--data sft.jsonl]
    python -m solutions.ch5 dpo --checkpoint runs/sft --out runs/dpo [--data dpo.jsonl]
    python -m solutions.ch5 rl --checkpoint runs/sft --out runs/rl [--data rl.jsonl]
    python -m solutions.ch5 data sft|dpo|rl --out FILE.jsonl  # the generated data, to edit
    python -m solutions.ch3 sample --checkpoint runs/sft --prompt "<|user|>3+4<|end|><|assistant|>"
    python -m solutions.ch5 sft --checkpoint runs/llama --out runs/llama-sft   # a chapter 4 one
    python -m solutions.ch4 sample --checkpoint runs/llama-sft --prompt "<|user|>3+4<|end|>..."

Without ``--data`` the project's generated addition task is used (its fine-tuning split; the
JSONL formats are in :mod:`.train`). The checkpoint's tokenizer must have the chat tokens (a
model pretrained with :func:`.sft.chat_tokenizer`, as ``pretrain`` does). The checkpoint is a
chapter 3 GPT's (``python -m solutions.ch3 train``) or a chapter 4 Llama's (``python -m
solutions.ch4 train``), and what is written is of the same kind, for that chapter's ``sample``.
SFT and DPO train LoRA adapters and merge them; RL trains the final norm's gain (see
``grader/tasks/ch5.py`` for why). ``exercises.ch5`` runs the same commands on your own code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..ch3.cli import load_trained, report_errors
from ..ch3.trainer import read_checkpoint
from . import dpo, lora, sft, train

KINDS = ("sft", "dpo", "rl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}

    base = sub.add_parser("pretrain", help="pretrain the small base model", **defaults)
    base.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    base.add_argument("--steps", type=int, default=400, help="optimizer steps")
    base.add_argument("--seed", type=int, default=0, help="seeds the model and the data")
    base.add_argument("--llama", action="store_true", help="a chapter 4 Llama instead of a GPT")

    data = sub.add_parser("data", help="write the generated data as JSONL", **defaults)
    data.add_argument("kind", choices=KINDS, help="which records")
    data.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    data.add_argument("--held-out", action="store_true", help="the held-out split instead")

    for kind in KINDS:
        p = sub.add_parser(kind, help=f"fine-tune a checkpoint by {kind.upper()}", **defaults)
        p.add_argument("--checkpoint", type=Path, required=True, help="chapter 3 or 4 checkpoint")
        p.add_argument("--data", type=Path, help="JSONL file (default: the generated task)")
        p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
        p.add_argument("--steps", type=int, default={"sft": 300, "dpo": 100, "rl": 40}[kind])
        lr = 0.1 if kind == "rl" else 3e-3  # RL trains the final norm's gain alone
        p.add_argument("--lr", type=float, default=lr, help="AdamW learning rate")
        size = 8 if kind == "rl" else 16
        p.add_argument(
            "--batch-size", type=int, default=size, help="examples (RL: prompts) per step"
        )
        p.add_argument("--seed", type=int, default=0, help="seeds the data order and sampling")
        if kind != "rl":
            p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
            p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
            p.add_argument("--targets", default="c_attn,c_proj,c_fc,q_proj,k_proj,v_proj,o_proj")
        if kind == "dpo":
            p.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
        if kind == "rl":
            p.add_argument("--group-size", type=int, default=8, help="answers per prompt")
            p.add_argument("--kl-coef", type=float, default=0.0, help="KL penalty weight")
    return parser


def _records(args: argparse.Namespace) -> list[dict]:
    if args.data is not None:
        return train.read_jsonl(args.data, args.command)
    return train.records(args.command, train.facts()[0])


def _targets(model: torch.nn.Module, wanted: str) -> tuple[str, ...]:
    """The requested target names that the model has (GPT-2's and Llama's names both listed)."""
    names = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    found = tuple(t for t in wanted.split(",") if t in names)
    if not found:
        raise ValueError(f"the model has no layer named one of {wanted}")
    return found


def load_model(path: Path) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` from a chapter 3 checkpoint (or Hugging Face GPT-2 folder), or from
    a chapter 4 one, told apart by the saved config (a Llama's has ``dim``)."""
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not (file.is_file() and "dim" in (read_checkpoint(file)["config"] or {})):
        return load_trained(path)
    from ..ch4.cli import load_checkpoint

    model, tokenizer = load_checkpoint(path)
    # chapter 3's generate reads the context length from model.block_size when the config has
    # no block_size (a Llama's is max_seq_len)
    model.block_size = train.context_length(model)
    return model, tokenizer


SHAPE = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 16}  # the GPT that pretrain trains


def _llama() -> torch.nn.Module:
    """A Llama of chapter 4's tiny shape with the chat tokenizer's vocabulary and GPT's context."""
    from ..ch4.cli import CONFIGS
    from ..ch4.llama import Llama, LlamaConfig

    shape = dict(CONFIGS["tiny"], max_seq_len=SHAPE["block_size"])
    del shape["block_size"]
    return Llama(LlamaConfig(vocab_size=sft.chat_tokenizer().vocab_size, **shape))


def fine_tune(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.checkpoint)
    missing = [t for t in sft.CHAT_TOKENS if t not in getattr(tokenizer, "special_tokens", {})]
    if missing:
        raise ValueError(
            f"{args.checkpoint}: the tokenizer lacks the chat tokens {missing}; fine-tune a model "
            "pretrained with them (python -m solutions.ch5 pretrain)"
        )
    rows = _records(args)
    reference = dpo.frozen_reference(model) if args.command in ("dpo", "rl") else None
    if args.command == "rl":
        train.only_final_gain_trainable(model)
    else:
        train.add_adapters(model, args.rank, args.alpha, _targets(model, args.targets))
    if args.command == "sft":
        history = train.train_sft(
            model, tokenizer, rows, args.steps, args.batch_size, args.lr, args.seed
        )
        summary = f"final loss {history[-1]:.4f}"
    elif args.command == "dpo":
        history = train.train_dpo(
            model,
            reference,
            tokenizer,
            rows,
            args.steps,
            args.batch_size,
            args.lr,
            args.beta,
            args.seed,
        )
        summary = f"final reward margin {history[-1]:+.3f}"
    else:
        history = train.train_rl(
            model,
            tokenizer,
            rows,
            args.steps,
            args.batch_size,
            args.group_size,
            args.lr,
            reference=reference,
            kl_coef=args.kl_coef,
            seed=args.seed,
        )
        summary = f"mean reward {history[0]:.3f} at the first step, {history[-1]:.3f} at the last"
    lora.merge_lora(model)  # nothing to merge after RL
    path = train.save_checkpoint(model, tokenizer, args.out, {args.command: history})
    print(f"{args.command}: {len(rows)} records, {args.steps} steps, {summary}; wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(lambda: run(args), (OSError, ValueError, KeyError))


def run(args: argparse.Namespace) -> int:
    if args.command == "pretrain":
        torch.manual_seed(args.seed)
        model, tokenizer = train.pretrain(
            steps=args.steps, seed=args.seed, model=_llama() if args.llama else None, **SHAPE
        )
        print(f"pretrained; wrote {train.save_checkpoint(model, tokenizer, args.out)}")
        return 0
    if args.command == "data":
        split = train.facts()[1 if args.held_out else 0]
        train.write_jsonl(args.out, train.records(args.kind, split))
        print(f"wrote {args.out}")
        return 0
    return fine_tune(args)
