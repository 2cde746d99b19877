"""Checks that fail with a sentence a learner understands: what was expected, what came out, where.

Stage tests use these instead of bare ``assert`` so that the grader can show one or two plain
lines instead of a traceback. Every helper raises :class:`LearnerFailure` (an ``AssertionError``),
whose message is complete on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


class LearnerFailure(AssertionError):
    """A failed check whose message is written for the learner."""


def fail(message: str) -> None:
    raise LearnerFailure(message)


def check(condition: bool, message: str) -> None:
    """Fail with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LearnerFailure(message)


def check_shape(got: torch.Tensor, expected: Sequence[int], what: str, where: str) -> None:
    if not isinstance(got, torch.Tensor):
        fail(
            f"{what} should be a torch.Tensor of shape {tuple(expected)}, got {type(got).__name__}. "
            f"Look at {where}."
        )
    if tuple(got.shape) != tuple(expected):
        fail(
            f"{what} should have shape {tuple(expected)}, got {tuple(got.shape)}. Look at {where}."
        )


def check_close(
    got: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    where: str,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """``got`` matches ``expected`` in shape, dtype kind and values, or a one-sentence failure."""
    check_shape(got, expected.shape, what, where)
    if got.dtype.is_floating_point != expected.dtype.is_floating_point or got.dtype == torch.bool:
        if got.dtype != expected.dtype:
            fail(f"{what} should have dtype {expected.dtype}, got {got.dtype}. Look at {where}.")
    got_f = got.detach().to(torch.float64)
    exp_f = expected.detach().to(torch.float64)
    if torch.isnan(got_f).any() and not torch.isnan(exp_f).any():
        n = int(torch.isnan(got_f).sum())
        fail(
            f"{what} contains {n} NaN value(s) where the reference has none. Look at {where} "
            "(a row whose scores are all -inf gives NaN after softmax)."
        )
    bad = ~torch.isclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        diff = float((got_f - exp_f).abs().nan_to_num(0.0).max())
        fail(
            f"{what} differs from the reference at {int(bad.sum())} of {bad.numel()} entries "
            f"(first at index {index}: expected {exp_f[index].item():.6g}, got "
            f"{got_f[index].item():.6g}; largest difference {diff:.3g}, tolerance "
            f"atol={atol:g} rtol={rtol:g}). Look at {where}."
        )


def check_equal(got: object, expected: object, what: str, where: str) -> None:
    if got != expected:
        fail(f"{what} should be {expected!r}, got {got!r}. Look at {where}.")


@dataclass
class Raised:
    """What :func:`check_raises` caught: ``value`` is the exception, as with ``pytest.raises``."""

    value: BaseException | None = None


@contextmanager
def check_raises(
    exc_type: type[BaseException], what: str, where: str, *, match: str | None = None
) -> Iterator[Raised]:
    """``pytest.raises`` with a learner's sentence when nothing, or the wrong error, is raised.

    A stub's NotImplementedError passes through untouched, so the grader still says
    "not started"; ``match`` is a regular expression the error message must contain.
    """
    name = exc_type.__name__
    raised = Raised()
    try:
        yield raised
    except NotImplementedError:
        if not issubclass(NotImplementedError, exc_type):
            raise
        raise  # pragma: no cover - no test expects NotImplementedError
    except exc_type as err:
        if match is not None and not re.search(match, str(err)):
            fail(
                f"{what} should raise a {name} whose message mentions {match!r}, got "
                f"{name}: {err}. Look at {where}."
            )
        raised.value = err
    except Exception as err:  # noqa: BLE001 - any other error is the learner's to see
        fail(f"{what} should raise {name}, got {type(err).__name__}: {err}. Look at {where}.")
    else:
        fail(f"{what} should raise {name}, but nothing was raised. Look at {where}.")
