"""Datasets and loaders for a language model: windows of a token stream, without leakage.

A language model is trained on windows of ``block_size + 1`` consecutive tokens: the first
``block_size`` are the input ``x`` and the last ``block_size`` are the target ``y`` (``x`` shifted
by one). The validation set must not share a single token position with the training set, so the
token stream is split FIRST, into a training region and a validation region, and windows are cut
inside each region. Cutting windows from the whole stream and then splitting the windows (the
book's code) leaks: windows on both sides of the split point overlap.

Two sources of tokens:

- :func:`create_dataloaders`: a text that fits in memory, encoded once into a tensor.
- :func:`prepare` + :func:`memmap_dataloaders`: a corpus larger than memory, encoded once to a
  ``uint16`` ``.bin`` file and read back through ``numpy.memmap``, one window at a time.

Both give ``torch.utils.data.DataLoader`` objects whose training order is a function of
``(seed, epoch)`` only (:class:`WindowSampler`), so a trainer that calls ``set_epoch`` can stop and
resume with exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class Encoder(Protocol):
    """What the loaders need from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class TokenWindowDataset(Dataset):
    """Windows of a 1-D token sequence: sample ``i`` is ``(x, y)`` with ``y`` = ``x`` shifted by one.

    Window ``i`` covers token positions ``i*stride .. i*stride + block_size`` (inclusive, that is
    ``block_size + 1`` tokens): ``x = tokens[s : s+block_size]`` and ``y = tokens[s+1 :
    s+block_size+1]`` with ``s = i*stride``, both ``(block_size,)`` int64 tensors. No window reads
    past the end of ``tokens``.

    Args:
        tokens: a 1-D sequence of token ids (a tensor, a numpy array or a ``numpy.memmap``).
        block_size: the context length ``T`` (>= 1).
        stride: the distance between window starts (default 1: every position starts a window).
        offset: added to the reported positions (:meth:`positions`), for a region of a larger
            stream; it does not change which tokens are read.

    Raises:
        ValueError: if ``block_size`` or ``stride`` is < 1, or ``tokens`` holds fewer than
            ``block_size + 1`` tokens (not even one window).
    """

    def __init__(self, tokens, block_size: int, stride: int = 1, offset: int = 0) -> None:
        if block_size < 1 or stride < 1:
            raise ValueError(f"block_size and stride must be >= 1, got {block_size} and {stride}")
        if len(tokens) < block_size + 1:
            raise ValueError(
                f"a window needs block_size + 1 = {block_size + 1} tokens, but this region has "
                f"only {len(tokens)}: use more text, a smaller block_size or a different split"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.stride = stride
        self.offset = offset

    def __len__(self) -> int:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'data' not started: implement TokenWindowDataset.__len__ in ch3/data.py (read docs/chapter03/3_5_data.md#windows-of-a-token-stream-tokenwindowdataset)"
        )

    def positions(self, i: int) -> range:
        """The token positions (plus ``offset``) that window ``i`` reads, ``x`` and ``y`` together."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'data' not started: implement TokenWindowDataset.positions in ch3/data.py (read docs/chapter03/3_5_data.md#windows-of-a-token-stream-tokenwindowdataset)"
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'data' not started: implement TokenWindowDataset.__getitem__ in ch3/data.py (read docs/chapter03/3_5_data.md#windows-of-a-token-stream-tokenwindowdataset)"
        )


class WindowSampler(Sampler[int]):
    """Window indices for one epoch, a function of ``(seed, epoch)`` only: resumable by design.

    With ``replacement=False`` an epoch is a permutation of ``range(num_windows)`` (or the identity
    with ``shuffle=False``); with ``replacement=True`` it is ``num_samples`` independent uniform
    draws, which suits a corpus too large to permute. Call :meth:`set_epoch` before iterating (as
    with ``DistributedSampler``): the same epoch gives the same order in every process.
    """

    def __init__(
        self,
        num_windows: int,
        *,
        shuffle: bool = True,
        replacement: bool = False,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if num_windows < 1:
            raise ValueError(f"num_windows must be >= 1, got {num_windows}")
        self.num_windows = num_windows
        self.shuffle = shuffle
        self.replacement = replacement
        self.num_samples = num_samples if num_samples is not None else num_windows
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples if self.replacement else self.num_windows

    def __iter__(self) -> Iterator[int]:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'data' not started: implement WindowSampler.__iter__ in ch3/data.py (read docs/chapter03/3_5_data.md#the-training-order-windowsampler)"
        )


def split_tokens(n_tokens: int, train_split: float) -> int:
    """The first validation position: tokens ``[0, k)`` train, ``[k, n_tokens)`` validate.

    Raises:
        ValueError: unless ``0 < train_split < 1``.
    """
    if not 0.0 < train_split < 1.0:
        raise ValueError(f"train_split must be strictly between 0 and 1, got {train_split}")
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'data' not started: implement split_tokens in ch3/data.py (read docs/chapter03/3_5_data.md#split-the-stream-first-split_tokens-and-create_dataloaders)"
    )


def _loaders(
    train: TokenWindowDataset, val: TokenWindowDataset, batch_size: int, seed: int, **sampler_kw
) -> tuple[DataLoader, DataLoader]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = WindowSampler(len(train), seed=seed, **sampler_kw)
    # drop_last: every training step sees a full batch; validation keeps every window.
    train_loader = DataLoader(train, batch_size=batch_size, sampler=sampler, drop_last=True)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False)
    if len(train_loader) == 0:
        raise ValueError(
            f"the training region has {len(train)} windows, fewer than one batch of "
            f"{batch_size}: use more text or a smaller batch_size"
        )
    return train_loader, val_loader


def create_dataloaders(
    text: str,
    tokenizer: Encoder,
    block_size: int,
    batch_size: int,
    train_split: float = 0.9,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Encode ``text`` and make the training and validation loaders of ``(x, y)`` batches.

    The token stream ``ids = tokenizer.encode(text)`` is split at ``k = int(len(ids) *
    train_split)``: training windows are cut from ``ids[:k]`` only, validation windows from
    ``ids[k:]`` only, so no validation window shares a token position with a training window.
    Training windows start at every position (stride 1) and come in a shuffled order fixed by
    ``(seed, epoch)`` (see :class:`WindowSampler`); incomplete last batches are dropped. Validation
    windows do not overlap each other (stride ``block_size``), come in order, and are all kept.

    Each batch is ``(x, y)``, two ``(batch_size, block_size)`` int64 tensors with ``y[:, t] ==
    x[:, t+1]`` for ``t < block_size - 1`` (``y`` is the next token of every position).

    Raises:
        ValueError: if either region is shorter than ``block_size + 1`` tokens, the training
            region has fewer windows than ``batch_size``, or ``train_split`` is not in ``(0, 1)``.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'data' not started: implement create_dataloaders in ch3/data.py (read docs/chapter03/3_5_data.md#split-the-stream-first-split_tokens-and-create_dataloaders)"
    )


def prepare(texts: str | Iterable[str], tokenizer: Encoder, path: str | Path) -> int:
    """Encode ``texts`` (one string, or an iterable of chunks such as a file's lines) to ``path``.

    The file is the raw token ids as little-endian ``uint16``, nothing else (nanoGPT's ``.bin``
    format): read it back with ``numpy.memmap(path, dtype=numpy.uint16, mode="r")``. Chunks are
    encoded one at a time and appended, so the text never has to fit in memory at once (a BPE
    tokenizer then never merges across chunk boundaries). Returns the number of tokens written.

    Raises:
        ValueError: if ``tokenizer.vocab_size`` > 65,536, so that ids do not fit in ``uint16``.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'data' not started: implement prepare in ch3/data.py (read docs/chapter03/3_5_data.md#bigger-than-memory-prepare-and-memmap_dataloaders)"
    )


def memmap_dataloaders(
    path: str | Path,
    block_size: int,
    batch_size: int,
    train_split: float = 0.9,
    seed: int = 0,
    samples_per_epoch: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Loaders over a token file written by :func:`prepare`, read lazily through ``numpy.memmap``.

    The file is split like :func:`create_dataloaders` (training positions ``[0, k)``, validation
    ``[k, n)``, ``k = int(n * train_split)``), but an epoch of training is ``samples_per_epoch``
    windows drawn uniformly with replacement (default: as many as there are windows), so nothing
    of the size of the corpus is ever built in memory. Batches are int64 like
    :func:`create_dataloaders`.

    Raises:
        FileNotFoundError: if ``path`` does not exist; ValueError as :func:`create_dataloaders`.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch3 stage 'data' not started: implement memmap_dataloaders in ch3/data.py (read docs/chapter03/3_5_data.md#bigger-than-memory-prepare-and-memmap_dataloaders)"
    )
