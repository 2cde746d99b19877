"""Training a GPT: AdamW, warm-up then cosine decay, clipping, accumulation, exact-resume checkpoints.

The loop, one optimizer step at a time (nanoGPT's ``train.py`` in a class)::

    lr = get_lr(step)                       # written into every param group, every step
    for each of grad_accum_steps micro-batches:
        loss = model(x, y)[1] / grad_accum_steps
        loss.backward()                     # gradients add up over micro-batches
    clip the global gradient norm to grad_clip
    optimizer.step()

A checkpoint holds everything the next step depends on (model, optimizer moments, step, where the
data order is, the RNG state), so a run stopped at step k and resumed gives, on CPU, exactly the
losses of a run that never stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

CHECKPOINT_KEYS = ("model", "optimizer", "step", "config", "tokenizer", "rng", "data")


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read back (truncated, foreign or corrupt)."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the best one present: cuda, then mps, then cpu."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'trainer' not started: implement pick_device in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#mixed-precision-and-the-device-pick_device)"
    )


def pick_dtype(device: torch.device, precision: str | None = None) -> torch.dtype:
    """The autocast dtype: ``precision`` ("fp32", "bf16", "fp16") if given, else bf16 on a GPU
    that supports it, fp16 on other GPUs, and fp32 (no autocast) on CPU and MPS."""
    if precision is not None:
        names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in names:
            raise ValueError(f"precision must be one of {sorted(names)}, got {precision!r}")
        return names[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def configure_optimizer(
    model: nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with two parameter groups: weight decay on every parameter with ``dim >= 2`` (the
    matrices of Linear layers and embeddings), none on the others (biases, LayerNorm gains).

    Decaying a bias or a LayerNorm gain only pulls it towards zero for no benefit; the matrices
    are where the capacity (and the overfitting) is. A tied parameter is listed once.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'trainer' not started: implement configure_optimizer in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#adamw-and-what-gets-weight-decay-configure_optimizer)"
    )


def _config_dict(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :meth:`GPTTrainer.save_checkpoint`, safely.

    ``path`` is the file, or a folder holding ``checkpoint.pt``. Loads with
    ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, never
    arbitrary pickled code.

    Raises:
        FileNotFoundError: if there is no checkpoint at ``path``.
        CheckpointError: if the file cannot be read or lacks one of :data:`CHECKPOINT_KEYS`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first, or check the path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's explanation is a page long
        raise CheckpointError(
            f"{path} is not a readable checkpoint: torch.load(weights_only=True) refused it "
            "(corrupt, or it holds pickled Python objects, which are never loaded)"
        ) from e
    except Exception as e:  # a truncated zip, a foreign file...
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, or not written by "
            f"GPTTrainer.save_checkpoint): {type(e).__name__}: {e}"
        ) from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a GPTTrainer checkpoint: it lacks {missing}")
    return ckpt


class GPTTrainer:
    """Trains ``model`` on ``train_loader``, evaluates it on ``val_loader``, saves checkpoints.

    ``model(x, targets=y)`` must return ``(logits, loss)``; the loaders must yield ``(x, y)``
    batches of token ids. The keyword arguments of the book's trainer work unchanged; the
    defaults suit a small model on a CPU (a few minutes).

    Args:
        learning_rate: the peak learning rate, reached at the end of the warm-up.
        weight_decay: AdamW's decoupled weight decay, on 2-D parameters only.
        warmup_steps: linear warm-up length, in optimizer steps.
        max_steps: total optimizer steps; the cosine reaches ``min_lr`` here.
        grad_clip: clip the global gradient norm to this value (``None`` or 0: no clipping).
        device: where to train (default: :func:`pick_device`, cuda > mps > cpu).
        min_lr: the floor of the cosine (default ``learning_rate / 10``).
        betas: AdamW's betas.
        grad_accum_steps: micro-batches per optimizer step; one step sees
            ``grad_accum_steps * batch_size`` sequences.
        eval_interval: evaluate every this many steps (and after the last step); 0: never.
        eval_batches: how many validation batches (the first ones, always the same) to average.
        checkpoint_path: where :meth:`train` saves (a ``.pt`` file, or a folder that gets a
            ``checkpoint.pt``); ``None``: no automatic saving.
        checkpoint_interval: save every this many steps as well as at the end (0: only the end).
        tokenizer: saved in the checkpoint (as the JSON of ``tokenizer.to_dict()``) so the model
            can be used alone later.
        seed: seeds torch's global RNG (dropout) when the trainer is created.
        precision: autocast dtype, "fp32", "bf16" or "fp16" (default: :func:`pick_dtype`).
        quiet: no progress bar (tests, scripts).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        *,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        max_steps: int = 1000,
        grad_clip: float | None = 1.0,
        device: str | torch.device | None = None,
        min_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        grad_accum_steps: int = 1,
        eval_interval: int = 200,
        eval_batches: int = 20,
        checkpoint_path: str | Path | None = None,
        checkpoint_interval: int = 0,
        tokenizer: Any = None,
        seed: int = 0,
        precision: str | None = None,
        quiet: bool = False,
    ) -> None:
        if max_steps < 1 or warmup_steps < 0 or grad_accum_steps < 1:
            raise ValueError(
                f"need max_steps >= 1, warmup_steps >= 0 and grad_accum_steps >= 1, got "
                f"{max_steps}, {warmup_steps} and {grad_accum_steps}"
            )
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.device = pick_device(device)
        self.model = model.to(self.device)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.learning_rate = learning_rate
        self.min_lr = learning_rate / 10 if min_lr is None else min_lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.grad_clip = grad_clip
        self.grad_accum_steps = grad_accum_steps
        self.eval_interval = eval_interval
        self.eval_batches = eval_batches
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_interval = checkpoint_interval
        self.tokenizer = tokenizer
        self.quiet = quiet
        self.dtype = pick_dtype(self.device, precision)
        # fp16 needs loss scaling so that small gradients do not underflow; bf16 does not.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.dtype == torch.float16 and self.device.type == "cuda"
        )
        torch.manual_seed(seed)
        self.optimizer = configure_optimizer(model, learning_rate, weight_decay, betas)
        self.step = 0  # optimizer steps taken so far
        self.epoch = 0  # passes over the training loader started so far
        self.batch_in_epoch = 0  # batches of the current epoch already consumed
        self._batches: Iterator | None = None
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "val": []}

    # ----------------------------------------------------------------------------- schedule

    def get_lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based).

        - warm-up, ``step < warmup_steps``: ``learning_rate * (step + 1) / warmup_steps``
          (linear, never 0: step 0 already learns);
        - ``warmup_steps <= step <= max_steps``: cosine from ``learning_rate`` down to ``min_lr``:
          ``min_lr + 0.5 * (1 + cos(pi * r)) * (learning_rate - min_lr)`` with
          ``r = (step - warmup_steps) / (max_steps - warmup_steps)``;
        - ``step > max_steps``: ``min_lr``.
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'trainer' not started: implement GPTTrainer.get_lr in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#the-learning-rate-schedule-get_lr)"
        )

    # --------------------------------------------------------------------------------- data

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch, moved to the device; a new epoch starts when one ends.

        Before each epoch the sampler's ``set_epoch(epoch)`` is called if it has one, so the order
        depends only on the epoch; after a resume, the batches of the epoch that were already
        used are skipped.
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'trainer' not started: implement GPTTrainer.next_batch in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#one-optimizer-step-next_batch-and-train_step)"
        )

    # ----------------------------------------------------------------------------- one step

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def train_step(self) -> dict[str, float]:
        """One optimizer step at ``get_lr(self.step)``; returns its loss, lr and gradient norm.

        Gradients are zeroed at the start (not the end), so after it returns every parameter's
        ``.grad`` holds the accumulated, clipped gradient that the optimizer applied. ``loss`` is
        the mean of the micro-batch losses, and ``grad_norm`` the global norm before clipping.
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'trainer' not started: implement GPTTrainer.train_step in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#one-optimizer-step-next_batch-and-train_step)"
        )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the first ``eval_batches`` batches of ``val_loader`` (the same batches
        every time, so two evaluations compare), in eval mode without gradients; the model's
        train/eval mode is restored afterwards."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'trainer' not started: implement GPTTrainer.evaluate in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#evaluation-evaluate)"
        )

    # --------------------------------------------------------------------------------- loop

    def train(self, until: int | None = None) -> dict[str, list[dict[str, float]]]:
        """Train from ``self.step`` up to step ``until`` (exclusive; default ``max_steps``).

        Evaluates every ``eval_interval`` steps and after the last one, saves to
        ``checkpoint_path`` every ``checkpoint_interval`` steps and at the end, and shows a
        progress bar with the loss, the learning rate and tokens/s unless ``quiet``. Returns the
        history: ``{"train": [{"step", "loss", "lr", "grad_norm"}, ...], "val": [{"step",
        "loss"}, ...]}`` (all steps so far, including those before a resume).
        """
        until = self.max_steps if until is None else min(until, self.max_steps)
        progress = None
        if not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
            )
            progress.start()
            task = progress.add_task("train", total=until, completed=self.step, status="")
        try:
            tokens, start = 0, time.perf_counter()
            while self.step < until:
                record = self.train_step()
                self.history["train"].append(record)
                tokens += self._tokens_per_step()
                done = self.step
                if self.val_loader is not None and (
                    (self.eval_interval and done % self.eval_interval == 0) or done == until
                ):
                    self.history["val"].append({"step": done, "loss": self.evaluate()})
                if self.checkpoint_path is not None and (
                    (self.checkpoint_interval and done % self.checkpoint_interval == 0)
                    or done == until
                ):
                    self.save_checkpoint(self.checkpoint_path)
                if progress is not None:
                    rate = tokens / max(time.perf_counter() - start, 1e-9)
                    status = f"loss {record['loss']:.3f}  lr {record['lr']:.2e}  {rate:,.0f} tok/s"
                    if self.history["val"]:
                        status += f"  val {self.history['val'][-1]['loss']:.3f}"
                    progress.update(task, completed=done, status=status)
        finally:
            if progress is not None:
                progress.stop()
        return self.history

    def _tokens_per_step(self) -> int:
        batch_size = getattr(self.train_loader, "batch_size", None) or 1
        block = getattr(getattr(self.train_loader, "dataset", None), "block_size", 1)
        return batch_size * block * self.grad_accum_steps

    # -------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds; only tensors, numbers, strings, lists and dicts."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        tokenizer = None
        if self.tokenizer is not None:
            tokenizer = json.dumps(self.tokenizer.to_dict(), ensure_ascii=False)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "config": _config_dict(self.model),
            "tokenizer": tokenizer,
            "rng": rng,
            "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "history": self.history,
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` to ``path`` (a ``.pt`` file, or a folder that gets a
        ``checkpoint.pt``), atomically: a temporary file in the same folder, then
        ``os.replace``, so a crash mid-write never leaves a half-written checkpoint behind.
        Returns the file written."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'trainer' not started: implement GPTTrainer.save_checkpoint in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#checkpoints-save_checkpoint-and-load_checkpoint)"
        )

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer, so that
        :meth:`train` continues exactly where the saved run was (same hyperparameters and
        loaders assumed). Errors as :func:`load_checkpoint`."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'trainer' not started: implement GPTTrainer.load_checkpoint in ch3/trainer.py (read docs/chapter03/3_6_trainer.md#checkpoints-save_checkpoint-and-load_checkpoint)"
        )
