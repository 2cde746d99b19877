"""The chapter's command line: train a Llama on a text, sample from it or from downloaded weights.

    python -m solutions.ch4 train [--text FILE] [--config small] [--n-kv-heads 1] [--experts 4]
    python -m solutions.ch4 sample --checkpoint DIR --prompt "the cat"
    python -m solutions.ch4 sample --hf FOLDER --prompt "The capital of France is"

``exercises.ch4`` in place of ``solutions.ch4`` runs the same commands on your own code. ``train``
takes chapter 3's options (the same text, tokenizers, trainer, checkpoints and progress bar: they
are chapter 3's code) and the Llama's own (``--n-kv-heads``, ``--experts``, ...). ``sample --hf``
reads a Hugging Face Llama, Qwen2, Mistral or Mixtral folder that you downloaded yourself
(``config.json``, ``model.safetensors`` or its shards, ``tokenizer.json``); its tokenizer must be
byte-level BPE (Llama 3, Qwen2), see :mod:`.hf_tokenizer`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..ch3.cli import (
    add_sampling_options,
    add_training_options,
    naming,
    report_errors,
    run_training,
)

# dim, n_layers, n_heads, n_kv_heads, hidden_dim (about 8/3 dim, a multiple of 16: SwiGLU's three
# matrices then cost what GPT-2's two 4 dim ones do), block_size (the training windows, and the
# model's max_seq_len). The same widths, depths and heads as chapter 3's configurations.
CONFIGS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 176,
             "block_size": 64},
    "small": {"dim": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 352,
              "block_size": 64},
    "medium": {"dim": 384, "n_layers": 6, "n_heads": 6, "n_kv_heads": 2, "hidden_dim": 1024,
               "block_size": 256},
}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    shows_defaults = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}

    train = sub.add_parser(
        "train", help="train a Llama on a text file (or the built-in corpus)", **shows_defaults
    )
    add_training_options(train, CONFIGS, Path("out/ch4"))
    train.add_argument("--n-kv-heads", type=int, help="override the config's key-value heads")
    train.add_argument("--experts", type=int, default=0, help="MoE experts per layer (0: dense)")
    train.add_argument("--experts-per-tok", type=int, default=2, help="experts run per token")
    train.add_argument("--rope-theta", type=float, default=10000.0, help="RoPE's base")

    sample = sub.add_parser(
        "sample",
        help="generate text from a checkpoint or a Hugging Face folder",
        **shows_defaults,
    )
    source = sample.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a folder or .pt file written by train")
    source.add_argument("--hf", type=Path, help="a Hugging Face Llama/Qwen2/Mistral/Mixtral folder")
    add_sampling_options(sample)
    sample.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights' dtype")
    sample.add_argument("--no-cache", action="store_true", help="no KV cache (the slow way)")
    return parser


def _llama(args: argparse.Namespace, shape: dict[str, int], vocab_size: int):
    """The model ``train`` trains: a row of :data:`CONFIGS` with the command line's changes."""
    from .llama import Llama, LlamaConfig

    shape = dict(shape)
    if args.n_kv_heads:
        shape["n_kv_heads"] = args.n_kv_heads
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_seq_len=shape.pop("block_size"),
        rope_theta=args.rope_theta,
        n_experts=args.experts,
        n_experts_per_tok=args.experts_per_tok,
        **shape,
    )
    return Llama(config)


def load_checkpoint(path: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a checkpoint that ``train`` wrote, the model in eval mode.

    Raises FileNotFoundError when there is none, and ValueError naming the file when it cannot
    be used (chapter 3's ``CheckpointError`` for an unreadable one).
    """
    from ..ch3.tokenizer import tokenizer_from_dict
    from ..ch3.trainer import CheckpointError, read_checkpoint
    from .llama import Llama, LlamaConfig

    ckpt = read_checkpoint(path)
    if ckpt["config"] is None or ckpt["tokenizer"] is None:
        raise CheckpointError(f"{path} has no model config or no tokenizer to sample with")
    file = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)
    with naming(file, "its model does not fit this Llama"):
        model = Llama(LlamaConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    with naming(file, "its tokenizer is not a tokenizer description"):
        tokenizer = tokenizer_from_dict(json.loads(ckpt["tokenizer"]))
    return model.eval(), tokenizer


def load_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a downloaded Hugging Face folder; the tokenizer is read first,
    so that a tokenizer this chapter cannot read stops before gigabytes of weights are loaded."""
    from .hf_tokenizer import load_hf_tokenizer
    from .llama import Llama

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (a Hugging Face model folder)")
    tokenizer = load_hf_tokenizer(folder)
    return Llama.load_hf(folder, dtype=dtype), tokenizer


def eos_ids(folder: str | Path) -> list[int]:
    """The end-of-text ids of a Hugging Face folder: ``eos_token_id`` (one id or a list) of its
    generation_config.json, else of its config.json; [] when neither names one."""
    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name
        if path.is_file():
            with naming(path, "not a JSON object"):
                value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            if value is not None:
                return [int(i) for i in (value if isinstance(value, list) else [value])]
    return []


def sample_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    *,
    stop_ids: list[int] | tuple[int, ...] = (),
    use_cache: bool = True,
) -> str:
    """The text generated after ``prompt`` (the prompt left out), reproducible by seed.

    The prompt's ids start with the tokenizer's ``prefix_ids`` if it has them (Llama 3's
    ``<|begin_of_text|>``). Generation stops at the first of ``stop_ids``, which is not part of
    the text. A model has positions up to ``config.max_seq_len`` only: past that, the text goes
    on from its last ``max_seq_len // 2`` tokens, prefilled again (chapter 3's generate moves its
    window by one token per step; this one moves in jumps, so the cache keeps paying).
    """
    from .generate import generate

    device = next(model.parameters()).device
    ids = list(getattr(tokenizer, "prefix_ids", [])) + tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty and the tokenizer adds no first token: give --prompt")
    generator = torch.Generator(device=device).manual_seed(seed)
    window = model.config.max_seq_len
    new: list[int] = []
    while len(new) < max_new_tokens:
        context = (ids + new)[-max(1, window // 2) :] if new else ids[-window + 1 :]
        n = min(max_new_tokens - len(new), window - len(context))
        idx = torch.tensor([context], dtype=torch.long, device=device)
        out = generate(
            model,
            idx,
            n,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=stop_ids[0] if stop_ids else None,
            use_cache=use_cache,
            generator=generator,
        )
        tokens = out[0, len(context) :].tolist()
        stop = next((k for k, t in enumerate(tokens) if t in stop_ids), None)
        new += tokens[:stop]
        if stop is not None or not tokens:
            break
    known = getattr(tokenizer, "vocab", None)  # Qwen2 pads its embedding past its vocabulary
    return tokenizer.decode([t for t in new if known is None or t in known])


def train(args: argparse.Namespace) -> int:
    return run_training(args, CONFIGS, _llama, sample_text)


def sample(args: argparse.Namespace) -> int:
    from ..ch3.trainer import pick_device

    torch.set_num_threads(args.threads)
    if args.hf is not None:
        model, tokenizer = load_hf_folder(args.hf, DTYPES[args.dtype])
        stop_ids = eos_ids(args.hf)
    else:
        model, tokenizer = load_checkpoint(args.checkpoint)
        model, stop_ids = model.to(DTYPES[args.dtype]), []
    model = model.to(pick_device(args.device))
    text = sample_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        stop_ids=stop_ids,
        use_cache=not args.no_cache,
    )
    print(args.prompt + text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(lambda: train(args) if args.command == "train" else sample(args))
