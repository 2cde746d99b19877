"""Stage ch3 'data': windows of a token stream, x/y shifted by one, and no train/val leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grader.tree import load
from tests.helpers import (
    Mistake,
    check,
    check_equal,
    check_matches,
    check_raises,
    check_same,
    fail,
    fail_if_mistake,
)

data = load("ch3.data")

WHERE = "ch3/data.py, create_dataloaders"


class PositionTokenizer:
    """Token i of any text is the id i: every id in a batch is the position it came from."""

    def __init__(self, n: int) -> None:
        self.vocab_size = n

    def encode(self, text: str) -> list[int]:
        return list(range(len(text)))


class CharCodes:
    """A tokenizer of the test's own (ids = code points of a small alphabet)."""

    vocab_size = 128

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def batches(loader):
    return [(x, y) for x, y in loader]


def positions(loader) -> set[int]:
    """Every token position read by a loader built with PositionTokenizer (x and y)."""
    seen: set[int] = set()
    for x, y in loader:
        seen.update(x.flatten().tolist())
        seen.update(y.flatten().tolist())
    return seen


def check_batch(x, y, batch_size, block_size, where):
    """x and y are (batch_size, block_size) int64 and y is x shifted by one token."""
    for name, t in (("x", x), ("y", y)):
        check(
            isinstance(t, torch.Tensor) and t.dtype == torch.long,
            f"{name} should be an int64 (torch.long) tensor of token ids, got "
            f"{getattr(t, 'dtype', type(t).__name__)}. Look at {where}.",
        )
        check_matches(
            tuple(t.shape),
            (batch_size, block_size),
            f"{name} should have shape (batch_size, block_size) = {(batch_size, block_size)}, "
            f"got {tuple(t.shape)}. Look at {where}.",
        )
    check_same(
        y[:, :-1],
        x[:, 1:],
        f"y should be x shifted by one token (y[:, t] == x[:, t + 1]), got x[0] = "
        f"{x[0].tolist()} and y[0] = {y[0].tolist()}. Look at {where}.",
    )


def books_split_positions(n: int, block_size: int) -> tuple[set[int], set[int]]:
    """The book's split: every window of the whole stream, then the first 90% of windows train."""
    ids = torch.arange(n)
    windows = [ids[i : i + block_size + 1] for i in range(n - block_size)]
    cut = int(0.9 * len(windows))
    train_pos = {int(t) for w in windows[:cut] for t in w}
    val_pos = {int(t) for w in windows[cut:] for t in w}
    return train_pos, val_pos


def test_batches_are_windows_shifted_by_one():
    """Batches are (batch_size, block_size) int64 windows of the stream, y = x shifted by one."""
    n, block_size, batch_size = 400, 8, 4
    train, val = data.create_dataloaders("." * n, PositionTokenizer(n), block_size, batch_size)
    for x, y in batches(train)[:5] + batches(val)[:1]:
        check_batch(x, y, batch_size, block_size, WHERE)
        # With position ids, a contiguous window reads consecutive positions.
        check_same(
            x[:, 1:] - x[:, :-1],
            torch.ones_like(x[:, 1:]),
            f"each row of x should be consecutive tokens of the text, got {x[0].tolist()}. "
            f"Look at {WHERE}.",
        )


def test_train_and_validation_share_no_token_position():
    """No validation window shares a token position with a training window (split first)."""
    n, block_size, batch_size = 1000, 16, 8
    # The check below has teeth: the book's split (windows first, then split) fails it.
    book_train, book_val = books_split_positions(n, block_size)
    check(bool(book_train & book_val), "internal: the book's split should overlap")
    train, val = data.create_dataloaders(
        "." * n, PositionTokenizer(n), block_size, batch_size, train_split=0.9
    )
    train_pos, val_pos = positions(train), positions(val)
    shared = sorted(train_pos & val_pos)
    if shared:
        books_split = Mistake(
            "windows cut from the whole token stream and then split (the book's way), so the "
            "last training windows read validation tokens",
            "split the token stream at int(len(ids) * train_split) first, then cut windows "
            "inside each part",
            book_train,
        )
        fail_if_mistake(train_pos, [books_split], "the training windows", WHERE)
    check(
        not shared,
        f"training and validation windows share {len(shared)} token positions (for example "
        f"{shared[:5]}): the validation set leaks into training. Split the token stream at "
        f"int(len(ids) * train_split) first, then cut windows inside each part. Look at {WHERE}.",
    )
    check(
        max(train_pos) < 900 <= min(val_pos),
        f"training should use positions [0, 900) and validation [900, 1000) for 1000 tokens "
        f"and train_split=0.9, got training {min(train_pos)}..{max(train_pos)} and validation "
        f"{min(val_pos)}..{max(val_pos)}. Look at {WHERE}.",
    )
    check(
        len(train_pos) >= 850 and len(val_pos) >= 90,
        f"the loaders should use (nearly) all of their region, but training reads only "
        f"{len(train_pos)} of 900 positions and validation {len(val_pos)} of 100. Look at {WHERE}.",
    )


