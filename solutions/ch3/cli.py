"""The chapter's command line: train a GPT on a text, then sample from it.

    python -m solutions.ch3 train [--text FILE] [--tokenizer char|bpe] [--config small] [--out DIR]
    python -m solutions.ch3 sample --checkpoint DIR --prompt "the cat"

``exercises.ch3`` in place of ``solutions.ch3`` runs the same commands on your own code. Without
``--text`` the built-in corpus (:mod:`.corpus`) is used. ``sample`` also takes a Hugging Face GPT-2
folder (``model.safetensors``, ``vocab.json``, ``merges.txt``) that you downloaded yourself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import corpus

# n_layer, n_head, n_embd, block_size. "small" is the book's small configuration (and nanoGPT's
# CPU Shakespeare one): about 0.8M parameters plus 128 per vocabulary entry, not "~0.5M".
CONFIGS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64},
    "medium": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024},
}
HF_FILES = ("model.safetensors", "vocab.json", "merges.txt")


def default_threads() -> int:
    """The CPU threads torch uses here: ``OMP_NUM_THREADS`` if set, else half the cores (at least 1).

    torch's own default, every core, is the fastest on an idle machine but collapses as soon as
    another program is busy: its threads wait for each other at every operation, and one of them
    is always waiting for a core (on 2 cores with one busy, 10x slower; benchmarks/README.md).
    Half the cores loses little when the machine is idle and nothing when it is not.
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // 2)


THREADS_HELP = "CPU threads (OMP_NUM_THREADS if set, else half the cores)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    shows_defaults = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}

    train = sub.add_parser(
        "train", help="train a GPT on a text file (or the built-in corpus)", **shows_defaults
    )
    add_training_options(train, CONFIGS, Path("out/ch3"))
    train.add_argument("--dropout", type=float, default=0.0, help="dropout probability")

    sample = sub.add_parser(
        "sample", help="generate text from a checkpoint or a GPT-2 folder", **shows_defaults
    )
    sample.add_argument("--checkpoint", type=Path, required=True, help="folder or .pt file")
    add_sampling_options(sample)
    return parser


def add_training_options(
    train: argparse.ArgumentParser, configs: dict[str, dict[str, int]], out: Path
) -> None:
    """The options of ``train`` that every chapter's command line has (its model adds more)."""
    train.add_argument("--text", type=Path, help="UTF-8 text file (default: the built-in corpus)")
    train.add_argument("--tokenizer", choices=("char", "bpe"), default="char", help="kind")
    train.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size")
    train.add_argument("--config", choices=sorted(configs), default="small", help="model shape")
    train.add_argument("--block-size", type=int, help="override the config's context length")
    train.add_argument("--out", type=Path, default=out, help="checkpoint folder")
    train.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    train.add_argument("--warmup-steps", type=int, help="None means max_steps // 10")
    train.add_argument("--batch-size", type=int, default=12, help="sequences per micro-batch")
    train.add_argument("--grad-accum-steps", type=int, default=1, help="micro-batches per step")
    train.add_argument("--learning-rate", "--lr", type=float, default=1e-3, help="peak lr")
    train.add_argument("--eval-interval", type=int, default=200, help="evaluate and save every")
    train.add_argument("--device", help="cuda, mps or cpu; None means the best present")
    train.add_argument("--threads", type=int, default=default_threads(), help=THREADS_HELP)
    train.add_argument("--compile", action="store_true", help="torch.compile (slow to start)")
    train.add_argument("--seed", type=int, default=0, help="seeds the model and the data order")
    train.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def add_sampling_options(sample: argparse.ArgumentParser) -> None:
    """The options of ``sample`` that every chapter's command line has (what to sample from is
    the chapter's own)."""
    sample.add_argument("--prompt", default="\n", help="the text to continue")
    sample.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    sample.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    sample.add_argument("--top-k", type=int, help="keep the k most likely tokens")
    sample.add_argument("--top-p", type=float, help="keep the nucleus of this probability")
    sample.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    sample.add_argument("--device", help="cuda, mps or cpu; None means the best present")
    sample.add_argument("--threads", type=int, default=default_threads(), help=THREADS_HELP)