def test_validation_windows_are_fixed_and_do_not_overlap():
    """Validation comes in a fixed order, every token once: windows do not overlap each other."""
    n, block_size, batch_size = 2000, 10, 4
    _, val = data.create_dataloaders("." * n, PositionTokenizer(n), block_size, batch_size)
    first = [x[:, 0].tolist() for x, _ in val]
    again = [x[:, 0].tolist() for x, _ in val]
    check_equal(again, first, "the validation windows of two passes", WHERE)
    starts = sorted(s for row in first for s in row)
    gaps = {b - a for a, b in zip(starts, starts[1:], strict=False)}
    check_matches(
        gaps,
        {block_size},
        f"validation windows should start block_size={block_size} apart (each token is "
        f"predicted once), got start gaps {sorted(gaps)[:5]}. Look at {WHERE}.",
    )


def test_training_order_is_shuffled_and_seeded():
    """The training order is shuffled, the same for the same seed and epoch, new each epoch."""
    n, block_size, batch_size = 600, 8, 4

    def first_starts(seed, epoch=None, loader=None):
        if loader is None:
            loader, _ = data.create_dataloaders(
                "." * n, PositionTokenizer(n), block_size, batch_size, seed=seed
            )
        if epoch is not None:
            loader.sampler.set_epoch(epoch)
        return [x[:, 0].tolist() for x, _ in batches(loader)[:10]]

    a, b, c = first_starts(1), first_starts(1), first_starts(2)
    check_equal(b, a, "the first training batches for the same seed", WHERE)
    check(a != c, f"two seeds should give different training orders. Look at {WHERE}.")
    flat = [s for row in a for s in row]
    check(
        flat != sorted(flat),
        f"the training windows should come in a shuffled order, got {flat[:8]}... in "
        f"increasing order. Look at {WHERE}.",
    )
    loader, _ = data.create_dataloaders(
        "." * n, PositionTokenizer(n), block_size, batch_size, seed=1
    )
    check(
        hasattr(loader.sampler, "set_epoch"),
        f"the training loader's sampler should have set_epoch(epoch) (a WindowSampler), so a "
        f"trainer can resume the data order. Look at {WHERE}.",
    )
    e0, e1 = first_starts(1, 0, loader), first_starts(1, 1, loader)
    check(e0 != e1, "set_epoch(1) should give a new order. Look at ch3/data.py, WindowSampler.")
    check_equal(
        first_starts(1, 0, loader),
        e0,
        "the order of epoch 0, asked twice",
        "ch3/data.py, WindowSampler",
    )
    sizes = {x.shape[0] for x, _ in loader}
    check_equal(sizes, {batch_size}, "the training batch sizes (incomplete batches dropped)", WHERE)


def test_window_sampler_is_a_permutation():
    """An epoch without replacement visits every window exactly once."""
    sampler = data.WindowSampler(50, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        check_equal(
            sorted(order),
            list(range(50)),
            f"sorted(order of epoch {epoch})",
            "ch3/data.py, WindowSampler.__iter__",
        )
    draws = data.WindowSampler(50, replacement=True, num_samples=500, seed=3)
    got = list(draws)
    check(
        len(got) == 500 and all(0 <= i < 50 for i in got) and len(set(got)) > 40,
        f"with replacement, 500 uniform draws from range(50) were expected, got {len(got)} "
        f"draws with {len(set(got))} distinct values. Look at ch3/data.py, WindowSampler.__iter__.",
    )


def test_real_text_windows_decode_to_the_text():
    """With a real tokenizer, every window is a piece of the text."""
    text = "".join(chr(97 + (i * 7) % 26) for i in range(500))
    train, _ = data.create_dataloaders(text, CharCodes(), block_size=12, batch_size=3, seed=0)
    x, y = next(iter(train))
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=False):
        piece = "".join(map(chr, row_x + row_y[-1:]))
        check(
            piece in text[:450],
            f"window {piece!r} is not a piece of the training text. Look at {WHERE}.",
        )