def make_tokenizer(kind: str, text: str, vocab_size: int = 512):
    """A character-level or a byte-level BPE tokenizer trained on ``text``."""
    from .tokenizer import BPETokenizer, SimpleTokenizer

    if kind == "char":
        return SimpleTokenizer(text)
    return BPETokenizer().train(text, vocab_size=vocab_size)


@contextmanager
def naming(path: Path, what: str) -> Iterator[None]:
    """An error from what ``path`` holds becomes one ValueError naming it, never a traceback."""
    try:
        yield
    except NotImplementedError:
        raise  # an exercise stub: main() says which stage to start
    except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as e:
        text = " ".join(str(e).split())  # torch lists every mismatch on its own line
        text = text if len(text) <= 300 else text[:300] + " ..."
        raise ValueError(text if str(path) in text else f"{path}: {what}: {text}") from None


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a GPTTrainer checkpoint or a Hugging Face GPT-2 folder.

    The model is in eval mode on ``device``. Raises FileNotFoundError when ``path`` holds
    neither, and ``CheckpointError`` for an unreadable checkpoint.
    """
    from .gpt import GPT, GPTConfig
    from .tokenizer import load_gpt2_files, tokenizer_from_dict
    from .trainer import CheckpointError, read_checkpoint

    path = Path(path)
    if path.is_dir() and all((path / name).is_file() for name in HF_FILES):
        from .safetensors_io import load_file

        with naming(path / "model.safetensors", "not GPT-2 weights"):
            model = GPT.from_hf_state_dict(load_file(path / "model.safetensors"))
        with naming(path / "vocab.json", "not GPT-2's vocab.json and merges.txt"):
            tokenizer = load_gpt2_files(path / "vocab.json", path / "merges.txt")
    else:
        ckpt = read_checkpoint(path)
        if ckpt["config"] is None or ckpt["tokenizer"] is None:
            raise CheckpointError(f"{path} has no model config or no tokenizer to sample with")
        file = path / "checkpoint.pt" if path.is_dir() else path
        with naming(file, "its model does not fit this GPT"):
            model = GPT(GPTConfig(**ckpt["config"]))
            model.load_state_dict(ckpt["model"])
        with naming(file, "its tokenizer is not a tokenizer description"):
            tokenizer = tokenizer_from_dict(json.loads(ckpt["tokenizer"]))
    return model.to(device).eval(), tokenizer


def sample_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> str:
    """The text generated after ``prompt`` (the prompt itself left out), reproducible by seed."""
    from .sampling import generate

    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = generate(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    )
    return tokenizer.decode(out[0, idx.size(1) :].tolist())


class ProgressBar:
    """:meth:`GPTTrainer.train`'s callback: a bar with the loss, the learning rate, tokens/s and
    the last validation loss. Use it as a context manager (it owns the terminal meanwhile)."""

    def __init__(self, start: int, total: int, tokens_per_step: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.tokens_per_step = tokens_per_step
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self.task = self.progress.add_task("train", total=total, completed=start, status="")
        self.steps, self.started = 0, time.perf_counter()

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, trainer: Any, record: dict[str, float]) -> None:
        self.steps += 1
        rate = self.steps * self.tokens_per_step / max(time.perf_counter() - self.started, 1e-9)
        status = f"loss {record['loss']:.3f}  lr {record['lr']:.2e}  {rate:,.0f} tok/s"
        if trainer.history["val"]:
            status += f"  val {trainer.history['val'][-1]['loss']:.3f}"
        self.progress.update(self.task, completed=trainer.step, status=status)


def train(args: argparse.Namespace) -> int:
    return run_training(args, CONFIGS, _gpt, sample_text)


def _gpt(args: argparse.Namespace, shape: dict[str, int], vocab_size: int):
    from .gpt import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=vocab_size, dropout=args.dropout, **shape))


# build_model(args, shape, vocab_size) -> the model to train; shape is a row of the chapter's
# CONFIGS, with "block_size" (the training windows' length) overridden by --block-size.
ModelBuilder = Callable[[argparse.Namespace, dict[str, int], int], Any]


def run_training(
    args: argparse.Namespace,
    configs: dict[str, dict[str, int]],
    build_model: ModelBuilder,
    sample: Callable[..., str],
) -> int:
    """``train`` with the options of :func:`add_training_options`, for any chapter's model:
    the text, the tokenizer, the loaders, this chapter's trainer and progress bar, a checkpoint
    in ``args.out``, and a sample made by ``sample(model, tokenizer, prompt, n, seed=...)``."""
    from contextlib import nullcontext

    from .data import create_dataloaders
    from .trainer import GPTTrainer, TrainConfig, pick_device

    torch.set_num_threads(args.threads)

    if args.text is None:
        text, source = corpus.generate_corpus(), "the built-in corpus"
    else:
        with naming(args.text, "not a UTF-8 text file"):
            text, source = args.text.read_text(encoding="utf-8"), str(args.text)
    tokenizer = make_tokenizer(args.tokenizer, text, args.vocab_size)
    shape = dict(configs[args.config])
    if args.block_size:
        shape["block_size"] = args.block_size
    train_loader, val_loader = create_dataloaders(
        text, tokenizer, block_size=shape["block_size"], batch_size=args.batch_size, seed=args.seed
    )
    torch.manual_seed(args.seed)
    model = build_model(args, shape, tokenizer.vocab_size)
    device = pick_device(args.device)
    print(
        f"training a {model.num_parameters():,}-parameter {type(model).__name__} ({args.config}) "
        f"on {source}: {len(text):,} characters, {args.tokenizer} tokenizer of "
        f"{tokenizer.vocab_size} tokens, on {device}"
        + (f" with {args.threads} thread(s)" if device.type == "cpu" else "")
    )
    settings = TrainConfig(
        learning_rate=args.learning_rate,
        warmup_steps=args.max_steps // 10 if args.warmup_steps is None else args.warmup_steps,
        max_steps=args.max_steps,
        grad_accum_steps=args.grad_accum_steps,
        eval_interval=args.eval_interval,
        device=device,
        checkpoint_path=args.out,
        checkpoint_interval=args.eval_interval,
        seed=args.seed,
        compile=args.compile,
    )
    trainer = GPTTrainer(model, train_loader, val_loader, settings, tokenizer=tokenizer, quiet=True)
    if args.resume:
        with naming(args.out, "its training state does not fit this run"):
            trainer.load_checkpoint(args.out)
        print(f"resumed from {args.out} at step {trainer.step}")
    tokens_per_step = args.batch_size * shape["block_size"] * args.grad_accum_steps
    bar = None if args.quiet else ProgressBar(trainer.step, args.max_steps, tokens_per_step)
    with bar or nullcontext():
        history = trainer.train(callback=bar)
    if history["val"]:
        print(f"step {trainer.step}: validation loss {history['val'][-1]['loss']:.4f}")
    print(f"checkpoint: {args.out / 'checkpoint.pt'}")
    prompt = text[: min(16, len(text))]
    print("sample:", prompt + sample(trainer.model, tokenizer, prompt, 200, seed=args.seed))
    return 0


def sample(args: argparse.Namespace) -> int:
    from .trainer import pick_device

    torch.set_num_threads(args.threads)
    model, tokenizer = load_trained(args.checkpoint, pick_device(args.device))
    text = sample_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
    )
    print(args.prompt + text)
    return 0


def report_errors(
    command: Callable[[], int], expected: tuple[type[Exception], ...] = (OSError, ValueError)
) -> int:
    """Run ``command``; a stub's NotImplementedError, or bad input (``expected``: paths, files,
    checkpoints, arguments), becomes one line on stderr and exit code 1, not a traceback. The
    command lines of chapters 4 and 5 use it too."""
    try:
        return command()
    except NotImplementedError as e:  # an exercise stub: say which stage
        print(e, file=sys.stderr)
        return 1
    except expected as e:
        print("error:", " ".join(str(e).split()), file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(lambda: train(args) if args.command == "train" else sample(args))