@pytest.mark.parametrize(
    ("n", "kwargs", "why"),
    [
        (50, {"block_size": 64, "batch_size": 2}, "a text shorter than one window"),
        (1000, {"block_size": 8, "batch_size": 2, "train_split": 1.0}, "train_split=1.0"),
        (1000, {"block_size": 8, "batch_size": 2, "train_split": 0.0}, "train_split=0.0"),
        (
            1000,
            {"block_size": 8, "batch_size": 2, "train_split": 0.995},
            "a validation part shorter than one window",
        ),
    ],
)
def test_bad_input_is_a_clear_error(n, kwargs, why):
    """Text too short for a window, or a split outside (0, 1), raises ValueError."""
    with check_raises(ValueError, f"create_dataloaders with {why}", WHERE):
        data.create_dataloaders("." * n, PositionTokenizer(n), **kwargs)


def test_prepare_writes_uint16_token_ids(tmp_path):
    """prepare writes the ids as little-endian uint16, chunk after chunk, and counts them."""
    path = tmp_path / "tokens.bin"
    chunks = ["hello world\n", "abc\n", "zz"]
    n = data.prepare(chunks, CharCodes(), path)
    expected = np.array([ord(c) for c in "".join(chunks)], dtype="<u2")
    got = np.fromfile(path, dtype="<u2")
    check_equal(n, len(expected), "prepare's return value (tokens written)", "ch3/data.py, prepare")
    check(
        np.array_equal(got, expected),
        f"the .bin file should hold the token ids as uint16 ({expected[:6].tolist()}...), got "
        f"{got[:6].tolist()}... ({path.stat().st_size} bytes). Look at ch3/data.py, prepare.",
    )
    data.prepare("single string", CharCodes(), path)
    check_equal(
        np.fromfile(path, dtype="<u2").tolist(),
        [ord(c) for c in "single string"],
        "the ids written for one string",
        "ch3/data.py, prepare",
    )


def test_prepare_refuses_a_vocabulary_beyond_uint16(tmp_path):
    """A vocabulary whose ids do not fit in uint16 is a ValueError, not silent wrap-around."""
    big = PositionTokenizer(70_000)
    try:
        data.prepare("abc", big, tmp_path / "big.bin")
    except ValueError:
        return
    fail(
        "prepare should raise ValueError for a vocabulary of 70,000 tokens (ids above 65535 do "
        "not fit in uint16), but it did not. Look at ch3/data.py, prepare."
    )


def test_memmap_loaders_read_windows_without_leakage(tmp_path):
    """memmap_dataloaders: int64 windows of the file, shifted by one, split by position, seeded."""
    n = 3000
    path = tmp_path / "pos.bin"
    data.prepare("." * n, PositionTokenizer(n), path)
    where = "ch3/data.py, memmap_dataloaders"
    train, val = data.memmap_dataloaders(
        path, block_size=16, batch_size=4, seed=5, samples_per_epoch=400
    )
    x, y = next(iter(train))
    check_batch(x, y, 4, 16, where)
    check_equal(len(list(train)), 100, "the number of training batches for 400 samples of 4", where)
    train_pos, val_pos = positions(train), positions(val)
    check(
        not train_pos & val_pos and max(train_pos) < 2700 <= min(val_pos),
        f"training should read positions below 2700 and validation from 2700 on, got training "
        f"up to {max(train_pos)} and validation from {min(val_pos)}. Look at {where}.",
    )
    again, _ = data.memmap_dataloaders(
        path, block_size=16, batch_size=4, seed=5, samples_per_epoch=400
    )
    check_same(
        next(iter(again))[0],
        x,
        f"the same seed should give the same batches. Look at {where}.",
    )
    try:
        data.memmap_dataloaders(tmp_path / "missing.bin", block_size=16, batch_size=4)
    except FileNotFoundError:
        return
    fail(f"a missing token file should raise FileNotFoundError. Look at {where}.")
